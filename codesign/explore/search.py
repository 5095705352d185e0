"""Greedy per-layer precision search (after the global-width grid).

Start from the narrowest uniform grid point that meets the accuracy floor (the widest one when
none does); each step tries lowering every layer by one grid width, its weights or its output
activations apart, as one candidate each, and keeps the candidate that loses the least accuracy
(fewer weight bits on a tie) provided it stays at or above the floor. Every candidate is a
precision of the sweep: it is costed on the whole hardware sweep and appears in points.csv.

What a narrower layer buys on this accelerator: every element sits in one container (1 byte when
every width <= 8), so a layer below the container's width saves accumulator width (FF, LUT) and
model bits, not cycles; crossing 8 bits, or the DSP packing bound (wbits <= 9, wbits + abits <= 18)
of the widest layer, is what changes latency.
"""
from __future__ import annotations

from ..quant.precision import LayerFormat, Precision, PrecisionError, check_precision, has_weights, layer_names
from .context import PointPrecision


def start_precision(runner, wbits, abits, min_accuracy: float) -> PointPrecision:
    grid = [PointPrecision(w, a) for w in wbits for a in abits]
    meeting = [p for p in grid if runner.accuracy(p) >= min_accuracy]
    if not meeting:
        return PointPrecision(max(wbits), max(abits))
    return min(meeting, key=lambda p: (p.wbits + p.abits, -runner.accuracy(p), p.wbits))


def lower(width: int, grid) -> int | None:
    below = [w for w in grid if w < width]
    return max(below) if below else None


def candidates(cfg, current: Precision, wbits, abits) -> list[Precision]:
    """`current` with one layer's weights, or one layer's activations, one grid width narrower."""
    out = []
    for name in layer_names(cfg):
        f = current.of(name)
        moves = []
        if has_weights(name) and lower(f.wbits, wbits) is not None:
            moves.append(LayerFormat(lower(f.wbits, wbits), f.abits))
        if lower(f.abits, abits) is not None:
            moves.append(LayerFormat(f.wbits, lower(f.abits, abits)))
        for fmt in moves:
            layers = {n: current[n] for n in layer_names(cfg) if n in current}
            layers[name] = fmt
            p = Precision({n: layers[n] for n in layer_names(cfg) if n in layers}, current.default)
            try:
                check_precision(cfg, p)
            except PrecisionError:
                continue  # e.g. an MoE sum the int32 accumulator cannot hold
            out.append(p)
    return out


def greedy_layers(runner, ctx, wbits, abits, min_accuracy: float, steps: int) -> list[PointPrecision]:
    """The accepted precision of every step (each one's points are in the runner)."""
    cfg = ctx.model.cfg
    current = start_precision(runner, wbits, abits, min_accuracy).to_precision(cfg)
    path = []
    for _ in range(steps):
        cands = [PointPrecision.of(p) for p in candidates(cfg, current, wbits, abits)]
        if not cands:
            break
        runner.run(cands)
        ok = [c for c in cands if runner.accuracy(c) >= min_accuracy]
        if not ok:
            break
        best = max(ok, key=lambda c: (runner.accuracy(c), -runner.precision_record(c)["weight_bits"]))
        path.append(best)
        current = best.to_precision(cfg)
    return path
