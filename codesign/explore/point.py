"""One job: a precision on every hardware configuration of the sweep.

The precision part (integer model, program, accuracy on the held-out images, expert routing) is
computed once per job, and not at all when the results file already has it; each hardware point
then costs one tiling and one estimate per task.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..boards import Board, board_variant, free_hp_ports
from ..model.train import agreement_with_float, evaluate_outputs, torch_threads
from ..quant.golden import dequantize_output, run_golden
from ..quant.quantize import quantize_input
from ..report.accuracy import TaskAccuracy
from ..schedule.estimate import estimate_design
from ..schedule.program import Program, compile_program
from ..schedule.tiling import (Budget, array_cycles, candidate_shapes, shape_tilings, first_overrun,
                               rule_violation)
from ..schedule.uarch import RESOURCES, HardwareRuleError
from .context import ExploreContext, PointPrecision, quantize_point

# The task metric "accuracy against float" is taken on, and whether higher is better.
PRIMARY_METRIC = {"seg": ("miou", True), "saliency": ("iou", True), "edge": ("iou", True),
                  "depth": ("rmse", False), "normals": ("mean_angle", False)}


@dataclass(frozen=True)
class HardwareSpec:
    """The hardware half of the sweep: boards x arrays x weight ports x clocks."""

    boards: tuple[Board, ...]
    arrays: tuple[tuple[int, int], ...] = ()  # empty: `auto_arrays` shapes chosen per program
    auto_arrays: int = 6
    weight_ports: tuple[int, ...] = ()  # empty: each board's own
    clocks: tuple[float, ...] = ()  # empty: each board's own


@dataclass(frozen=True)
class Job:
    precision: PointPrecision
    hardware: HardwareSpec
    fingerprint: str
    known_accuracy: dict | None = None  # the precision record, when the results file has it
    done: frozenset = field(default_factory=frozenset)  # point keys already in the results file

    @property
    def key(self) -> str:
        return precision_key(self.fingerprint, self.precision)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def precision_key(fp: str, p: PointPrecision) -> str:
    return _digest({"fingerprint": fp, **asdict(p)})


def point_key(prec_key: str, board: Board, P: int, Q: int) -> str:
    """Everything the hardware point's result depends on: the board file's content, not only its name."""
    return _digest({"precision": prec_key, "board": asdict(board), "P": P, "Q": Q})


# ---------------------------------------------------------------- hardware configurations

def board_variants(spec: HardwareSpec) -> list[Board]:
    """Every board x weight-port count x clock of the sweep; port counts beyond a board's HP ports skipped."""
    out = []
    for board in spec.boards:
        for ports in spec.weight_ports or (board.memory.weight_ports,):
            if ports > free_hp_ports(board):
                continue
            for clock in spec.clocks or (board.clock_mhz,):
                out.append(board_variant(board, ports, clock))
    return out


def auto_shapes(prog: Program, board: Board, count: int) -> list[tuple[int, int]]:
    """`count` legal shapes that fit `board`, from small to large: per power-of-two band of MACs
    the one with the fewest MAC-array cycles (tiling's ranking proxy) that fits and meets the
    hardware rules, then evenly thinned. Shapes are sized in proxy order, only until each band
    has its shape: sizing every candidate cost more than the rest of a point."""
    budget = Budget(board)
    shapes = candidate_shapes(prog, board)
    proxy = array_cycles(prog, shapes, prog_epb(board, prog))
    bands: dict[int, list[tuple[int, tuple[int, int]]]] = {}
    for shape, cycles in zip(shapes, proxy):
        bands.setdefault(int(math.log2(shape[0] * shape[1])), []).append((int(cycles), shape))
    picked = []
    for band in sorted(bands):
        fits_any = False
        for _, (P, Q) in sorted(bands[band]):
            t = shape_tilings(prog, board, P, Q, budget)[0]  # its largest fitting bank, as generate --array
            fits = first_overrun(t.used, budget) is None
            fits_any |= fits
            if fits and rule_violation(prog, t.uarch) is None:
                picked.append((P, Q))
                break
        if not fits_any:
            break  # resources grow with the MACs: no larger band fits either
    if len(picked) > count:
        picks = np.unique(np.round(np.linspace(0, len(picked) - 1, count)).astype(int))
        picked = [picked[i] for i in picks]
    return picked


