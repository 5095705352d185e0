"""The sweep: global widths x hardware, then (optionally) a greedy per-layer precision search."""
from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .context import DEFAULT_EVAL_IMAGES, PointPrecision, build_context
from .pareto import pareto_front, ranked
from .point import HardwareSpec, Job, full_point
from .store import RESULTS_FILE, ResultsFile, RunLock, check_folder, prepare_folder

DEFAULT_WBITS = (4, 6, 8)
DEFAULT_ABITS = (6, 8)
DEFAULT_MIN_ACCURACY = 0.95


@dataclass
class ExploreResult:
    out_dir: Path
    points: list[dict]  # every point of this sweep (precision record merged in)
    front: list[dict]  # Pareto front, in order of preference (ranked)
    chosen: dict | None
    generate: list[str] | None  # the chosen point's `codesign generate` command
    stats: dict
    verified: list[dict] = field(default_factory=list)

    @property
    def all_verified(self) -> bool:
        return all(v["bit_exact"] for v in self.verified)

    def summary_text(self) -> str:
        s = self.stats
        lines = [f"explore: {s['points']} points ({s['evaluated']} evaluated, {s['reused']} from {RESULTS_FILE}) of "
                 f"{s['precisions']} precisions on {s['engine']} in {s['seconds']:.1f} s "
                 f"({s['points_per_minute']:.0f} points/min; {s['seconds_per_precision']:.3f} s per precision, "
                 f"{1000 * s['seconds_per_hardware_point']:.1f} ms per hardware point)",
                 f"front: {len(self.front)} of {sum(p['fits'] for p in self.points)} fitting points"]
        for p in self.front[:8]:
            lines.append("  " + point_line(p))
        if len(self.front) > 8:
            lines.append(f"  ... ({len(self.front) - 8} more in pareto.csv)")
        if self.chosen is not None:
            lines.append(f"chosen: {point_line(self.chosen)}")
            lines.append(f"generate it: sh {self.out_dir / 'generate_chosen.sh'}")
        for v in self.verified:
            lines.append(f"verify {v['key'][:12]}: " + ", ".join(f"{k} {v[k]}" for k in ("csim", "cosim") if k in v))
        return "\n".join(lines)


def point_line(p: dict) -> str:
    prec = f"W{p['wbits']}A{p['abits']}" + ("+per-layer" if p["per_layer"] else "")
    return (f"{p['board']} {p['P']}x{p['Q']} {p['weight_ports']}wp {p['clock_mhz']:g}MHz {prec}: accuracy "
            f"{p['accuracy']:.3f}, {p['latency_ms_per_task']:.3f} ms/task, DSP {p['dsp']:,}/{p['dsp_board']:,}")


class Runner:
    """Submits precision jobs to an engine, appends each finished one to the results file."""

    def __init__(self, engine, results: ResultsFile, hardware: HardwareSpec, fingerprint: str, bar=None):
        self.engine, self.results, self.hardware, self.fp, self.bar = engine, results, hardware, fingerprint, bar
        self.keys: dict[str, list[str]] = {}  # precision key -> its hardware point keys, in order
        self.evaluated = 0
        self.job_seconds: list[float] = []

    def job(self, p: PointPrecision) -> Job:
        key = Job(p, self.hardware, self.fp).key
        done = frozenset(k for k, pt in self.results.points.items() if pt["precision_key"] == key)
        return Job(p, self.hardware, self.fp, self.results.precisions.get(key), done)

    def run(self, precisions: list[PointPrecision]) -> list[str]:
        """Every precision's points (evaluated or found in the results file); their precision keys."""
        jobs = [self.job(p) for p in dict.fromkeys(precisions)]
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0) + len(jobs)
            self.bar.refresh()
        pending = {self.engine.submit(job): job for job in jobs}
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                job = pending.pop(fut)
                batch = fut.result()
                if batch["precision"] is not None or batch["points"]:
                    self.results.append(batch)
                    self.job_seconds.append(batch["seconds"])
                self.evaluated += len(batch["points"])
                self.keys[job.key] = batch["keys"]
                if self.bar is not None:
                    self.bar.set_postfix_str(f"{self.evaluated} new points")
                    self.bar.update(1)
        return [j.key for j in jobs]

    def points(self, precision_keys: list[str] | None = None) -> list[dict]:
        out = []
        for pk, keys in self.keys.items():
            if precision_keys is None or pk in precision_keys:
                prec = self.results.precisions[pk]
                out += [full_point(self.results.points[k], prec) for k in keys]
        return out

    def precision_record(self, p: PointPrecision) -> dict:
        return self.results.precisions[Job(p, self.hardware, self.fp).key]

    def accuracy(self, p: PointPrecision) -> float:
        return self.precision_record(p)["accuracy"]


