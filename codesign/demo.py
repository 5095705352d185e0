"""`codesign demo`: the whole flow on the embedded tiny M3ViT, with no download."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def _done(start: float) -> None:
    print(f"   ({time.time() - start:.1f} s)", flush=True)


def _accuracy(design, eval_images: int):
    from .model.data import make_dataset
    from .report.accuracy import accuracy_report, format_accuracy

    data = make_dataset(eval_images, design.model.cfg, seed=4321)
    with tqdm(total=eval_images * design.model.cfg.num_tasks, desc="golden model", file=sys.stderr,
              leave=False) as bar:
        rep = accuracy_report(design.model, design.qm, data, progress=bar)
    print(format_accuracy(rep))
    return rep


def run_demo(out: Path, board: str = "zcu104", simulator: str = "verilator", retrain: bool = False,
             eval_images: int = 64, force: bool = False) -> int:
    from . import api
    from .fsutil import checked_project_target
    from .model.zoo import ensure_default_model, load_default_model

    checked_project_target(out, force)  # before minutes of training and simulation, not after
    t = _step("1/6 embedded model: tiny M3ViT (synthetic shapes: semantic segmentation + depth)")
    ensure_default_model(retrain=retrain)
    model = load_default_model()
    cfg = model.cfg
    print(f"   dim {cfg.embed_dim}, {cfg.depth} blocks, {cfg.num_heads} heads, {cfg.num_experts} experts top-{cfg.top_k} "
          f"in blocks {list(cfg.moe_blocks)}, {cfg.num_tasks} tasks, {cfg.num_tokens} tokens")
    _done(t)

    t = _step(f"2/6 quantise (int8, calibrated) and compile for {board}")
    design = api.convert(model, board)
    print(f"   {len(design.prog.instrs)} instructions, {len(design.prog.wgt) / 1024:.0f} KiB weights, "
          f"MAC array {design.tiling.P}x{design.tiling.Q}")
    rep = _accuracy(design, eval_images)
    _done(t)

    t = _step(f"3/6 generate the HLS + RTL project in {out}")
    api.generate(design, out, force=force)
    (out / "reports" / "accuracy.json").write_text(json.dumps(rep.to_json(), indent=1, default=float))
    print(f"   routing: {api.ROUTING_IMAGE.format(task=0)}")
    print(design.estimate(api.vector_data(cfg, 1).images).summary())
    _done(t)

    t = _step("4/6 C simulation (g++), bit-exact against the golden model")
    cs = api.csim(out, dump_dir=out / "results" / "csim")
    print(f"   csim: {len(cs.passed)} passed, {len(cs.failed)} failed")
    _done(t)

    t = _step(f"5/6 RTL co-simulation (cocotb + {simulator}), bit-exact against the golden model")
    co = api.cosim(out, simulator)
    print(co.summary_text())
    table = api.cycles_report(out, co)
    if table:
        print(table.splitlines()[-1] + f" (per layer: {out / 'reports' / 'cycles.txt'})")
    _done(t)

    t = _step("6/6 compare simulated FPGA outputs with the float PyTorch reference")
    cmp = api.compare(out, co.results_dir)
    print(cmp.summary_text())
    _done(t)
    ok = not cs.failed and co.all_passed and cmp.all_bit_exact
    print(f"\ndemo {'PASSED' if ok else 'FAILED'}: project in {out}, reports in {out / 'reports'}")
    return 0 if ok else 1
