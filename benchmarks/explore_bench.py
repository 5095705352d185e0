"""Benchmark of `codesign explore`: points per minute, and what one point costs next to a generate.

    python benchmarks/explore_bench.py [--out DIR] [--quick] [--workers 2]

Per config (the embedded trained model; edge-moe-tiny = M3ViT-tiny at 128x256, the Cityscapes
model Edge-MoE runs, with random weights): one explore sweep of 2 boards (zcu104, kv260) x
widths (W 4,6,8 x A 6,8) x the automatic arrays, in a fresh folder, on a local pool of --workers
processes; then the same command again (everything resumed from results.jsonl); then one
`api.generate` of the same model, the thing a point must cost far less than. Every figure is a
wall time measured here with time.perf_counter; points per minute = evaluated points / sweep wall
time (the context, i.e. calibration and float outputs built once per run, is reported apart).
Writes explore_bench.json to --out; prints a table. Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

from codesign import api  # noqa: E402
from codesign.explore import explore  # noqa: E402
from codesign.model.m3vit import M3ViT  # noqa: E402
from codesign.model.zoo import M3VIT_CONFIGS  # noqa: E402

BOARDS = ("zcu104", "kv260")
SWEEP = {"wbits": (4, 6, 8), "abits": (6, 8)}
# Held-out images per config: the default's 32, and fewer for the 129-token model, whose golden run
# costs about 30x the embedded model's per image.
EVAL_IMAGES = {"default": 32, "edge-moe-tiny": 8}
QUICK = {"wbits": (8,), "abits": (8,), "auto_arrays": 2, "eval_images": 4}


def load_config(name: str):
    if name == "default":
        return "default"
    torch.manual_seed(0)
    return M3ViT(M3VIT_CONFIGS["cityscapes-tiny"]).eval()


def bench_config(name: str, workers: int, quick: bool = False) -> dict:
    model = load_config(name)
    sweep = dict(QUICK) if quick else {**SWEEP, "eval_images": EVAL_IMAGES[name]}
    with tempfile.TemporaryDirectory(prefix="explore-bench-") as tmp:
        out = Path(tmp) / "sweep"
        start = time.perf_counter()
        first = explore(model, out, BOARDS, workers=workers, **sweep)
        first_wall = time.perf_counter() - start
        start = time.perf_counter()
        again = explore(model, out, BOARDS, workers=workers, **sweep)
        again_wall = time.perf_counter() - start
        start = time.perf_counter()
        api.generate(api.load(model), Path(tmp) / "project", board=BOARDS[0], images=1)
        generate_s = time.perf_counter() - start
    s = first.stats
    per_point = s["seconds"] / s["evaluated"] * workers  # worker-seconds of one point
    return {"name": name, "workers": workers, "sweep": {k: list(v) if isinstance(v, tuple) else v
                                                        for k, v in sweep.items()}, "boards": list(BOARDS),
            "points": s["points"], "precisions": s["precisions"], "front": len(first.front),
            "points_per_minute": s["points_per_minute"], "sweep_seconds": s["seconds"],
            "context_seconds": s["context_seconds"], "command_seconds": first_wall,
            "seconds_per_precision": s["seconds_per_precision"],
            "seconds_per_hardware_point": s["seconds_per_hardware_point"],
            "worker_seconds_per_point": per_point, "resumed_command_seconds": again_wall,
            "resumed_evaluated": again.stats["evaluated"], "generate_seconds": generate_s,
            "generate_over_point": generate_s / per_point if per_point else None}


def run_benchmark(names, workers: int = 2, quick: bool = False) -> dict:
    return {"meta": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)),
                     "load_average": os.getloadavg(), "torch_threads": torch.get_num_threads()},
            "configs": [bench_config(n, workers, quick) for n in names]}


def report_text(report: dict) -> str:
    head = (f"{'config':<15}{'points':>8}{'precisions':>11}{'points/min':>12}{'sweep s':>9}{'context s':>10}"
            f"{'s/precision':>12}{'ms/hw point':>12}{'s/point':>9}{'generate s':>11}{'gen/point':>10}{'resumed s':>10}")
    rows = [f"{c['name']:<15}{c['points']:>8}{c['precisions']:>11}{c['points_per_minute']:>12.0f}"
            f"{c['sweep_seconds']:>9.1f}{c['context_seconds']:>10.1f}{c['seconds_per_precision']:>12.3f}"
            f"{1000 * c['seconds_per_hardware_point']:>12.1f}{c['worker_seconds_per_point']:>9.3f}"
            f"{c['generate_seconds']:>11.1f}{c['generate_over_point'] or 0:>10.0f}{c['resumed_command_seconds']:>10.1f}"
            for c in report["configs"]]
    m = report["meta"]
    return "\n".join([head, *rows, f"({m['cpus']} CPUs, load average {m['load_average'][0]:.1f} at the end; "
                      f"s/point = worker-seconds per evaluated point; gen/point = one generate over that)"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/explore-bench")
    ap.add_argument("--quick", action="store_true", help="default config, one precision, 2 arrays")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = ["default"] if args.quick else ["default", "edge-moe-tiny"]
    report = run_benchmark(names, args.workers, args.quick)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "explore_bench.json").write_text(json.dumps(report, indent=1))
    print(report_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