def prog_epb(board: Board, prog: Program) -> int:
    return board.memory.axi_data_bits // 8 // prog.elem_bytes


def hardware_points(prog: Program, spec: HardwareSpec) -> list[tuple[Board, int, int]]:
    """(board variant, P, Q) of every hardware point: the given arrays, or the union of every board's
    automatic ones (so that each shape is also costed on the boards it was not picked for)."""
    shapes = list(spec.arrays)
    if not shapes:
        for board in spec.boards:
            shapes += [s for s in auto_shapes(prog, board, spec.auto_arrays) if s not in shapes]
        shapes.sort(key=lambda s: (s[0] * s[1], s))
    return [(b, P, Q) for b in board_variants(spec) for P, Q in shapes]


# ---------------------------------------------------------------- accuracy

def relative_accuracy(kind: str, float_metrics: dict, golden_metrics: dict) -> tuple[str, float]:
    """(metric, golden's as a fraction of float's): 1.0 = as good as float, whichever way the metric points."""
    metric, higher_better = PRIMARY_METRIC[kind]
    f, g = float(float_metrics[metric]), float(golden_metrics[metric])
    if higher_better:
        return metric, g / f if f else (1.0 if g == f else 0.0)
    return metric, f / g if g else 1.0


@torch.no_grad()
def precision_accuracy(ctx: ExploreContext, qm) -> dict:
    """Per task, golden vs float on the held-out images, and each task's expert routing on image 0."""
    cfg, data = ctx.model.cfg, ctx.eval_data
    x_q = quantize_input(data.images, qm)
    tasks, routing = {}, {}
    with torch_threads(1):
        for t, spec in enumerate(cfg.tasks):
            outs = []
            for b in range(len(data)):
                res = run_golden(qm, x_q[b], t)
                outs.append(dequantize_output(qm, res.output))
                if b == 0:
                    routing[spec.name] = {f"b{blk}": np.bincount(np.asarray(ids).ravel(), minlength=cfg.num_experts
                                                                 ).tolist() for blk, ids in sorted(res.routing.items())}
            golden = ctx.model.head(torch.as_tensor(np.stack(outs), dtype=torch.float32), t).numpy()
            acc = TaskAccuracy(spec.name, spec.kind, ctx.float_metrics[t], evaluate_outputs(spec, golden, data),
                               agreement_with_float(spec.kind, ctx.float_outputs[t], golden))
            metric, rel = relative_accuracy(spec.kind, acc.float_metrics, acc.golden_metrics)
            tasks[spec.name] = {"metric": metric, "float": float(acc.float_metrics[metric]),
                                "golden": float(acc.golden_metrics[metric]), "relative": rel, **acc.agreement}
    return {"tasks": tasks, "accuracy": min(t["relative"] for t in tasks.values()), "routing": routing}


# ---------------------------------------------------------------- one hardware point

