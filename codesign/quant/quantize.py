"""Calibration and quantisation: float M3ViT -> QuantModel with integer parameters."""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from ..model.m3vit import M3ViT
from ..model.train import torch_threads
from . import arith as A
from .precision import Precision, activation_layer, check_precision
from .qmodel import QAdd, QAttention, QBlock, QLinear, QMoe, QNorm, QuantModel


def images_to_patches(images: np.ndarray, patch: int) -> np.ndarray:
    """[B, C, H, W] -> [B, T, C*p*p] in conv-weight order, row 0 of each image left as the zero cls slot."""
    b, c, h, w = images.shape
    g_h, g_w = h // patch, w // patch
    x = images.reshape(b, c, g_h, patch, g_w, patch).transpose(0, 2, 4, 1, 3, 5)
    x = x.reshape(b, g_h * g_w, c * patch * patch)
    return np.concatenate([np.zeros((b, 1, x.shape[2]), x.dtype), x], axis=1)


def quantize_input(images: np.ndarray, qm: QuantModel) -> np.ndarray:
    """Float images [B,C,H,W] -> integer patch rows [B, T, F] as the accelerator reads them."""
    patches = images_to_patches(np.asarray(images, np.float64), qm.cfg.patch_size)
    return A.quantize_tensor(patches, qm.input_scale, qm.input_bits)


# Traced by the float model for the accuracy report only: the hardware keeps gate logits as
# accumulators and probabilities at a fixed scale, so calibrating them would be meaningless.
UNCALIBRATED = (".gate.logits", ".gate.probs")
# Values of each activation kept (per task, evenly strided) for the profiling plot's boxes.
PROFILE_SAMPLES = 8192
# No ViT activation is this large; the first one that is points at the weight that broke the model.
HUGE_ACTIVATION = 1e15


# Calibration images go through the float model in passes of at most this many attention scores
# [B, heads, T, T] (128 MB of float32, were attention to materialise them): PASCAL-small's 8
# calibration images (1,025 tokens, 12 heads) go 2 a pass; convert's peak RSS 1.55 GB, where 2^27
# (all 8 in one pass) peaked at 3.96 GB (/usr/bin/time -v).
CALIB_SCORES_PER_PASS = 1 << 25
# One thread, as in training: on a shared 2-core host a second thread made M3ViT-small's forward
# 3-4x slower (OpenMP threads waiting for each other); on an idle one it saves at most ~40%.
CALIB_THREADS = 1


class _RangeTrace(dict):
    """A `trace` for forward_backbone that keeps max |value| per calibrated name (q, k, v apart) and,
    when asked, a sample of the values for the profiling plot, not the tensors."""

    def __init__(self, dim: int, amax: dict[str, float], samples: dict | None = None):
        super().__init__()
        self.dim, self.amax, self.samples, self.task = dim, amax, samples, 0

    def __setitem__(self, name: str, value) -> None:
        if name.endswith(UNCALIBRATED):
            return
        for key, part in _calibrated_parts(name, value, self.dim):
            if not torch.isfinite(part).all():
                raise ValueError(f"cannot quantise {key}: its activations overflow float32 (inf or NaN) on "
                                 f"the calibration images for task {self.task}{_first_huge(self.amax)}")
            self.amax[key] = max(self.amax.get(key, 0.0), float(part.abs().max()))
            _keep_sample(self.samples, key, part)


