"""Numerical profile of a quantised model, like hls4ml's `profiling.numerical`.

Per layer, the distribution of log2|x| of the float weights and of the activations on the
calibration images, as box plots (box: quartiles, whiskers: smallest and largest nonzero |x|),
over a grey bar showing what the layer's integer format represents: from one LSB (the scale;
smaller values round to zero or to one LSB) to the largest value (qmax x scale; larger ones
saturate). Weights are quantised per output channel, so their bar runs from the smallest
channel's LSB to the largest channel's top.

Data: the weights of the float model (each the quantiser quantises: experts of a block pooled),
the activation samples the calibration kept (qm.meta["activation_samples"], see
codesign.quant.quantize.collect_ranges) and the scales and widths of the QuantModel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..model.m3vit import M3ViT
from ..quant import arith as A
from ..quant.precision import Precision, activation_layer, has_weights, layer_names
from ..quant.qmodel import QuantModel
from ..quant.quantize import weight_scales

PROFILE_FILE = "profile.png"  # in PROJECT/reports


@dataclass
class Row:
    """One box: a tensor's log2|x| statistics and the range its format represents (log2)."""

    name: str
    stats: dict  # matplotlib bxp statistics (whislo, q1, med, q3, whishi)
    low: float  # log2 of one LSB
    high: float  # log2 of the largest representable magnitude
    saturated: float  # share of the values beyond the format's largest magnitude
    underflow: float  # share of the nonzero values below half an LSB (they quantise to 0)


def layer_weights(model: M3ViT) -> list[tuple[str, np.ndarray, bool]]:
    """(name, float weight rows [output channels, inputs], per-channel scales?) of every weight
    matrix the quantiser quantises, in execution order."""
    cfg = model.cfg
    t = lambda p: p.detach().double().numpy()  # noqa: E731
    out = [("patch", t(model.patch_embed.proj.weight).reshape(cfg.embed_dim, -1), True)]
    for i, blk in enumerate(model.blocks):
        p = f"b{i}."
        out += [(p + "qkv", t(blk.attn.qkv.weight), True), (p + "proj", t(blk.attn.proj.weight), True)]
        if cfg.is_moe(i):
            mlp = blk.mlp
            gates = [g.w_gate for g in mlp.gate] if cfg.gate_type == "multi" else [mlp.gate.w_gate[:cfg.embed_dim]]
            ex = mlp.experts
            out += [(p + "gate", np.concatenate([t(g).T for g in gates]), False),
                    (p + "experts.fc1", t(ex.htoh4.weight).reshape(-1, cfg.embed_dim), True),
                    (p + "experts.fc2", t(ex.h4toh.weight).reshape(-1, cfg.moe_hidden), True)]
        else:
            out += [(p + "fc1", t(blk.mlp.fc1.weight), True), (p + "fc2", t(blk.mlp.fc2.weight), True)]
    return out


def weight_rows(model: M3ViT, wbits: int | Precision) -> list[Row]:
    """`wbits`: one width, or a Precision (each layer's own)."""
    p = wbits if isinstance(wbits, Precision) else Precision.uniform(wbits, 8)
    rows = []
    for name, w, per_channel in layer_weights(model):
        bits = p.wbits(name.replace("experts.", ""))  # b{i}.experts.fc1: the precision's b{i}.fc1
        scales = weight_scales(w, bits, per_channel)
        rows.append(_row(name, w, float(scales.min()), float(scales.max()), bits))
    return rows


def activation_rows(qm: QuantModel) -> list[Row]:
    samples = qm.meta.get("activation_samples", {})
    return [_row(name, values, qm.scales[name], qm.scales[name], qm.precision.abits(activation_layer(name, qm.cfg)))
            for name, values in samples.items() if name in qm.scales]


def _row(name: str, values: np.ndarray, low_scale: float, high_scale: float, bits: int) -> Row:
    mags = np.abs(np.asarray(values, np.float64)).ravel()
    top = A.qmax(bits) * high_scale
    nonzero = mags[mags > 0]
    logs = np.log2(nonzero) if nonzero.size else np.zeros(1)
    q1, med, q3 = np.percentile(logs, [25, 50, 75])
    stats = {"label": name, "whislo": float(logs.min()), "q1": q1, "med": med, "q3": q3,
             "whishi": float(logs.max()), "fliers": []}
    return Row(name, stats, float(np.log2(low_scale)), float(np.log2(top)),
               float(np.mean(mags > top * (1 + 1e-9))) if mags.size else 0.0,
               float(np.mean(nonzero < low_scale / 2)) if nonzero.size else 0.0)


def profile_panels(model: M3ViT, qm: QuantModel) -> list[tuple[str, list[Row]]]:
    """(title, rows) of the weights panel and the activations panel."""
    p = qm.precision
    w = {p.wbits(n) for n in layer_names(qm.cfg) if has_weights(n)}
    a = {p.abits(n) for n in layer_names(qm.cfg)}
    width = lambda bits: f"int{bits.pop()}" if len(bits) == 1 else "per-layer widths"  # noqa: E731
    return [(f"weights ({width(w)}, per-channel scales)", weight_rows(model, p)),
            (f"activations on the calibration images ({width(a)})", activation_rows(qm))]


def profile_figure(model: M3ViT, qm: QuantModel) -> Figure:
    """Weights (left) and activations (right) per layer against their integer formats."""
    panels = profile_panels(model, qm)
    height = max(3.0, 0.22 * max(len(rows) for _, rows in panels) + 1.2)
    fig = Figure(figsize=(12, height), layout="constrained")
    for ax, (title, rows) in zip(fig.subplots(1, 2), panels):
        _draw(ax, title, rows)
    return fig


def _draw(ax, title: str, rows: list[Row]) -> None:
    if not rows:
        ax.text(0.5, 0.5, "no calibration samples\n(re-quantised from a project's scales)", ha="center",
                va="center", transform=ax.transAxes)
        ax.set(title=title, xticks=[], yticks=[])
        return
    positions = np.arange(len(rows))[::-1]  # first layer on top
    for pos, r in zip(positions, rows):
        ax.barh(pos, r.high - r.low, left=r.low, height=0.8, color="0.85", zorder=0)
    kwargs = {"positions": positions, "widths": 0.5, "manage_ticks": False, "showfliers": False}
    try:
        ax.bxp([r.stats for r in rows], orientation="horizontal", **kwargs)
    except TypeError:  # matplotlib < 3.10
        ax.bxp([r.stats for r in rows], vert=False, **kwargs)
    ax.set_yticks(positions, [r.name + (" (sat.)" if r.saturated else "") for r in rows], fontsize="small")
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set(title=title, xlabel="log2 |x|   (grey: one LSB .. largest value of the format)")
    ax.grid(axis="x", alpha=0.3)


def write_profile(path: Path, model: M3ViT, qm: QuantModel) -> Path:
    profile_figure(model, qm).savefig(path, dpi=80)
    return Path(path)