def _checked_widths(values, what: str) -> tuple[int, ...]:
    from ..quant import arith as A

    values = tuple(values)
    if not values:
        raise ValueError(f"{what}: give at least one width")
    try:
        return tuple(sorted({A.check_bits(v) for v in values}))
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _worker_count(workers) -> int:
    if workers is None:
        return max(1, min(2, len(os.sched_getaffinity(0))))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    return workers


def explore(model="default", out_dir: str | Path = "explore", boards=("zcu104",), wbits=DEFAULT_WBITS,
            abits=DEFAULT_ABITS, arrays=(), auto_arrays: int = 6, weight_ports=(), clocks=(),
            per_layer: bool = False, steps: int = 4, min_accuracy: float = DEFAULT_MIN_ACCURACY,
            eval_images: int = DEFAULT_EVAL_IMAGES, calib=None, config=None, workers: int | None = None,
            dask=None, verify: int = 0, verify_cosim: bool = False, force: bool = False,
            progress: bool = False) -> ExploreResult:
    """`codesign explore`: sweep precision x MAC array x weight ports x clock x board; write the
    Pareto front (pareto.json/.csv), every point (points.csv), plots and the chosen point's
    generate command to `out_dir`, resuming the results an earlier run of `out_dir` left.

    `dask`: a scheduler address or a distributed.Client instead of the local process pool.
    `verify`: csim (and with `verify_cosim` cosim) the best `verify` front points; see
    ExploreResult.all_verified."""
    from .. import api
    from ..boards import Board, load_board
    from ..schedule.tiling import MAX_P, MAX_Q

    wbits, abits = _checked_widths(wbits, "wbits"), _checked_widths(abits, "abits")
    board_inputs = list(boards or ("zcu104",))
    boards = [b if isinstance(b, Board) else load_board(b) for b in board_inputs]
    names = [b.name for b in boards]
    if len(set(names)) != len(names):
        raise ValueError(f"a board is given twice: {', '.join(names)}")
    arrays = tuple((api.checked_count(P, "array rows P"), api.checked_count(Q, "array columns Q")) for P, Q in arrays)
    if any(P > MAX_P or Q > MAX_Q for P, Q in arrays):
        raise ValueError(f"arrays are at most {MAX_P}x{MAX_Q}")
    hardware = HardwareSpec(tuple(boards), arrays, api.checked_count(auto_arrays, "auto arrays"),
                            _checked_ports(weight_ports, boards), _checked_clocks(clocks, boards))
    eval_images = api.checked_count(eval_images, "eval images")
    steps = api.checked_count(steps, "steps")
    verify = 0 if not verify else api.checked_count(verify, "verify")
    if not 0 <= min_accuracy <= 2:
        raise ValueError(f"min accuracy is a fraction of float's accuracy (e.g. 0.95), got {min_accuracy}")
    workers = _worker_count(workers)
    inputs = [p for p in (model, config, calib) if isinstance(p, (str, os.PathLike)) and p != api.DEFAULT_MODEL]
    check_folder(out_dir, force, inputs)  # before the model is loaded and calibrated

    net = api.load(model, config)
    calib_images = (api.checked_images(calib, net.cfg, "calibration images") if hasattr(calib, "shape")
                    else api.calibration_images(net.cfg, path=calib))
    start = time.perf_counter()
    ctx = build_context(net, calib_images, eval_images)
    context_seconds = time.perf_counter() - start
    out, _ = prepare_folder(out_dir, force, inputs)
    with RunLock(out):
        results = ResultsFile(out / RESULTS_FILE)
        runner, engine_name, seconds = _sweep(ctx, results, hardware, wbits, abits, per_layer, steps, min_accuracy,
                                              workers, dask, progress)
        points = runner.points()
        front = ranked(pareto_front(points), min_accuracy)
        chosen = front[0] if front else None
        model_arg = str(model) if isinstance(model, (str, os.PathLike)) else "MODEL"
        board_args = {b.name: b.name if isinstance(given, Board) else str(given)  # a board YAML stays a path
                      for b, given in zip(boards, board_inputs)}
        from .report import generate_command, write_reports

        command = chosen and generate_command(model_arg, chosen, out, calib if isinstance(calib, (str, os.PathLike))
                                              else None, config, board_args)
        stats = _stats(runner, points, engine_name, seconds, context_seconds)
        summary = {"model": model_arg, "fingerprint": ctx.fingerprint, "boards": names,
                   "settings": {"wbits": wbits, "abits": abits, "arrays": [f"{P}x{Q}" for P, Q in arrays] or "auto",
                                "auto_arrays": auto_arrays, "weight_ports": list(hardware.weight_ports) or "board",
                                "clocks": list(hardware.clocks) or "board", "per_layer": per_layer, "steps": steps,
                                "min_accuracy": min_accuracy, "eval_images": eval_images},
                   "objectives": {"accuracy": "max: the worst task's held-out metric, golden as a fraction of float",
                                  "latency_ms_per_task": "min: estimate, mean over tasks (each with its own routing)",
                                  "dsp": "min: DSPs of the array's tiling"},
                   "stats": stats}
        write_reports(out, summary, points, front, chosen, command)
        result = ExploreResult(out, points, front, chosen, command, stats)
        if verify:
            from .verify import verify_points

            result.verified = verify_points(ctx, front[:verify], boards, calib_images, out, verify_cosim, progress)
            summary["verified"] = result.verified
            write_reports(out, summary, points, front, chosen, command)
    return result


