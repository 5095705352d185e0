"""Command line: codesign generate | csim | cosim | synth | compare | report | estimate | config | explore | demo."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before NumPy loads OpenBLAS: the golden model and the ISA interpreter make hundreds of mid-sized
# exact matmuls per test vector, which a second BLAS thread slowed 3x on a shared 2-core host
# (its threads spin waiting for each other) and speeds up little on an idle one.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

DEFAULT_MODEL = "default"  # api.DEFAULT_MODEL; not imported, so that --help stays fast
SYNTH_DIRECT_MAX_MACS = 64  # codesign.report.synth.DIRECT_MAX_MACS (test_synth checks they agree)
EXIT_DOES_NOT_FIT = 3       # codesign synth: the synthesized (or extrapolated) design exceeds the board


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder or file (.pt/.pth/.safetensors, M3ViT checkpoint), "
                                 "or 'default' for the embedded tiny M3ViT")
    p.add_argument("--config", help="YAML model config, when not beside the weights")
    p.add_argument("--board", default="zcu104", help="board name from boards/ or a board YAML (default zcu104)")
    _add_width_args(p)
    p.add_argument("--calib", help=".npy of float calibration images [N,C,H,W] (N >= 1, all finite, channels "
                                   "first, in the model's input normalisation); integer pixels such as uint8 "
                                   "are refused, not rescaled (default: built-in synthetic images)")


def _add_width_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wbits", type=int, help="weight width of every layer, 2..16 (default 8)")
    p.add_argument("--abits", type=int, help="activation width of every layer, 2..16 (default 8)")
    p.add_argument("--precision", metavar="YAML", help="per-layer widths: a file `codesign config` wrote, "
                                                       "edited (instead of --wbits/--abits)")


def _widths(args) -> tuple[int, int, str | None]:
    """(wbits, abits, precision file): --precision replaces the uniform widths."""
    if args.precision and (args.wbits is not None or args.abits is not None):
        raise ValueError("--wbits/--abits do not apply with --precision (its `default:` covers the layers "
                         "it does not list)")
    return (8 if args.wbits is None else args.wbits), (8 if args.abits is None else args.abits), args.precision


def _array_shape(text: str) -> tuple[int, int]:
    """An argparse type: "PxQ", e.g. 17x128."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected PxQ with P, Q >= 1 (e.g. 17x128), got {text!r}")
    return int(parts[0]), int(parts[1])


def _add_hardware_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--array", type=_array_shape, metavar="PxQ", help="this MAC array, e.g. 17x128 (default: the "
                                                                      "fastest that fits the board)")
    p.add_argument("--weight-ports", type=_positive_int, metavar="N", help="weight masters, one PS HP port each "
                                                                          "(default: the board file's)")
    p.add_argument("--clock", type=_positive(float, "a clock in MHz > 0"), metavar="MHZ",
                   help="kernel clock in MHz (default: the board file's)")


