"""Bit-exact golden model: what the accelerator computes, layer by layer, in NumPy integers."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import arith as A
from .qmodel import QBlock, QLinear, QMoe, QuantModel


@dataclass
class GoldenResult:
    output: np.ndarray  # int [T, D] at qm.output_scale
    # One entry per qm.trace_names(): what csim/cosim compare to name the first diverging layer.
    trace: dict[str, np.ndarray] = field(default_factory=dict)
    routing: dict[int, np.ndarray] = field(default_factory=dict)  # block -> top-k expert ids [T, k]
    # Intermediates inside a layer, kept apart from `trace` because the hardware has no buffer
    # region for them; scales via qm.scale_of(name). Per block i and expert e (used ones only):
    #   b{i}.attn.scores, b{i}.attn.exp, b{i}.attn.probs (float e/sum e) [heads, T, T]; b{i}.fc1 [T, H] (dense MLP, before GELU);
    #   b{i}.gate.logits, b{i}.gate.probs [T, E]; b{i}.e{e}.tokens [n] (token ids routed to e, in order),
    #   b{i}.e{e}.fc1, b{i}.e{e}.gelu [n, H], b{i}.e{e}.out [n, D] (fc2 output, before the gate weighting).
    detail: dict[str, np.ndarray] = field(default_factory=dict)


def apply_linear(x, layer: QLinear) -> np.ndarray:
    return apply_linear_parts(x, layer)[1]


def apply_linear_parts(x, layer: QLinear) -> tuple[np.ndarray, np.ndarray]:
    """(requantised matmul output, final output): they differ only for a layer with a GELU table.
    Every layer saturates to its own output width (layer.obits)."""
    y = A.linear(x, layer.w, layer.bias, layer.mult, layer.shift, layer.obits)
    return y, (y if layer.gelu is None else A.lut_lookup(y, layer.gelu, layer.obits))


def apply_norm(x, norm) -> np.ndarray:
    return A.layernorm(x, norm.gamma, norm.beta, norm.eps, norm.shift, norm.obits)


def apply_add(a, b, add) -> np.ndarray:
    return A.add(a, b, add.ma, add.mb, add.shift, add.obits)


def split_heads(qkv, heads: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Packed q|k|v rows [T, 3D] -> (q, k, v) [T, D/heads] per head."""
    dim = qkv.shape[1] // 3
    dh = dim // heads
    return [tuple(qkv[:, part * dim + h * dh: part * dim + (h + 1) * dh] for part in range(3)) for h in range(heads)]


def attention(qkv, blk: QBlock, heads: int) -> np.ndarray:
    at = blk.attn
    out = [A.attention_head(q, k, v, at.score_mult, at.score_shift, at.out_mult, at.out_shift, at.obits)
           for q, k, v in split_heads(qkv, heads)]
    return np.concatenate(out, axis=1)


