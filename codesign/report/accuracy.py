"""Float PyTorch model vs bit-exact golden model: per-task metrics and per-layer SQNR."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.data import SyntheticData
from ..model.m3vit import M3ViT
from ..model.train import agreement_with_float, evaluate_outputs, torch_threads
from ..quant.golden import dequantize_output, run_golden
from ..quant.qmodel import QuantModel
from ..quant.quantize import quantize_input


@dataclass
class TaskAccuracy:
    name: str
    kind: str
    float_metrics: dict
    golden_metrics: dict
    agreement: dict  # golden vs float outputs of the head


@dataclass
class AccuracyReport:
    images: int
    tasks: list[TaskAccuracy]
    layer_sqnr_db: dict[str, float] = field(default_factory=dict)  # per golden trace name
    detail_sqnr_db: dict[str, float] = field(default_factory=dict)  # per golden detail name (inside layers)

    def to_json(self) -> dict:
        return {"images": self.images, "layer_sqnr_db": self.layer_sqnr_db, "detail_sqnr_db": self.detail_sqnr_db,
                "tasks": [t.__dict__ for t in self.tasks]}


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(max(signal, 1e-30) / noise))


class _SqnrAccumulator:
    def __init__(self):
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def add(self, name: str, ref: np.ndarray, approx: np.ndarray) -> None:
        self.signal[name] = self.signal.get(name, 0.0) + float(np.sum(ref**2))
        self.noise[name] = self.noise.get(name, 0.0) + float(np.sum((approx - ref) ** 2))

    def result(self, order: list[str] | None = None) -> dict[str, float]:
        order = list(self.signal) if order is None else order
        return {n: sqnr_db(self.signal[n], self.noise[n]) for n in order if n in self.signal}


def _compare(qm: QuantModel, refs: dict, golden: dict, acc: _SqnrAccumulator) -> None:
    """Add every golden tensor that has a same-shaped float reference of the same name."""
    for name, q in golden.items():
        if name not in refs:
            continue
        ref = refs[name]
        if name == "patch":
            q = q[1:]  # the golden tensor keeps the (zero) cls slot in row 0
        if ref.shape == q.shape:
            acc.add(name, ref, q * qm.scale_of(name))


def _image_trace(float_trace: dict, names: list[str], b: int) -> dict:
    return {name: float_trace[name][b].double().numpy() for name in names if name in float_trace}


def _float_detail(model: M3ViT, float_trace: dict, attn: dict, b: int, golden_detail: dict) -> dict:
    """Float counterparts of the golden detail tensors of image b; experts run on the tokens the golden routed."""
    refs = {}
    for i, blk in enumerate(model.blocks):
        p = f"b{i}."
        refs[p + "attn.scores"], refs[p + "attn.probs"] = (t[b] for t in attn[i])
        if model.cfg.is_moe(i):
            refs.update({p + n: float_trace[p + n][b] for n in ("gate.logits", "gate.probs")})
            refs.update(_float_experts(blk.mlp, float_trace[p + "ln2"][b], golden_detail, p))
        else:
            refs[p + "fc1"] = float_trace[p + "fc1"][b]
    return {name: t.double().numpy() for name, t in refs.items()}


def _float_experts(mlp, ln2, golden_detail: dict, prefix: str) -> dict:
    refs = {}
    for e in range(mlp.cfg.num_experts):
        tokens = golden_detail.get(f"{prefix}e{e}.tokens")
        if tokens is not None:
            outputs = mlp.expert(e, ln2[torch.as_tensor(tokens)])
            refs.update({f"{prefix}e{e}.{part}": t for part, t in zip(("fc1", "gelu", "out"), outputs)})
    return refs


@torch.no_grad()
def accuracy_report(model: M3ViT, qm: QuantModel, data: SyntheticData, progress=None) -> AccuracyReport:
    """Run the float model and the golden model on every image of `data`, for every task."""
    cfg = model.cfg
    x_q = quantize_input(data.images, qm)
    images = torch.as_tensor(data.images)
    sqnr, detail_sqnr = _SqnrAccumulator(), _SqnrAccumulator()
    tasks = []
    for t, spec in enumerate(cfg.tasks):
        trace: dict = {}
        tokens = model.forward_backbone(images, t, trace)
        attn = {i: blk.attn.scores_and_probs(trace[f"b{i}.qkv"]) for i, blk in enumerate(model.blocks)}
        float_out = model.head(tokens, t).numpy()
        golden_tokens = []
        # Per image, torch only sees tiny tensors; idle worker threads spinning between its calls
        # and NumPy's made this loop 3-4x slower on a 2-core machine.
        with torch_threads(1):
            for b in range(len(data)):
                res = run_golden(qm, x_q[b], t, detail=True)
                _compare(qm, _image_trace(trace, qm.trace_names(), b), res.trace, sqnr)
                _compare(qm, _float_detail(model, trace, attn, b, res.detail), res.detail, detail_sqnr)
                golden_tokens.append(dequantize_output(qm, res.output))
                if progress is not None:
                    progress.update(1)
        golden_tokens = torch.as_tensor(np.stack(golden_tokens), dtype=torch.float32)
        golden_out = model.head(golden_tokens, t).numpy()
        tasks.append(TaskAccuracy(spec.name, spec.kind, evaluate_outputs(spec, float_out, data),
                                  evaluate_outputs(spec, golden_out, data), agreement_with_float(spec.kind, float_out, golden_out)))
    return AccuracyReport(len(data), tasks, sqnr.result(qm.trace_names()), detail_sqnr.result())


def task_table(t: TaskAccuracy) -> list[str]:
    """One row per model (float, golden), one column per scalar metric and agreement with float."""
    keys = [k for k, v in t.float_metrics.items() if isinstance(v, float)]
    header = ["", *keys, *t.agreement]
    rows = [["float", *(f"{t.float_metrics[k]:.4f}" for k in keys), *("-" for _ in t.agreement)],
            ["golden", *(f"{t.golden_metrics[k]:.4f}" for k in keys), *(f"{v:.4f}" for v in t.agreement.values())]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [f"  {(t.name if i == 0 else ''):<10} " + "  ".join(f"{c:>{w}}" for c, w in zip(row, widths))
            for i, row in enumerate([header, *rows])]


def format_accuracy(rep: AccuracyReport) -> str:
    lines = [f"Float PyTorch vs int golden model on {rep.images} held-out images:"]
    for t in rep.tasks:
        lines += task_table(t)
    worst = sorted(rep.layer_sqnr_db.items(), key=lambda kv: kv[1])[:3]
    lines.append("  per-layer SQNR (dB): " + ", ".join(f"{k} {v:.1f}" for k, v in rep.layer_sqnr_db.items()))
    lines.append("  lowest: " + ", ".join(f"{k} {v:.1f} dB" for k, v in worst))
    if rep.detail_sqnr_db:
        inside = _min_over_experts(rep.detail_sqnr_db)
        lines.append("  inside layers, SQNR (dB; e* = worst expert): " + ", ".join(f"{k} {v:.1f}" for k, v in inside.items()))
    return "\n".join(lines)


def _min_over_experts(sqnr: dict[str, float]) -> dict[str, float]:
    """One entry per block and part instead of one per expert, so the summary fits a line or two."""
    grouped: dict[str, float] = {}
    for name, value in sqnr.items():
        key = re.sub(r"\.e\d+\.", ".e*.", name)
        grouped[key] = min(grouped.get(key, value), value)
    return grouped