def _positive(convert, what: str):
    """An argparse type: `convert(text)`, which must be finite and above 0 (`what` says so)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


_positive_int = _positive(int, "an integer >= 1")
_positive_seconds = _positive(float, "a number of seconds > 0")


def _add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", metavar="NPY", help="run these images instead of the project's test vectors: a .npy "
                                                   "of float images [N,C,H,W] in the model's input normalisation; "
                                                   "bit-exact vs the golden model, error vs the float model per task")
    p.add_argument("--task", help="with --images: only this task (index or name; default every task)")
    p.add_argument("--out", metavar="DIR", help="with --images: a new folder for the vectors and results "
                                                "(default PROJECT/predict/<timestamp>)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="codesign", description="FPGA co-design flow for multi-task MoE ViTs")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="quantise a model and write the HLS/RTL project")
    _add_model_args(g)
    g.add_argument("-o", "--out", required=True, help="project folder to create")
    g.add_argument("--images", type=_positive_int, default=2, help="test images per task in the project, >= 1 "
                                                                    "(default 2)")
    g.add_argument("--force", action="store_true", help="replace an existing codesign project folder (only a "
                                                        "folder codesign wrote, never the working folder or "
                                                        "one holding the model)")
    _add_hardware_args(g)
    g.add_argument("--rtl-array", type=_array_shape, metavar="PxQ",
                   help="build the RTL at this smaller array, a twin of the board's with the same microarchitecture "
                        "for fast simulation (default: the tiling's array); refused when the core cannot build it")

    c = sub.add_parser("csim", help="C-simulate the project with g++ and check bit-exactness")
    c.add_argument("project")
    c.add_argument("--dump", metavar="DIR", help="folder to write the final activation image of each test vector")
    c.add_argument("--first", type=_positive_int, metavar="N", help="only the first N test vectors of each task")
    c.add_argument("--layers", action="store_true", help="print the per-layer PASS/mismatch table")
    c.add_argument("--timeout", type=_positive_seconds, metavar="SECONDS",
                   help="give up on the testbench run after SECONDS (default: 30 s plus a share that grows with "
                        "the program and the number of vectors; the build has its own 600 s limit)")
    _add_image_args(c)

    s = sub.add_parser("cosim", help="simulate the RTL with cocotb and check bit-exactness")
    s.add_argument("project")
    s.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    s.add_argument("--waves", action="store_true", help="write a waveform (FST/VCD) in the build folder")
    s.add_argument("--vectors", nargs="*", help="only these test vector ids")
    s.add_argument("--timeout-cycles", type=_positive_int, metavar="N",
                   help="give up on a run after N clock cycles (default: 4x a rough estimate + 100000)")
    s.add_argument("--rtl", metavar="DIR", help="simulate this RTL folder instead of PROJECT/rtl, e.g. the "
                                                "verilog/ folder of a Vitis HLS export of the project")
    s.add_argument("--ideal-memory", action="store_true", help="memory without latency or bandwidth limit "
                                                               "(default: the board's DDR read latency and bandwidth)")
    _add_image_args(s)

    y = sub.add_parser("synth", help="yosys synth_xilinx of the core at the board's array (or fitted to it): "
                                     "DSP/LUT/FF/BRAM/URAM next to the estimate, the longest path",
                       description="yosys synth_xilinx of the project's core at the board's array, or, above "
                                   f"{SYNTH_DIRECT_MAX_MACS} MACs (or with --sizes), at two or three reduced "
                                   "arrays with a least-squares fit per resource to the board's array, saying so. "
                                   "Writes PROJECT/reports/synth.{json,txt} and PROJECT/synth/<PxQ>/ (RTL, yosys "
                                   "log). Exit status: 0 the design fits the board; 3 it does not (one line names "
                                   "the resource, the figure and the board's); 2 bad input, a missing or failing "
                                   "yosys, a timeout.")
    y.add_argument("project")
    y.add_argument("--rtl", metavar="DIR", help="synthesize this RTL folder as given (e.g. a Vitis HLS export's "
                                                "verilog/), not extrapolated")
    y.add_argument("--sizes", default="auto", metavar="auto|board|PxQ,PxQ[,PxQ]",
                   help="'board': one run at the board's array; PxQ list: fit these reduced arrays; 'auto' "
                        f"(default): 'board' up to {SYNTH_DIRECT_MAX_MACS} MACs, else three reduced arrays")
    y.add_argument("--mode", choices=("per-unit", "flat", "per-module"), default="per-unit",
                   help="'per-unit' (default): one yosys run per unit of the core (cs_mac, cs_drain, ...; each "
                        "bounded by --timeout and cached), summed over the instances and set next to the "
                        "resource model's parts: a whole-core run does not finish in CI time; 'flat': the whole "
                        "core flattened; 'per-module': the whole core, no -flatten, summed over the hierarchy")
    y.add_argument("--per-module", action="store_true", help="the same as --mode per-module")
    y.add_argument("--timeout", type=_positive_seconds, default=1800.0, metavar="SECONDS",
                   help="give up on one yosys run after SECONDS (default 1800)")
    y.add_argument("--skip-units", default="", metavar="UNIT[,UNIT]",
                   help="per-unit mode: do not synthesize these units (e.g. cs_router, which yosys 0.23 does "
                        "not finish); their group's resource-model figures stand in for them, and the output "
                        "says so")

    m = sub.add_parser("compare", help="compare FPGA/simulation results with the software reference",
                       description="Compare FPGA/simulation results with the golden and float models. Exit "
                                   "status: 0 every vector of the project has a result and all are bit-exact "
                                   "(output and, for act images, every traced layer); 1 all results are there "
                                   "and at least one differs; 2 bad input, including incomplete results: a "
                                   "vector without a result file, a file cut short or longer than a result, "
                                   "or a result for a vector the project does not have (the report lists them "
                                   "whenever any result is readable).")
    m.add_argument("project")
    m.add_argument("results", help="folder of <id>.act.bin (csim/cosim) or <id>.npy (board dump) files, one "
                                   "for every vector of the project")
    m.add_argument("-o", "--out", help="report folder (default PROJECT/reports/compare)")

    r = sub.add_parser("report", help="Vitis HLS's synthesis (and cosim) reports next to the estimate and "
                                      "the schedule table",
                       description="Reads what `vitis_hls -f run_hls.tcl` left in the project: "
                                   "*/solution*/syn/report/csynth.xml (latency, resources, and the loops of "
                                   "every *_csynth.xml beside it) and */solution*/sim/report/*_cosim.rpt "
                                   "(co-simulation latency), and prints them next to reports/estimate.json and "
                                   "the expected II of every loop in docs/SCHEDULE.md. Exit 2 when there is no "
                                   "csynth.xml.")
    r.add_argument("project")

    e = sub.add_parser("estimate", help="tiling, resources, cycles and roofline for a model on a board")
    _add_model_args(e)
    e.add_argument("--json", help="also write the estimate as JSON to this file")

    f = sub.add_parser("config", help="print the per-layer precision (YAML) to edit for generate --precision",
                       description="Print the per-layer formats the quantizer uses for MODEL: weight and "
                                   "activation widths and the accumulator width each layer needs, as YAML with "
                                   "a header explaining the fields. Edit it and pass it to `codesign generate "
                                   "MODEL --precision FILE` for mixed precision.")
    f.add_argument("model", help="model folder or file, or 'default' for the embedded tiny M3ViT")
    f.add_argument("--config", help="YAML model config, when not beside the weights")
    _add_width_args(f)

    _add_explore_parser(sub)

    d = sub.add_parser("demo", help="train/load the embedded model and run the whole flow")
    d.add_argument("-o", "--out", default="codesign_demo", help="project folder (default ./codesign_demo)")
    d.add_argument("--board", default="zcu104")
    d.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    d.add_argument("--retrain", action="store_true", help="retrain the embedded model instead of the shipped one")
    d.add_argument("--eval-images", type=_positive_int, default=64, help="held-out images for the accuracy report")
    d.add_argument("--force", action="store_true", help="replace an existing codesign project folder")
    return ap


def _number_list(convert, what: str, example: str, lowest: float):
    """An argparse type: comma-separated numbers of `convert`, each finite and at least `lowest`."""
    def parse(text: str) -> list:
        try:
            values = [convert(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, e.g. {example}, got {text!r}") from None
        if not all(lowest <= v < float("inf") for v in values) or (lowest == 0 and 0 in values):
            raise argparse.ArgumentTypeError(f"expected {what} {'> 0' if lowest == 0 else f'>= {lowest}'}, got {text}")
        return values
    return parse


_int_list = _number_list(int, "integers", "4,6,8", 1)
_float_list = _number_list(float, "numbers", "150,200", 0)


def _array_list(text: str) -> list[tuple[int, int]]:
    return [_array_shape(part) for part in text.split(",")]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.95, got {text!r}") from None
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"expected a fraction of float's accuracy in [0, 2], got {text}")
    return value


def _add_explore_parser(sub) -> None:
    x = sub.add_parser("explore", help="search precision, MAC array, weight ports, clock and board for accuracy "
                                       "against latency and resources",
                       description="Sweeps weight/activation widths (and, with --per-layer, a greedy search over "
                                   "per-layer precision) x MAC array x weight ports x clock x board. Each point: "
                                   "accuracy of the bit-exact golden model against float on held-out images per "
                                   "task, latency per task inference and DSP/FF/LUT/BRAM36/URAM from the estimate, "
                                   "and whether it fits. Writes pareto.json, pareto.csv, points.csv, "
                                   "accuracy_latency*.png and generate_chosen.sh to OUT; rerunning with the same "
                                   "OUT resumes (points already in OUT/results.jsonl are not evaluated again). "
                                   "Exit status: 0, 1 when --verify finds a point that is not bit-exact, 2 bad "
                                   "input.")
    x.add_argument("model", help="model folder or file, or 'default' for the embedded tiny M3ViT")
    x.add_argument("--config", help="YAML model config, when not beside the weights")
    x.add_argument("--calib", help=".npy of float calibration images [N,C,H,W] (default: built-in synthetic images)")
    x.add_argument("-o", "--out", required=True, help="explore folder: created, or resumed when an earlier "
                                                      "explore wrote it")
    x.add_argument("--board", action="append", help="board name or YAML; repeat for several (default zcu104)")
    x.add_argument("--wbits", type=_int_list, default=[4, 6, 8], metavar="LIST",
                   help="weight widths, e.g. 4,6,8 (default)")
    x.add_argument("--abits", type=_int_list, default=[6, 8], metavar="LIST",
                   help="activation widths, e.g. 6,8 (default)")
    x.add_argument("--array", type=_array_list, metavar="PxQ,...", help="these MAC arrays on every board, e.g. "
                                                                        "8x64,17x128 (default: --auto-arrays "
                                                                        "shapes per board)")
    x.add_argument("--auto-arrays", type=_positive_int, default=6, metavar="N",
                   help="without --array: per board, N fitting shapes from small to large, each the fastest of "
                        "its size (default 6)")
    x.add_argument("--weight-ports", type=_int_list, metavar="LIST", help="weight master counts, e.g. 1,2,4 "
                                                                          "(default: each board's)")
    x.add_argument("--clock", type=_float_list, metavar="LIST", help="kernel clocks in MHz, e.g. 150,200,250 "
                                                                     "(default: each board's)")
    x.add_argument("--per-layer", action="store_true", help="then search per-layer precision greedily from the "
                                                            "widest global widths: each step lowers the one "
                                                            "layer that costs least accuracy")
    x.add_argument("--steps", type=_positive_int, default=4, metavar="N", help="--per-layer search steps (default 4)")
    x.add_argument("--min-accuracy", type=_fraction, default=0.95, metavar="F",
                   help="accuracy floor, as a fraction of float's on the worst task: the chosen point is the "
                        "fastest front point at or above it (default 0.95)")
    x.add_argument("--eval-images", type=_positive_int, default=32, metavar="N",
                   help="held-out images for the accuracy figures (default 32)")
    x.add_argument("--workers", type=_positive_int, metavar="N", help="local worker processes (default: 2, or "
                                                                      "the cores available if fewer)")
    x.add_argument("--dask", metavar="ADDRESS", help="run the points on this Dask distributed scheduler "
                                                     "(e.g. tcp://host:8786) instead of local processes")
    x.add_argument("--verify", type=_positive_int, metavar="K", help="generate the K best front points and csim "
                                                                     "them: exit 1 unless bit-exact")
    x.add_argument("--verify-cosim", action="store_true", help="with --verify: also cosim them (verilator)")
    x.add_argument("--force", action="store_true", help="start over: replace an explore folder's results (or a "
                                                        "codesign project folder)")
    x.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def cmd_explore(args) -> int:
    from .explore import explore

    if args.verify_cosim and not args.verify:
        raise ValueError("--verify-cosim needs --verify K")
    res = explore(args.model, args.out, args.board or ["zcu104"], args.wbits, args.abits, args.array or (),
                  args.auto_arrays, args.weight_ports or (), args.clock or (), args.per_layer, args.steps,
                  args.min_accuracy, args.eval_images, args.calib, args.config, args.workers, args.dask,
                  args.verify or 0, args.verify_cosim, args.force, progress=not args.quiet)
    print(res.summary_text())
    return 0 if res.all_verified else 1


def _model(args):
    from . import api

    model = api.load(args.model, args.config)
    if args.model != DEFAULT_MODEL:
        print(model.load_summary)  # what was loaded, and which checkpoint tensors were left out on purpose
    return model


def cmd_generate(args) -> int:
    from . import api
    from .fsutil import checked_project_target

    inputs = [p for p in (args.model, args.config, args.calib, args.precision) if p and p != DEFAULT_MODEL]
    checked_project_target(args.out, args.force, inputs)  # before loading and converting the model
    wbits, abits, precision = _widths(args)
    design = api.convert(_model(args), args.board, wbits, abits, args.calib, precision=precision, array=args.array,
                         weight_ports=args.weight_ports, clock_mhz=args.clock)
    out = api.generate(design, args.out, images=args.images, force=args.force, inputs=inputs,
                       rtl_array=args.rtl_array)
    print(f"wrote {out} ({len(design.prog.instrs)} instructions, {len(design.prog.wgt)} weight bytes, "
          f"MAC array {design.tiling.P}x{design.tiling.Q} on {design.board.name}{_rtl_note(out)})")
    return 0


def _rtl_note(project) -> str:
    """", RTL at PxQ" when the project's RTL has another array than the tiling's."""
    import json

    info = json.loads(Path(project, "project.json").read_text())
    rtl = json.loads(Path(project, "data", "manifest.json").read_text()).get("rtl")
    if not rtl or [rtl["P"], rtl["Q"]] == info["array"]:
        return ""
    return f", RTL at {rtl['P']}x{rtl['Q']}"


def _refuse_with_images(args, *names: str) -> None:
    """Options that mean nothing for the user's images, or that need --images."""
    if args.images is None:
        given = [flag for flag in ("--task", "--out") if getattr(args, flag[2:]) is not None]
        if given:
            raise ValueError(f"{given[0]} needs --images")
        return
    given = [name for name in names if getattr(args, name.lstrip("-").replace("-", "_")) not in (None, False)]
    if given:
        raise ValueError(f"{given[0]} does not apply to --images (each image runs for every task or --task)")


