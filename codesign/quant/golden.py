"""Bit-exact golden model: what the accelerator computes, layer by layer, in NumPy integers."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import arith as A
from .qmodel import QBlock, QLinear, QMoe, QuantModel


@dataclass
class GoldenResult:
    output: np.ndarray  # int [T, D] at qm.output_scale
    trace: dict[str, np.ndarray] = field(default_factory=dict)
    routing: dict[int, np.ndarray] = field(default_factory=dict)  # block -> top-k expert ids [T, k]


def apply_linear(x, layer: QLinear, abits: int) -> np.ndarray:
    y = A.linear(x, layer.w, layer.bias, layer.mult, layer.shift, abits)
    if layer.gelu is not None:
        y = A.lut_lookup(y, layer.gelu, abits)
    return y


def apply_norm(x, norm, abits: int) -> np.ndarray:
    return A.layernorm(x, norm.gamma, norm.beta, norm.eps, norm.shift, abits)


def apply_add(a, b, add, abits: int) -> np.ndarray:
    return A.add(a, b, add.ma, add.mb, add.shift, abits)


def attention(qkv, blk: QBlock, heads: int, abits: int) -> np.ndarray:
    dim = qkv.shape[1] // 3
    dh = dim // heads
    at = blk.attn
    out = []
    for h in range(heads):
        q, k, v = (qkv[:, part * dim + h * dh: part * dim + (h + 1) * dh] for part in range(3))
        out.append(A.attention_head(q, k, v, at.score_mult, at.score_shift, at.out_mult, at.out_shift, abits, abits))
    return np.concatenate(out, axis=1)


def gate(x, moe: QMoe, task: int, abits: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k expert ids [T, k] (by logit, ties to the lower id) and their probabilities [T, k]."""
    logits = A.matmul_acc(x, moe.gate_w[task], moe.gate_b[task])
    probs = A.softmax_rows(logits, moe.score_mult, moe.score_shift, abits)
    ids = A.topk_experts(logits, moe.top_k)
    return ids, np.take_along_axis(probs, ids, axis=1)


def expert_queues(ids: np.ndarray, num_experts: int) -> list[np.ndarray]:
    """Patch reordering: for each expert, the tokens routed to it, in token order."""
    return [np.nonzero((ids == e).any(axis=1))[0] for e in range(num_experts)]


def moe(x, moe_layer: QMoe, task: int, abits: int) -> tuple[np.ndarray, np.ndarray]:
    ids, probs = gate(x, moe_layer, task, abits)
    acc = np.zeros(x.shape, np.int64)
    for e, tokens in enumerate(expert_queues(ids, len(moe_layer.fc1))):
        if tokens.size == 0:
            continue  # an unused expert's weights are never read
        h = apply_linear(x[tokens], moe_layer.fc1[e], abits)
        y = apply_linear(h, moe_layer.fc2[e], abits)
        score = probs[tokens][ids[tokens] == e]
        acc[tokens] += score[:, None] * y
    return A.requant(acc, moe_layer.out_mult, moe_layer.out_shift, abits), ids


def run_block(x, blk: QBlock, i: int, qm: QuantModel, task: int, res: GoldenResult) -> np.ndarray:
    ab, p, tr = qm.abits, f"b{i}.", res.trace
    tr[p + "ln1"] = h = apply_norm(x, blk.ln1, ab)
    tr[p + "qkv"] = qkv = apply_linear(h, blk.qkv, ab)
    tr[p + "attn"] = att = attention(qkv, blk, qm.cfg.num_heads, ab)
    tr[p + "proj"] = proj = apply_linear(att, blk.proj, ab)
    tr[p + "res1"] = x = apply_add(x, proj, blk.res1, ab)
    tr[p + "ln2"] = h = apply_norm(x, blk.ln2, ab)
    if blk.is_moe:
        y, res.routing[i] = moe(h, blk.mlp, task, ab)
    else:
        tr[p + "gelu"] = g = apply_linear(h, blk.mlp[0], ab)
        y = apply_linear(g, blk.mlp[1], ab)
    tr[p + "mlp"] = y
    tr[p + "res2"] = x = apply_add(x, y, blk.res2, ab)
    return x


def run_golden(qm: QuantModel, x_q: np.ndarray, task: int) -> GoldenResult:
    """x_q: integer patch rows [T, F] (row 0 zero, see quantize_input); task selects the gates."""
    if not 0 <= task < qm.cfg.num_tasks:
        raise ValueError(f"task id {task} out of range 0..{qm.cfg.num_tasks - 1}")
    x_q = np.asarray(x_q, np.int64)
    expected = (qm.cfg.num_tokens, qm.cfg.patch_features)
    if x_q.shape != expected:
        raise ValueError(f"input must have shape {expected} (tokens, patch features), got {x_q.shape}")
    res = GoldenResult(output=None)
    res.trace["patch"] = x = apply_linear(x_q, qm.patch, qm.abits)
    res.trace["embed"] = x = apply_add(x, qm.pos, qm.embed, qm.abits)
    for i, blk in enumerate(qm.blocks):
        x = run_block(x, blk, i, qm, task, res)
    res.trace["norm"] = res.output = apply_norm(x, qm.norm, qm.abits)
    return res


def dequantize_output(qm: QuantModel, out_q: np.ndarray) -> np.ndarray:
    return np.asarray(out_q, np.float64) * qm.output_scale
