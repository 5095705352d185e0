"""Command line: codesign generate | csim | cosim | synth | compare | estimate | demo."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before NumPy loads OpenBLAS: the golden model and the ISA interpreter make hundreds of mid-sized
# exact matmuls per test vector, which a second BLAS thread slowed 3x on a shared 2-core host
# (its threads spin waiting for each other) and speeds up little on an idle one.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

DEFAULT_MODEL = "default"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder or file (.pt/.pth/.safetensors, M3ViT checkpoint), "
                                 "or 'default' for the embedded tiny M3ViT")
    p.add_argument("--config", help="YAML model config, when not beside the weights")
    p.add_argument("--board", default="zcu104", help="board name from boards/ or a board YAML (default zcu104)")
    p.add_argument("--wbits", type=int, default=8, help="weight width, 2..16 (default 8)")
    p.add_argument("--abits", type=int, default=8, help="activation width, 2..16 (default 8)")
    p.add_argument("--calib", help=".npy of float calibration images [N,C,H,W] (N >= 1, all finite, channels "
                                   "first, in the model's input normalisation); integer pixels such as uint8 "
                                   "are refused, not rescaled (default: built-in synthetic images)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="codesign", description="FPGA co-design flow for multi-task MoE ViTs")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="quantise a model and write the HLS/RTL project")
    _add_model_args(g)
    g.add_argument("-o", "--out", required=True, help="project folder to create")
    g.add_argument("--images", type=_positive_int, default=2, help="test images per task in the project, >= 1 "
                                                                    "(default 2)")
    g.add_argument("--force", action="store_true", help="replace an existing project folder")

    c = sub.add_parser("csim", help="C-simulate the project with g++ and check bit-exactness")
    c.add_argument("project")
    c.add_argument("--dump", help="folder to write the final activation image of each test vector")
    c.add_argument("--first", type=_positive_int, metavar="N", help="only the first N test vectors of each task")
    c.add_argument("--layers", action="store_true", help="print the per-layer PASS/mismatch table")

    s = sub.add_parser("cosim", help="simulate the RTL with cocotb and check bit-exactness")
    s.add_argument("project")
    s.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    s.add_argument("--waves", action="store_true", help="write a waveform (FST/VCD) in the build folder")
    s.add_argument("--vectors", nargs="*", help="only these test vector ids")
    s.add_argument("--timeout-cycles", type=_positive_int, metavar="N",
                   help="give up on a run after N clock cycles (default: 4x a rough estimate + 100000)")
    s.add_argument("--rtl", metavar="DIR", help="simulate this RTL folder instead of PROJECT/rtl, e.g. the "
                                                "verilog/ folder of a Vitis HLS export of the project")

    y = sub.add_parser("synth", help="yosys synth_xilinx of the RTL: LUT/FF/DSP/BRAM next to the estimate")
    y.add_argument("project")
    y.add_argument("--rtl", metavar="DIR", help="synthesize this RTL folder instead of PROJECT/rtl")

    m = sub.add_parser("compare", help="compare FPGA/simulation results with the software reference")
    m.add_argument("project")
    m.add_argument("results", help="folder of <id>.act.bin (csim/cosim) or <id>.npy (board dump) files")
    m.add_argument("-o", "--out", help="report folder (default PROJECT/reports/compare)")

    e = sub.add_parser("estimate", help="tiling, resources, cycles and roofline for a model on a board")
    _add_model_args(e)
    e.add_argument("--json", help="also write the estimate as JSON to this file")

    d = sub.add_parser("demo", help="train/load the embedded model and run the whole flow")
    d.add_argument("-o", "--out", default="codesign_demo", help="project folder (default ./codesign_demo)")
    d.add_argument("--board", default="zcu104")
    d.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    d.add_argument("--retrain", action="store_true", help="retrain the embedded model instead of the shipped one")
    d.add_argument("--eval-images", type=_positive_int, default=64, help="held-out images for the accuracy report")
    d.add_argument("--force", action="store_true", help="replace an existing project folder")
    return ap


def _model(args):
    from . import api
    from .model.zoo import load_default_model

    if args.model == DEFAULT_MODEL:
        return load_default_model()
    model = api.load(args.model, args.config)
    print(model.load_summary)  # what was loaded, and which checkpoint tensors were left out on purpose
    return model


def cmd_generate(args) -> int:
    from . import api
    from .fsutil import refuse_existing

    refuse_existing(args.out, args.force)  # before loading and converting the model
    design = api.convert(_model(args), args.board, args.wbits, args.abits, args.calib)
    out = api.generate(design, args.out, images=args.images, force=args.force)
    print(f"wrote {out} ({len(design.prog.instrs)} instructions, {len(design.prog.wgt)} weight bytes, "
          f"MAC array {design.tiling.P}x{design.tiling.Q} on {design.board.name})")
    return 0


def cmd_csim(args) -> int:
    from . import api

    res = api.csim(args.project, args.dump, args.first)
    if args.layers or res.failed:
        print(res.layer_table())
    for vid in res.passed:
        print(f"PASS {vid}")
    for vid, tensor in res.failed.items():
        print(f"FAIL {vid}: first mismatch at {tensor}")
    print(f"csim: {len(res.passed)} passed, {len(res.failed)} failed (build {res.build_seconds:.1f}s, run {res.run_seconds:.1f}s)")
    return 0 if not res.failed else 1


def cmd_cosim(args) -> int:
    from . import api

    res = api.cosim(args.project, args.simulator, args.waves, args.vectors, args.timeout_cycles, args.rtl)
    print(res.summary_text())
    for line in api.cosim_timeouts(args.project, res):
        print(f"TIMEOUT {line}")
    table = api.cycles_report(args.project, res, args.rtl)
    if table:
        print(table)
    if args.waves:
        waves = sorted(Path(args.project, "cosim").glob("**/dump.*"))
        print(f"waveform: {waves[0]}" if waves else "waveform: not found in the cosim folder")
    return 0 if res.all_passed else 1


def cmd_synth(args) -> int:
    from . import api

    _, table = api.synth(args.project, args.rtl)
    print(table)
    return 0


def cmd_compare(args) -> int:
    from . import api

    rep = api.compare(args.project, args.results, args.out)
    print(rep.summary_text())
    return 0 if rep.all_bit_exact else 1


def cmd_estimate(args) -> int:
    import json

    from . import api

    design = api.convert(_model(args), args.board, args.wbits, args.abits, args.calib)
    est = design.estimate()
    print(est.table())
    if args.json:
        Path(args.json).write_text(json.dumps(est.to_json(), indent=1))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), args.board, args.simulator, args.retrain, args.eval_images, args.force)


COMMANDS = {"generate": cmd_generate, "csim": cmd_csim, "cosim": cmd_cosim, "synth": cmd_synth,
            "compare": cmd_compare, "estimate": cmd_estimate, "demo": cmd_demo}


def _known_errors() -> tuple[type[BaseException], ...]:
    from .errors import user_error_types

    return user_error_types()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except KeyboardInterrupt:
        print("codesign: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except _known_errors() as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"codesign {args.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