def attention_probs(qkv, blk: QBlock, heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores q.k, exp weights e and the effective probabilities e / sum(e), each [heads, T, T].

    The hardware never rounds probabilities (A.attention_head normalises its outputs instead), so
    `probs` is float. A.attention_head returns only its output; tests rebuild it from `e`, so a
    change inside A.attention_head that this does not follow fails loudly.
    """
    at = blk.attn
    scores = np.stack([A.matmul_acc(q, k, 0) for q, k, _ in split_heads(qkv, heads)])
    e = A.exp_weights(scores, at.score_mult, at.score_shift)
    return scores, e, e / e.sum(axis=-1, keepdims=True)


def gate_scores(x, moe: QMoe, task: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer logits and probabilities [T, E] (units of 1/qmax(moe.prob_bits)) of the task's gate."""
    logits = A.matmul_acc(x, moe.gate_w[task], moe.gate_b[task])
    return logits, A.softmax_rows(logits, moe.score_mult, moe.score_shift, moe.prob_bits)


def gate(logits, probs, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k expert ids [T, k] (by logit, ties to the lower id) and their probabilities [T, k]."""
    ids = A.topk_experts(logits, top_k)
    return ids, np.take_along_axis(probs, ids, axis=1)


def expert_queues(ids: np.ndarray, num_experts: int) -> list[np.ndarray]:
    """Patch reordering: for each expert, the tokens routed to it, in token order."""
    return [np.nonzero((ids == e).any(axis=1))[0] for e in range(num_experts)]


def moe(x, moe_layer: QMoe, task: int, detail: dict | None, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    logits, all_probs = gate_scores(x, moe_layer, task)
    if detail is not None:
        detail[prefix + "gate.logits"], detail[prefix + "gate.probs"] = logits, all_probs
    ids, probs = gate(logits, all_probs, moe_layer.top_k)
    acc = np.zeros(x.shape, np.int64)
    for e, tokens in enumerate(expert_queues(ids, len(moe_layer.fc1))):
        if tokens.size == 0:
            continue  # an unused expert's weights are never read
        pre, h = apply_linear_parts(x[tokens], moe_layer.fc1[e])
        y = apply_linear(h, moe_layer.fc2[e])
        score = probs[tokens][ids[tokens] == e]
        acc[tokens] += score[:, None] * y
        if detail is not None:
            p = f"{prefix}e{e}."
            detail.update({p + "tokens": tokens, p + "fc1": pre, p + "gelu": h, p + "out": y})
    return A.requant(acc, moe_layer.out_mult, moe_layer.out_shift, moe_layer.obits), ids


def run_block(x, blk: QBlock, i: int, qm: QuantModel, task: int, res: GoldenResult,
              det: dict | None) -> np.ndarray:
    p, tr = f"b{i}.", res.trace
    tr[p + "ln1"] = h = apply_norm(x, blk.ln1)
    tr[p + "qkv"] = qkv = apply_linear(h, blk.qkv)
    tr[p + "attn"] = att = attention(qkv, blk, qm.cfg.num_heads)
    if det is not None:
        det[p + "attn.scores"], det[p + "attn.exp"], det[p + "attn.probs"] = attention_probs(qkv, blk, qm.cfg.num_heads)
    tr[p + "proj"] = proj = apply_linear(att, blk.proj)
    tr[p + "res1"] = x = apply_add(x, proj, blk.res1)
    tr[p + "ln2"] = h = apply_norm(x, blk.ln2)
    if blk.is_moe:
        y, res.routing[i] = moe(h, blk.mlp, task, det, p)
    else:
        pre, g = apply_linear_parts(h, blk.mlp[0])
        tr[p + "gelu"] = g
        if det is not None:
            det[p + "fc1"] = pre
        y = apply_linear(g, blk.mlp[1])
    tr[p + "mlp"] = y
    tr[p + "res2"] = x = apply_add(x, y, blk.res2)
    return x


def run_golden(qm: QuantModel, x_q: np.ndarray, task: int, detail: bool = False) -> GoldenResult:
    """x_q: integer patch rows [T, F] (row 0 zero, see quantize_input); task selects the gates.

    With detail=True, res.detail also holds the tensors inside the layers (attention scores, gate,
    experts), for the accuracy report; they cost about as much as the run itself, so only on request.
    """
    if not 0 <= task < qm.cfg.num_tasks:
        raise ValueError(f"task id {task} out of range 0..{qm.cfg.num_tasks - 1}")
    x_q = np.asarray(x_q, np.int64)
    expected = (qm.cfg.num_tokens, qm.cfg.patch_features)
    if x_q.shape != expected:
        raise ValueError(f"input must have shape {expected} (tokens, patch features), got {x_q.shape}")
    res = GoldenResult(output=None)
    res.trace["patch"] = x = apply_linear(x_q, qm.patch)
    res.trace["embed"] = x = apply_add(x, qm.pos, qm.embed)
    for i, blk in enumerate(qm.blocks):
        x = run_block(x, blk, i, qm, task, res, res.detail if detail else None)
    if qm.norm is not None:
        res.trace["norm"] = x = apply_norm(x, qm.norm)
    res.output = x
    return res


def dequantize_output(qm: QuantModel, out_q: np.ndarray) -> np.ndarray:
    return np.asarray(out_q, np.float64) * qm.output_scale