def hardware_point(prog: Program, board: Board, P: int, Q: int, routing: dict) -> dict:
    budget = Budget(board)
    try:
        t = shape_tilings(prog, board, P, Q, budget)[0]  # its largest fitting bank, as generate --array
    except HardwareRuleError as exc:  # an array the generated code cannot be (e.g. Q not whole beats)
        return {"board": board.name, "P": P, "Q": Q, "weight_ports": board.memory.weight_ports,
                "clock_mhz": board.clock_mhz, "fits": False, "why_not": str(exc), **{r: None for r in RESOURCES},
                **{f"{r}_board": getattr(board.resources, r) for r in RESOURCES},
                "latency_ms_per_task": None, "latency_ms": {}, "cycles": {}}
    rule = rule_violation(prog, t.uarch)
    over = first_overrun(t.used, budget)
    rec = {"board": board.name, "P": P, "Q": Q, "weight_ports": board.memory.weight_ports,
           "clock_mhz": board.clock_mhz, "fits": rule is None and over is None,
           "why_not": str(rule) if rule else (f"{over.upper()} {t.used[over]:,} > budget {budget.limit(over):,}"
                                              if over else ""),
           **{r: t.used[r] for r in RESOURCES}, **{f"{r}_board": getattr(board.resources, r) for r in RESOURCES}}
    if rule is not None:  # the program cannot run on this array: no latency to speak of
        return {**rec, "latency_ms_per_task": None, "latency_ms": {}, "cycles": {}}
    latency, cycles = {}, {}
    for task, counts in routing.items():
        est = estimate_design(prog, t, board, counts)
        latency[task], cycles[task] = est.latency_ms, est.cycles
    mean = float(np.mean(list(latency.values()))) if latency else None  # no routing given: no latency
    return {**rec, "latency_ms_per_task": mean, "latency_ms": latency, "cycles": cycles}


def weight_bits(qm) -> int:
    """Bits of every weight at its layer's width: the model's size were each layer stored at its own
    width (the accelerator keeps every element in one container: codesign.quant.precision)."""
    p = qm.precision
    total = qm.patch.w.size * p.wbits("patch")
    for i, blk in enumerate(qm.blocks):
        b = f"b{i}."
        total += blk.qkv.w.size * p.wbits(b + "qkv") + blk.proj.w.size * p.wbits(b + "proj")
        if blk.is_moe:
            total += blk.mlp.gate_w.size * p.wbits(b + "gate")
            total += sum(e.w.size for e in blk.mlp.fc1) * p.wbits(b + "fc1")
            total += sum(e.w.size for e in blk.mlp.fc2) * p.wbits(b + "fc2")
        else:
            total += blk.mlp[0].w.size * p.wbits(b + "fc1") + blk.mlp[1].w.size * p.wbits(b + "fc2")
    return int(total)


def evaluate_job(ctx: ExploreContext, job: Job) -> dict:
    """The job's precision record (new, or None when it was known) and its new points.

    One torch thread, as calibration and training use, on either engine: with two per worker on a
    shared 2-core host, the weight conversions of quantisation ran 3x slower (threads waiting)."""
    with torch_threads(1):
        return _evaluate_job(ctx, job)


def _evaluate_job(ctx: ExploreContext, job: Job) -> dict:
    start = time.perf_counter()
    qm = quantize_point(ctx, job.precision)
    prog = compile_program(qm)
    prec = job.known_accuracy
    new_prec = None
    if prec is None:
        prec = new_prec = {"key": job.key, **asdict(job.precision), **precision_accuracy(ctx, qm),
                           "weight_bytes": len(prog.wgt), "weight_bits": weight_bits(qm),
                           "seconds": time.perf_counter() - start}
    keys, points = [], []
    for board, P, Q in hardware_points(prog, job.hardware):
        key = point_key(job.key, board, P, Q)
        keys.append(key)
        if key in job.done:
            continue
        t0 = time.perf_counter()
        rec = hardware_point(prog, board, P, Q, prec["routing"])
        points.append({"key": key, "precision_key": job.key, **rec, "seconds": time.perf_counter() - t0})
    return {"precision": new_prec, "points": points, "keys": keys, "seconds": time.perf_counter() - start}


def full_point(point: dict, prec: dict) -> dict:
    """A hardware point with its precision's accuracy (what points.csv and pareto.json show)."""
    return {**point, "wbits": prec["wbits"], "abits": prec["abits"], "per_layer": bool(prec["layers"]),
            "precision": prec["layers"], "weight_bits": prec["weight_bits"], "accuracy": prec["accuracy"],
            "tasks": prec["tasks"]}