def _checked_ports(ports, boards) -> tuple[int, ...]:
    from ..boards import free_hp_ports

    ports = tuple(sorted(set(ports or ())))
    if any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in ports):
        raise ValueError(f"weight ports must be ints >= 1, got {list(ports)}")
    most = max(free_hp_ports(b) for b in boards)
    if ports and min(ports) > most:
        raise ValueError(f"no board has {min(ports)} HP ports for weight masters (at most {most} here)")
    return ports


def _checked_clocks(clocks, boards) -> tuple[float, ...]:
    from ..boards import MAX_CLOCK_MHZ

    clocks = tuple(sorted({float(c) for c in (clocks or ())}))
    if any(not 0 < c <= MAX_CLOCK_MHZ for c in clocks):
        raise ValueError(f"clocks must be in (0, {MAX_CLOCK_MHZ}] MHz, got {list(clocks)}")
    return clocks


def _sweep(ctx, results, hardware, wbits, abits, per_layer, steps, min_accuracy, workers, dask, progress):
    from tqdm import tqdm

    from .engine import DaskEngine, PoolEngine

    engine = DaskEngine(ctx, dask) if dask is not None else PoolEngine(ctx, workers)
    bar = tqdm(total=0, desc="explore", unit="precision", file=sys.stderr, disable=not progress, leave=False)
    start = time.perf_counter()
    runner = Runner(engine, results, hardware, ctx.fingerprint, bar)
    try:
        runner.run([PointPrecision(w, a) for w in wbits for a in abits])
        if per_layer:
            from .search import greedy_layers

            greedy_layers(runner, ctx, wbits, abits, min_accuracy, steps)
    except BaseException:
        engine.close(cancel=True)
        bar.close()
        raise
    engine.close()
    bar.close()
    return runner, engine.name, time.perf_counter() - start


def _stats(runner: Runner, points: list[dict], engine_name: str, seconds: float, context_seconds: float) -> dict:
    hw = [p["seconds"] for p in runner.results.points.values() if p["key"] in {q["key"] for q in points}]
    precs = [runner.results.precisions[k]["seconds"] for k in runner.keys]
    return {"points": len(points), "evaluated": runner.evaluated, "reused": len(points) - runner.evaluated,
            "precisions": len(runner.keys), "engine": engine_name, "seconds": seconds,
            "context_seconds": context_seconds,
            "points_per_minute": 60 * runner.evaluated / seconds if seconds and runner.evaluated else 0.0,
            "seconds_per_precision": sum(precs) / len(precs) if precs else 0.0,
            "seconds_per_hardware_point": sum(hw) / len(hw) if hw else 0.0}
