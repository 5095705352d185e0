"""Float PyTorch model vs bit-exact golden model: per-task metrics and per-layer SQNR."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.data import SyntheticData
from ..model.m3vit import M3ViT
from ..model.train import evaluate_outputs
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
    layer_sqnr_db: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"images": self.images, "layer_sqnr_db": self.layer_sqnr_db,
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

    def result(self, order: list[str]) -> dict[str, float]:
        return {n: sqnr_db(self.signal[n], self.noise[n]) for n in order if n in self.signal}


def _compare_traces(qm: QuantModel, float_trace: dict, golden_trace: dict, acc: _SqnrAccumulator, b: int) -> None:
    for name, q in golden_trace.items():
        if name not in float_trace:
            continue
        ref = float_trace[name][b].double().numpy()
        if name == "patch":
            q = q[1:]  # the golden tensor keeps the (zero) cls slot in row 0
        if ref.shape == q.shape:
            acc.add(name, ref, q * qm.scale_of(name))


def _agreement(kind: str, float_out: np.ndarray, golden_out: np.ndarray) -> dict:
    if kind == "seg":
        return {"label_agreement": float(np.mean(float_out.argmax(1) == golden_out.argmax(1)))}
    return {"rmse_vs_float": float(np.sqrt(np.mean((float_out - golden_out) ** 2)))}


@torch.no_grad()
def accuracy_report(model: M3ViT, qm: QuantModel, data: SyntheticData, progress=None) -> AccuracyReport:
    """Run the float model and the golden model on every image of `data`, for every task."""
    cfg = model.cfg
    x_q = quantize_input(data.images, qm)
    images = torch.as_tensor(data.images)
    sqnr = _SqnrAccumulator()
    tasks = []
    for t, spec in enumerate(cfg.tasks):
        trace: dict = {}
        tokens = model.forward_backbone(images, t, trace)
        float_out = model.head(tokens, t).numpy()
        golden_tokens = []
        for b in range(len(data)):
            res = run_golden(qm, x_q[b], t)
            _compare_traces(qm, trace, res.trace, sqnr, b)
            golden_tokens.append(dequantize_output(qm, res.output))
            if progress is not None:
                progress.update(1)
        golden_tokens = torch.as_tensor(np.stack(golden_tokens), dtype=torch.float32)
        golden_out = model.head(golden_tokens, t).numpy()
        tasks.append(TaskAccuracy(spec.name, spec.kind, evaluate_outputs(spec, float_out, data),
                                  evaluate_outputs(spec, golden_out, data), _agreement(spec.kind, float_out, golden_out)))
    return AccuracyReport(len(data), tasks, sqnr.result(["patch"] + qm.trace_names()))


def _metric_line(values: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))


def format_accuracy(rep: AccuracyReport) -> str:
    lines = [f"Float PyTorch vs int golden model on {rep.images} held-out images:"]
    for t in rep.tasks:
        lines.append(f"  {t.name:<10} float:  {_metric_line(t.float_metrics)}")
        lines.append(f"  {'':<10} golden: {_metric_line(t.golden_metrics)}   ({_metric_line(t.agreement)})")
    worst = sorted(rep.layer_sqnr_db.items(), key=lambda kv: kv[1])[:3]
    lines.append("  per-layer SQNR (dB): " + ", ".join(f"{k} {v:.1f}" for k, v in rep.layer_sqnr_db.items()))
    lines.append("  lowest: " + ", ".join(f"{k} {v:.1f} dB" for k, v in worst))
    return "\n".join(lines)
