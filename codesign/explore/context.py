"""What every point of a run shares, and the precisions points are quantised at.

The context is built once in the parent process and shipped once to every worker (the process
pool's initializer, or one Dask scatter): the float model, the calibration ranges (max |x| of
every activation, from which any activation width's scales follow without another float pass),
the held-out images and the float model's head outputs and metrics on them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..model.data import SyntheticData, make_dataset
from ..model.m3vit import M3ViT
from ..model.train import evaluate_outputs, predict, torch_threads
from ..quant import arith as A
from ..quant.precision import Precision, activation_layer, dump_precision, layer_names, load_precision
from ..quant.qmodel import QuantModel
from ..quant.quantize import collect_ranges, quantize_with_scales

# The held-out images of the accuracy figures: the seed codesign demo's accuracy report uses, apart
# from calibration (api.CALIB_SEED) and the project's test vectors (api.VECTOR_SEED).
EVAL_SEED = 4321
DEFAULT_EVAL_IMAGES = 32

@dataclass
class ExploreContext:
    model: M3ViT
    amax: dict[str, float]  # calibration ranges
    eval_data: SyntheticData
    float_outputs: list[np.ndarray]  # per task: head outputs [N, C, H, W] on eval_data
    float_metrics: list[dict]
    fingerprint: str  # model, calibration images and held-out set: part of every point's key


def build_context(model: M3ViT, calib_images: np.ndarray, eval_images: int = DEFAULT_EVAL_IMAGES) -> ExploreContext:
    cfg = model.cfg
    amax = collect_ranges(model, calib_images)
    data = make_dataset(eval_images, cfg, EVAL_SEED)
    with torch_threads(1):
        outputs = [predict(model, data.images, t) for t in range(cfg.num_tasks)]
    metrics = [evaluate_outputs(spec, out, data) for spec, out in zip(cfg.tasks, outputs)]
    return ExploreContext(model, amax, data, outputs, metrics, fingerprint(model, calib_images, eval_images))


def fingerprint(model: M3ViT, calib_images: np.ndarray, eval_images: int) -> str:
    """A hash of everything a point's result depends on besides the point itself."""
    h = hashlib.sha256()
    h.update(repr(model.cfg).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(calib_images, np.float32).tobytes())
    h.update(f"eval {eval_images} seed {EVAL_SEED}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- precisions

@dataclass(frozen=True)
class PointPrecision:
    """A point's precision: global widths, and per layer (text in codesign.quant.precision's format)."""

    wbits: int
    abits: int
    layers: str = ""  # dump_precision text; empty: uniform

    @property
    def per_layer(self) -> bool:
        return bool(self.layers)

    def label(self) -> str:
        return f"W{self.wbits}A{self.abits}" + ("+layers" if self.layers else "")


    def to_precision(self, cfg) -> Precision:
        if not self.layers:
            return Precision.uniform(self.wbits, self.abits)
        return load_precision(self.layers, layer_names(cfg))

    @classmethod
    def of(cls, p: Precision) -> "PointPrecision":
        """A Precision as a point: uniform ones by their widths, others by their YAML text."""
        if not len(p):
            return cls(p.default.wbits, p.default.abits)
        return cls(p.default.wbits, p.default.abits, dump_precision(p))


def quantize_point(ctx: ExploreContext, p: PointPrecision) -> QuantModel:
    """The integer model of `p` from the run's calibration ranges: what quantize_model gives with
    the same calibration images, without its float pass (each activation's scale from its layer's
    abits, as quantize_model takes it)."""
    cfg = ctx.model.cfg
    precision = p.to_precision(cfg)
    scales = {k: A.scale_for(v, precision.abits(activation_layer(k, cfg))) for k, v in ctx.amax.items()}
    return quantize_with_scales(ctx.model, scales, precision=precision)