def _predict(args, backend: str, **options) -> int:
    from . import api

    res = api.predict(args.project, args.images, args.task, backend, args.out, progress=True, **options)
    print(res.summary_text())
    return 0 if res.all_bit_exact else 1


def cmd_csim(args) -> int:
    from . import api

    _refuse_with_images(args, "--dump", "--first")
    if args.images is not None:
        return _predict(args, "csim", timeout=args.timeout)
    res = api.csim(args.project, args.dump, args.first, args.timeout, progress=True)
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

    _refuse_with_images(args, "--vectors")
    memory = "ideal" if args.ideal_memory else None
    if args.images is not None:
        return _predict(args, "cosim", simulator=args.simulator, waves=args.waves,
                        timeout_cycles=args.timeout_cycles, rtl_dir=args.rtl, memory=memory)
    res = api.cosim(args.project, args.simulator, args.waves, args.vectors, args.timeout_cycles, args.rtl,
                    memory=memory)
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
    from .report.synth import parse_sizes, synth_text

    skip = tuple(u.strip() for u in args.skip_units.split(",") if u.strip())
    report = api.synth(args.project, args.rtl, sizes=parse_sizes(args.sizes),
                       mode="per-module" if args.per_module else args.mode, timeout=args.timeout, progress=True,
                       skip_units=skip)
    print(synth_text(report))
    if not report.fits_board:  # a result, not bad input: its own exit status
        print(f"codesign synth: error: {report.over_line()}", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    return 0


def cmd_compare(args) -> int:
    from . import api

    from .report.compare import CompareError

    rep = api.compare(args.project, args.results, args.out)
    print(rep.summary_text())
    if not rep.complete:  # not a bit-exactness verdict: exit 2, as for other bad input
        raise CompareError(rep.incomplete_reason())
    return 0 if rep.all_bit_exact else 1


def cmd_report(args) -> int:
    from .report.vitis import report_text

    print(report_text(Path(args.project)))
    return 0


def cmd_estimate(args) -> int:
    import json

    from . import api
    from .fsutil import checked_output_path

    json_path = checked_output_path(args.json, "file") if args.json else None  # before the conversion
    wbits, abits, precision = _widths(args)
    design = api.convert(_model(args), args.board, wbits, abits, args.calib, precision=precision)
    est = design.estimate()
    print(api.estimate_text(est, api.ROUTING_UNIFORM))
    if json_path:
        json_path.write_text(json.dumps(api.estimate_json(est, api.ROUTING_UNIFORM), indent=1))
    return 0


def cmd_config(args) -> int:
    from . import api

    wbits, abits, precision = _widths(args)
    model = api.load(args.model, args.config)
    print(api.precision_config(model, wbits, abits, precision, about=args.model), end="")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), args.board, args.simulator, args.retrain, args.eval_images, args.force)


COMMANDS = {"generate": cmd_generate, "csim": cmd_csim, "cosim": cmd_cosim, "synth": cmd_synth,
            "compare": cmd_compare, "report": cmd_report, "estimate": cmd_estimate, "config": cmd_config,
            "explore": cmd_explore, "demo": cmd_demo}


def _known_errors() -> tuple[type[BaseException], ...]:
    from .errors import user_error_types

    return user_error_types()


def _error_line(exc: BaseException) -> str:
    from .errors import one_line

    return one_line(exc)


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
        print(f"codesign {args.cmd}: error: {_error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