@torch.no_grad()
def collect_ranges(model: M3ViT, images: np.ndarray, samples: dict | None = None) -> dict[str, float]:
    """Max |value| of every requantised traced activation over all calibration images and all tasks.

    `samples`, when given, receives up to PROFILE_SAMPLES values of each activation per task
    (float32 arrays, for codesign.report.profiling)."""
    cfg = model.cfg
    images = np.asarray(images, np.float32)
    patches = images_to_patches(images, cfg.patch_size)
    amax = {"input": float(np.abs(patches).max())}
    _keep_sample(samples, "input", torch.as_tensor(patches))
    trace = _RangeTrace(cfg.embed_dim, amax, samples)
    batch = max(1, CALIB_SCORES_PER_PASS // (cfg.num_heads * cfg.num_tokens**2))
    with torch_threads(CALIB_THREADS):
        for start in range(0, len(images), batch):
            x = torch.as_tensor(images[start:start + batch])
            for task in range(cfg.num_tasks):
                trace.task = task
                model.forward_backbone(x, task, trace)
    return amax


def _first_huge(amax: dict[str, float]) -> str:
    """Where the values ran away: the first activation (execution order) beyond HUGE_ACTIVATION."""
    first = next(((k, v) for k, v in amax.items() if v > HUGE_ACTIVATION), None)
    if first is None:
        return "; check the weights of the layers before it"
    return f"; the first activation beyond {HUGE_ACTIVATION:.0e} is {first[0]} (max |x| {first[1]:.3g}): check its weights"


def _calibrated_parts(name: str, value: torch.Tensor, d: int):
    """(scale name, tensor) pairs of one traced tensor: the packed q|k|v output has three scales."""
    if name.endswith(".qkv"):
        return [(name[:-3] + "q", value[..., :d]), (name[:-3] + "k", value[..., d:2 * d]),
                (name[:-3] + "v", value[..., 2 * d:])]
    return [(name, value)]


def _keep_sample(samples: dict | None, key: str, value: torch.Tensor) -> None:
    if samples is None:
        return
    flat = value.reshape(-1)
    step = max(1, flat.numel() // PROFILE_SAMPLES)
    kept = flat[::step][:PROFILE_SAMPLES].float().numpy()
    samples[key] = np.concatenate([samples[key], kept]) if key in samples else kept


def weight_scales(w: np.ndarray, bits: int, per_channel: bool = True) -> np.ndarray:
    """Scale of each output channel (row) of `w`, or one for the whole tensor."""
    axes = tuple(range(1, w.ndim)) if per_channel else None
    amax = np.abs(w).max(axis=axes) if per_channel else np.full(w.shape[0], np.abs(w).max())
    return np.where(amax > 0, amax, 1.0) / A.qmax(bits)


def _linear(w, b, in_scale, out_scale, wbits, obits, gelu_out_scale=None, out_scales=None) -> QLinear:
    """Per-channel `wbits` weights; the output saturates to `obits` (with GELU: the table's index and
    entries are both `obits` wide)."""
    w = np.asarray(w, np.float64)
    sw = weight_scales(w, wbits)
    wq = A.quantize_tensor(w, sw[:, None], wbits)
    bias = np.zeros(w.shape[0]) if b is None else np.asarray(b, np.float64)
    bq = np.round(bias / (in_scale * sw)).astype(np.int64)
    outs = np.full(w.shape[0], out_scale) if out_scales is None else np.asarray(out_scales)
    mult, shift = A.quantize_multipliers(in_scale * sw / outs)
    lut = None
    if gelu_out_scale is not None:
        lut = A.gelu_lut(out_scale, gelu_out_scale, obits, obits)
    return QLinear(wq, bq, mult, shift, obits, lut)


def _norm(ln, in_scale, out_scale, obits) -> QNorm:
    d = ln.weight.numel()
    gamma = _t(ln.weight) * math.sqrt(d) / out_scale
    beta = _t(ln.bias) / out_scale
    top = float(np.abs(gamma).max()) or 1.0
    gain_bits = 14 - math.floor(math.log2(top))
    shift = A.RSQRT_FRAC + gain_bits
    if shift < 1:
        raise ValueError("LayerNorm gain too large for the output scale")
    eps = max(1, round(ln.eps * d**3 / in_scale**2))
    return QNorm(np.round(gamma * 2.0**gain_bits).astype(np.int64), np.round(beta).astype(np.int64), int(eps), shift,
                 obits)


def _add(sa, sb, s_out, obits) -> QAdd:
    (ma, mb), shift = A.quantize_multipliers([sa / s_out, sb / s_out])
    return QAdd(int(ma), int(mb), shift, obits)


def _single(real: float) -> tuple[int, int]:
    m, s = A.quantize_multipliers([real])
    return int(m[0]), s


@contextmanager
def _layer(name: str, s: dict | None = None, *inputs: str):
    """A scale that does not fit the hardware's fields is the layer's problem: say which layer,
    and the scales of the activations it reads."""
    try:
        yield
    except ValueError as exc:
        shown = ", ".join(f"{k} {s[k]:.3g}" for k in inputs if s and k in s)
        raise ValueError(f"cannot quantise {name}: {exc}" + (f" (input scales: {shown})" if shown else "")
                         + "; are its weights or inputs out of range?") from None


def _t(p) -> np.ndarray:
    return p.detach().double().numpy()


def _attention(cfg, s, prefix, obits) -> QAttention:
    sm, ss = _single(s[prefix + "q"] * s[prefix + "k"] * cfg.head_dim**-0.5 / A.EXP_STEP)
    om, os_ = _single(s[prefix + "v"] / (2.0**A.ATTN_FRAC * s[prefix + "attn"]))
    return QAttention(sm, ss, om, os_, obits)


def folded_gates(model: M3ViT, mlp) -> tuple[np.ndarray, np.ndarray]:
    """Every task's gate as x @ w.T + b: weights [tasks, E, D] and biases [tasks, E], exactly
    folded from the task part of the gate input (nothing for one gate per task, the onehot's row
    or the task embedding's product with w_gate otherwise)."""
    folded = [mlp.folded_gate(t, model.gate_task_feature(t)) for t in range(model.cfg.num_tasks)]
    return np.stack([_t(w).T for w, _ in folded]), np.stack([_t(b) for _, b in folded])


def _moe(model, blk, s, prefix, in_scale, p: Precision) -> QMoe:
    cfg = model.cfg
    mlp = blk.mlp
    gate, fc1, fc2 = prefix + "gate", prefix + "fc1", prefix + "fc2"
    gw, gb = folded_gates(model, mlp)
    sg = float(np.abs(gw).max() or 1.0) / A.qmax(p.wbits(gate))
    gwq = A.quantize_tensor(gw, sg, p.wbits(gate))
    gbq = np.round(gb / (in_scale * sg)).astype(np.int64)
    sm, ss = _single(in_scale * sg / A.EXP_STEP)
    s[prefix + "gate.logits"] = in_scale * sg  # the integer logits' scale, for the accuracy report
    ex = mlp.experts
    fc1s = [_linear(_t(ex.htoh4.weight[e]), _t(ex.htoh4.bias[e]), in_scale, s[prefix + "fc1"], p.wbits(fc1),
                    p.abits(fc1), gelu_out_scale=s[prefix + "gelu"]) for e in range(cfg.num_experts)]
    fc2s = [_linear(_t(ex.h4toh.weight[e]), _t(ex.h4toh.bias[e]), s[prefix + "gelu"], s[prefix + "expert"],
                    p.wbits(fc2), p.abits(fc2)) for e in range(cfg.num_experts)]
    om, os_ = _single(s[prefix + "expert"] / (A.qmax(p.abits(gate)) * s[prefix + "mlp"]))
    return QMoe(gwq, gbq, sm, ss, fc1s, fc2s, om, os_, cfg.top_k, p.abits(gate), p.abits(prefix + "mlp"))


def _dense_mlp(blk, s, prefix, in_scale, p: Precision):
    m, fc1, fc2 = blk.mlp, prefix + "fc1", prefix + "fc2"
    first = _linear(_t(m.fc1.weight), _t(m.fc1.bias), in_scale, s[prefix + "fc1"], p.wbits(fc1), p.abits(fc1),
                    gelu_out_scale=s[prefix + "gelu"])
    second = _linear(_t(m.fc2.weight), _t(m.fc2.bias), s[prefix + "gelu"], s[prefix + "mlp"], p.wbits(fc2),
                     p.abits(fc2))
    return first, second


def _block(model, i, s, x_scale, p: Precision) -> QBlock:
    blk, b, d = model.blocks[i], f"b{i}.", model.cfg.embed_dim
    w, a = p.wbits, p.abits
    qkv_scales = np.repeat([s[b + "q"], s[b + "k"], s[b + "v"]], d)
    with _layer(b + "qkv", s, b + "ln1"):
        qkv = _linear(_t(blk.attn.qkv.weight), _t(blk.attn.qkv.bias), s[b + "ln1"], None, w(b + "qkv"),
                      a(b + "qkv"), out_scales=qkv_scales)
    with _layer(b + "proj", s, b + "attn"):
        proj = _linear(_t(blk.attn.proj.weight), _t(blk.attn.proj.bias), s[b + "attn"], s[b + "proj"],
                       w(b + "proj"), a(b + "proj"))
    with _layer(b + ("moe" if model.cfg.is_moe(i) else "mlp"), s, b + "ln2"):
        if model.cfg.is_moe(i):
            mlp = _moe(model, blk, s, b, s[b + "ln2"], p)
        else:
            mlp = _dense_mlp(blk, s, b, s[b + "ln2"], p)
    with _layer(b + "ln1", s, f"b{i - 1}.res2" if i else "embed"):
        ln1 = _norm(blk.norm1, x_scale, s[b + "ln1"], a(b + "ln1"))
    with _layer(b + "attn", s, b + "q", b + "k", b + "v"):
        attn = _attention(model.cfg, s, b, a(b + "attn"))
    with _layer(b + "res1", s, f"b{i - 1}.res2" if i else "embed", b + "proj"):
        res1 = _add(x_scale, s[b + "proj"], s[b + "res1"], a(b + "res1"))
    with _layer(b + "ln2", s, b + "res1"):
        ln2 = _norm(blk.norm2, s[b + "res1"], s[b + "ln2"], a(b + "ln2"))
    with _layer(b + "res2", s, b + "res1", b + "mlp"):
        res2 = _add(s[b + "res1"], s[b + "mlp"], s[b + "res2"], a(b + "res2"))
    return QBlock(ln1=ln1, qkv=qkv, attn=attn, proj=proj, res1=res1, ln2=ln2, mlp=mlp, res2=res2)


def _precision(cfg, wbits: int, abits: int, precision: Precision | None) -> Precision:
    """The precision to quantise with (uniform wbits/abits without one), checked against the model."""
    p = Precision.uniform(A.check_bits(wbits), A.check_bits(abits)) if precision is None else precision
    if not isinstance(p, Precision):
        raise ValueError(f"precision must be a codesign.quant.precision.Precision, got {type(p).__name__}")
    check_precision(cfg, p)
    return p


def quantize_model(model: M3ViT, calib_images: np.ndarray, wbits: int = 8, abits: int = 8,
                   precision: Precision | None = None) -> QuantModel:
    """Calibrate on `calib_images` (all tasks) and build the integer model.

    `precision`: per-layer formats (codesign.quant.precision), which replace wbits / abits (its
    default covers the layers it does not list); without one every layer has wbits / abits. Each
    activation's scale is max|x| / qmax(its layer's abits), each weight row's max|w| / qmax(wbits).
    qm.meta["activation_samples"] keeps a sample of every calibrated activation (for the
    profiling plot)."""
    p = _precision(model.cfg, wbits, abits, precision)  # before the slow calibration
    _check_datapath(model.cfg)
    samples: dict[str, np.ndarray] = {}
    amax = collect_ranges(model, calib_images, samples)
    scales = {k: A.scale_for(v, p.abits(activation_layer(k, model.cfg))) for k, v in amax.items()}
    qm = quantize_with_scales(model, scales, precision=p)
    qm.meta["activation_samples"] = samples
    return qm


def quantize_with_scales(model: M3ViT, scales: dict[str, float], wbits: int = 8, abits: int = 8,
                         precision: Precision | None = None) -> QuantModel:
    """The integer model for given activation scales (a calibration's, or a project's project.json):
    the same scales, weights and precision always give the same integer model."""
    cfg = model.cfg
    p = _precision(cfg, wbits, abits, precision)
    _check_datapath(cfg)
    s = {k: float(v) for k, v in scales.items()}
    pw = _t(model.patch_embed.proj.weight).reshape(cfg.embed_dim, -1)
    with _layer("patch", s, "input"):
        patch = _linear(pw, None, s["input"], s["patch"], p.wbits("patch"), p.abits("patch"))
    pos = _t(model.pos_embed)[0].copy()
    pos[0] += _t(model.cls_token)[0, 0]
    pos[1:] += _t(model.patch_embed.proj.bias)
    s["pos"] = A.scale_for(np.abs(pos).max(), p.abits("embed"))  # the position table: as wide as embed's output
    blocks, x_scale = [], s["embed"]
    for i in range(cfg.depth):
        blocks.append(_block(model, i, s, x_scale, p))
        x_scale = s[f"b{i}.res2"]
    with _layer("embed", s, "patch", "pos"):
        embed = _add(s["patch"], s["pos"], s["embed"], p.abits("embed"))
    norm = None
    if model.norm is not None:  # M3ViT has none: each task head has its own, on the host
        with _layer("norm", s, f"b{cfg.depth - 1}.res2"):
            norm = _norm(model.norm, x_scale, s["norm"], p.abits("norm"))
    return QuantModel(cfg=cfg, wbits=p.default.wbits, abits=p.default.abits, precision=p, scales=s, patch=patch,
                      pos=A.quantize_tensor(pos, s["pos"], p.abits("embed")), embed=embed, blocks=blocks, norm=norm)


def _check_datapath(cfg) -> None:
    if cfg.embed_dim % 8 or cfg.head_dim % 8:
        raise ValueError("embed_dim and head_dim must be multiples of 8 for the accelerator's 64-bit datapath")
