"""The integer arithmetic of the accelerator, specified once.

Everything the hardware computes is defined here on NumPy int64 arrays: rounding, saturation,
requantisation, and the lookup tables for exp, reciprocal, rsqrt and GELU. The golden model,
the instruction-set interpreter, the generated C++ and the generated Verilog all follow these
definitions (the C++ and Verilog read the same tables), so bit-exactness holds by construction.

Conventions
- Integers are two's complement; `>>` is an arithmetic (floor) shift.
- rshift_round(x, s) = (x + 2**(s-1)) >> s for s >= 1 (round half up), x for s == 0.
- saturate(x, bits) clamps to [-2**(bits-1), 2**(bits-1) - 1].
- Accumulation is exact (int64 here; the hardware sizes its accumulators so it never wraps),
  so the order of a reduction never changes a result: any tiling or token order is bit-exact.
"""
from __future__ import annotations

import functools
import math

import numpy as np

# Exp table: EXP_LUT[i] = round(2**EXP_FRAC * exp(-i * EXP_STEP)), the last entry forced to 0.
EXP_FRAC = 15
EXP_LUT_SIZE = 1024
EXP_STEP = 1.0 / 64.0
# Reciprocal table over an 11-bit mantissa m in [1024, 2048): RECIP_LUT[m - 1024] = round(2**RECIP_FRAC / m).
RECIP_MBITS = 11
RECIP_FRAC = 26
# Rsqrt table over a 12-bit mantissa: RSQRT_LUT[m] = round(2**RSQRT_FRAC / sqrt(m)), RSQRT_LUT[0] = 0.
RSQRT_MBITS = 12
RSQRT_FRAC = 24
# Attention keeps its probability-weighted sums in units of 2**-ATTN_FRAC of a value LSB: the
# softmax is normalised once per output element (deferred), not once per probability.
ATTN_FRAC = 15
# Requantisation multipliers are positive and below 2**MULT_BITS.
MULT_BITS = 15
# The unsigned width of a requantisation multiplier the hardware multiplies by (the RTL drain's and
# vector unit's lanes, docs/ISA.md): quantize_multipliers' rounding can reach 2**MULT_BITS itself,
# and a program whose multipliers are wider is refused by the ISA interpreter (check_requant_mult).
REQUANT_MULT_BITS = MULT_BITS + 1
MAX_SHIFT = 62
# LayerNorm gains: quantize._norm scales the largest |gamma| to [2**14, 2**15]; the hardware
# takes |gamma| < 2**LN_GAMMA_BITS (an 18-bit signed operand: t * gamma is one 27x18 multiply).
LN_GAMMA_BITS = 17


def qmin(bits: int) -> int:
    return -(1 << (bits - 1))


def qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def check_bits(bits: int) -> int:
    if not 2 <= int(bits) <= 16:
        raise ValueError(f"integer width must be in 2..16, got {bits}")
    return int(bits)


def signed_sum_bits(term_bits: int, terms: int) -> int:
    """Bits of an exact signed sum of `terms` values of magnitude < 2**term_bits."""
    return term_bits + max(0, math.ceil(math.log2(max(1, terms)))) + 1


def matmul_acc_bits(wbits: int, in_bits: int, k: int) -> int:
    """Accumulator bits of a dot product of k (wbits x in_bits) products (bias excluded, int32)."""
    return signed_sum_bits((wbits - 1) + (in_bits - 1), k)


def attention_acc_bits(qkv_bits: int, head_dim: int, tokens: int) -> int:
    """The widest exact sum of one attention head: scores q.k, or e.v (e <= 2**EXP_FRAC)."""
    return max(signed_sum_bits(2 * (qkv_bits - 1), head_dim), signed_sum_bits(EXP_FRAC + (qkv_bits - 1), tokens))


def container_dtype(bits: int):
    """Storage type of a tensor of this width: int8 up to 8 bits, int16 above."""
    return np.int8 if bits <= 8 else np.int16


def saturate(x, bits: int) -> np.ndarray:
    return np.clip(np.asarray(x, dtype=np.int64), qmin(bits), qmax(bits))


def rshift_round(x, shift) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return np.right_shift(x + half, shift)


def requant(acc, mult, shift: int, bits: int) -> np.ndarray:
    """int accumulator -> `bits`-wide integer: saturate(rshift_round(acc * mult, shift))."""
    return saturate(rshift_round(np.asarray(acc, np.int64) * np.asarray(mult, np.int64), shift), bits)


def check_requant_mult(mult, what: str) -> None:
    """A requantisation multiplier outside [0, 2**REQUANT_MULT_BITS) is refused (one line)."""
    m = np.asarray(mult, np.int64)
    if m.size and (m.min() < 0 or m.max() >= 1 << REQUANT_MULT_BITS):
        bad = int(m.min()) if m.min() < 0 else int(m.max())
        raise ValueError(f"{what}: requantisation multiplier {bad} is not in 0..2^{REQUANT_MULT_BITS}-1 "
                         f"(the hardware's {REQUANT_MULT_BITS}-bit multiplier)")


def check_ln_gamma(gamma, what: str) -> None:
    """A LayerNorm gain outside (-2**LN_GAMMA_BITS, 2**LN_GAMMA_BITS) is refused (one line)."""
    g = np.asarray(gamma, np.int64)
    if g.size and np.abs(g).max() >= 1 << LN_GAMMA_BITS:
        bad = int(g.flat[np.abs(g).argmax()])
        raise ValueError(f"{what}: gamma {bad} is not within +-(2^{LN_GAMMA_BITS}-1) "
                         f"(the hardware's {LN_GAMMA_BITS + 1}-bit signed gain)")


def quantize_multipliers(reals, mult_bits: int = MULT_BITS) -> tuple[np.ndarray, int]:
    """Represent positive reals as M / 2**S with one shared S and integer M < 2**mult_bits."""
    reals = np.atleast_1d(np.asarray(reals, dtype=np.float64))
    if np.any(~np.isfinite(reals)) or np.any(reals < 0):
        raise ValueError("requantisation scales must be finite and non-negative")
    top = float(reals.max())
    if top == 0.0:
        return np.zeros(reals.shape, np.int64), 0
    shift = mult_bits - 1 - math.floor(math.log2(top))
    shift = int(min(max(shift, 0), MAX_SHIFT))
    # Checked in float: a huge scale cast to int64 wraps to a negative "multiplier" first.
    if round(top * 2.0**shift) >= 1 << 31:
        raise ValueError(f"requantisation scale {top:.3g} is too large for a 32-bit multiplier")
    return np.round(reals * (2.0**shift)).astype(np.int64), shift


def quantize_tensor(x, scale, bits: int) -> np.ndarray:
    """Float -> integer at `scale` (broadcast), round half away from zero, saturate."""
    q = np.round(np.asarray(x, np.float64) / scale)
    return saturate(q, bits)


def scale_for(amax: float, bits: int) -> float:
    amax = float(amax)
    return (amax if amax > 0 else 1.0) / qmax(bits)


# ---------------------------------------------------------------- lookup tables

def exp_lut() -> np.ndarray:
    i = np.arange(EXP_LUT_SIZE, dtype=np.float64)
    lut = np.round((2.0**EXP_FRAC) * np.exp(-i * EXP_STEP)).astype(np.int64)
    lut[-1] = 0
    return lut


def recip_lut() -> np.ndarray:
    m = np.arange(1 << (RECIP_MBITS - 1), 1 << RECIP_MBITS, dtype=np.float64)
    return np.round((2.0**RECIP_FRAC) / m).astype(np.int64)


def rsqrt_lut() -> np.ndarray:
    m = np.arange(1 << RSQRT_MBITS, dtype=np.float64)
    lut = np.zeros(m.shape, np.int64)
    lut[1:] = np.round((2.0**RSQRT_FRAC) / np.sqrt(m[1:])).astype(np.int64)
    return lut


def gelu_float(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def gelu_lut(in_scale: float, out_scale: float, in_bits: int, out_bits: int) -> np.ndarray:
    """Table indexed by (q_in - qmin(in_bits)), giving the requantised GELU of q_in * in_scale."""
    q = np.arange(qmin(in_bits), qmax(in_bits) + 1, dtype=np.int64)
    return quantize_tensor(gelu_float(q * in_scale) / out_scale, 1.0, out_bits)


EXP = exp_lut()
RECIP = recip_lut()
RSQRT = rsqrt_lut()


# ---------------------------------------------------------------- kernels

def bit_length(x) -> np.ndarray:
    """Number of bits needed for non-negative x (0 -> 0), exact on int64."""
    x = np.asarray(x, np.int64)
    out = np.zeros(x.shape, np.int64)
    v = x.copy()
    for step in (32, 16, 8, 4, 2, 1):
        big = v >= (np.int64(1) << step)
        out += np.where(big, step, 0)
        v = np.where(big, v >> step, v)
    return out + (v > 0)


# Integer products summed in floating point are exact while every partial sum stays below 2**24
# (float32) or 2**53 (float64); max|a| * max|b| * K bounds them whatever order BLAS adds in.
# int8 operands allow float32 runs of ~1,000 products (int8 x int8: 1,040), so a long K is cut
# into runs whose float32 results add up exactly in float64. NumPy's int64 matmul has no BLAS and
# is tens of times slower.
FLOAT32_EXACT = 2.0**24
FLOAT64_EXACT = 2.0**53
MIN_FLOAT32_RUN = 128  # shorter runs: one float64 product is faster than many float32 ones


def exact_matmul(a, b) -> np.ndarray:
    """a @ b of integer arrays, exactly, as int64."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    k = a.shape[-1]
    bound = _max_abs(a) * _max_abs(b) if a.size and b.size else 0.0
    run = int((FLOAT32_EXACT - 1) // bound) if bound else k
    if run >= min(k, MIN_FLOAT32_RUN):
        total = None
        for start in range(0, k, run):
            part = (a[..., start:start + run].astype(np.float32) @ b[start:start + run].astype(np.float32))
            total = part.astype(np.float64) if total is None else total + part
        return np.zeros(a.shape[:-1] + b.shape[1:], np.int64) if total is None else total.astype(np.int64)
    if bound * k < FLOAT64_EXACT:
        return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return a @ b


def _max_abs(x: np.ndarray) -> float:
    return float(max(x.max(), -x.min()))  # without the temporary array of np.abs(x)


def matmul_acc(a, w, bias) -> np.ndarray:
    """acc[m, n] = sum_k a[m, k] * w[n, k] + bias[n]  (w in nn.Linear [out, in] layout)."""
    return exact_matmul(a, np.asarray(w, np.int64).T) + np.asarray(bias, np.int64)


def linear(a, w, bias, mult, shift: int, bits: int) -> np.ndarray:
    return requant(matmul_acc(a, w, bias), mult, shift, bits)


def lut_lookup(q, table, in_bits: int) -> np.ndarray:
    return np.asarray(table, np.int64)[np.asarray(q, np.int64) - qmin(in_bits)]


def add(a, b, ma: int, mb: int, shift: int, bits: int) -> np.ndarray:
    """Residual add of two tensors at different scales: saturate(rshift_round(a*ma + b*mb, shift))."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    return saturate(rshift_round(a * ma + b * mb, shift), bits)


def exp_weights(acc, score_mult: int, score_shift: int) -> np.ndarray:
    """EXP table weights of int logits `acc` relative to their row maximum (0 < e <= 2**EXP_FRAC at the max).

    z = max - acc >= 0 indexes the exp table after scaling by score_mult / 2**score_shift
    (= logit scale / EXP_STEP).
    """
    acc = np.asarray(acc, np.int64)
    z = acc.max(axis=-1, keepdims=True) - acc
    table = _exp_of_distance(int(score_mult), int(score_shift))
    if table is None:
        return EXP[np.minimum(rshift_round(z * score_mult, score_shift), EXP_LUT_SIZE - 1)]
    return np.take(table, z, mode="clip")  # z beyond the table reaches EXP's last entry, as table[-1] does


# Longest table of _exp_of_distance; a larger one (tiny score scales) falls back to the arithmetic.
MAX_DISTANCE_TABLE = 1 << 20


@functools.lru_cache(maxsize=256)
def _exp_of_distance(score_mult: int, score_shift: int) -> np.ndarray | None:
    """exp_weights per distance z = 0, 1, ... from the row maximum, up to the first z whose index
    rshift_round(z * score_mult, score_shift) reaches EXP's last entry: the same values in one
    gather instead of five passes over the [T, T] scores."""
    last = EXP_LUT_SIZE - 1
    if score_mult <= 0:
        return None
    half = (1 << (score_shift - 1)) if score_shift > 0 else 0
    first_last = -(-((last << score_shift) - half) // score_mult)  # rshift_round(z*m, s) >= last from here on
    if first_last > MAX_DISTANCE_TABLE:
        return None
    z = np.arange(first_last + 1, dtype=np.int64)
    table = EXP[np.minimum(rshift_round(z * score_mult, score_shift), last)]
    table.flags.writeable = False
    return table


def recip_parts(total) -> tuple[np.ndarray, np.ndarray]:
    """total >= 2**EXP_FRAC -> (r, mant_shift) with 1/total ~= r * 2**-(RECIP_FRAC + mant_shift).

    mant_shift = bitlen(total) - RECIP_MBITS >= EXP_FRAC + 1 - RECIP_MBITS > 0.
    """
    total = np.asarray(total, np.int64)
    mant_shift = bit_length(total) - RECIP_MBITS
    return RECIP[(total >> mant_shift) - (1 << (RECIP_MBITS - 1))], mant_shift


def softmax_rows(acc, score_mult: int, score_shift: int, prob_bits: int) -> np.ndarray:
    """Row softmax of int logits `acc`; output probabilities in units of 1/qmax(prob_bits) (MoE gate)."""
    e = exp_weights(acc, score_mult, score_shift)
    r, mant_shift = recip_parts(e.sum(axis=-1, keepdims=True))  # sum >= 2**EXP_FRAC: the max gives EXP[0]
    return rshift_round(e * qmax(prob_bits) * r, RECIP_FRAC + mant_shift)


def rsqrt_parts(var) -> tuple[np.ndarray, np.ndarray]:
    """var >= 1 -> (r, half_shift) with 1/sqrt(var) ~= r * 2**-(RSQRT_FRAC + half_shift)."""
    var = np.asarray(var, np.int64)
    s = np.maximum(bit_length(var) - RSQRT_MBITS, 0)
    s = s + (s & 1)  # even, so the square root of 2**s is a shift
    return RSQRT[var >> s], s >> 1


def layernorm(x, gamma_q, beta_q, eps_int: int, out_shift: int, bits: int) -> np.ndarray:
    """Integer LayerNorm over the last axis.

    d = D*x - sum(x); var = sum(d*d) + eps_int; t = rshift_round(d * rsqrt(var), half_shift)
    (t ~ 2**RSQRT_FRAC * d / sqrt(var)); y = saturate(rshift_round(t * gamma_q, out_shift) + beta_q).
    gamma_q folds gamma * sqrt(D) / out_scale * 2**(out_shift - RSQRT_FRAC); beta_q = beta / out_scale.
    """
    x = np.asarray(x, np.int64)
    dim = x.shape[-1]
    d = dim * x - x.sum(axis=-1, keepdims=True)
    var = (d * d).sum(axis=-1, keepdims=True) + eps_int
    r, half = rsqrt_parts(var)
    t = rshift_round(d * r, half)
    return saturate(rshift_round(t * np.asarray(gamma_q, np.int64), out_shift) + np.asarray(beta_q, np.int64), bits)


def topk_experts(logits, k: int) -> np.ndarray:
    """Indices [T, k] of the k largest logits per row; ties go to the lower expert index."""
    logits = np.asarray(logits, np.int64)
    order = np.argsort(-logits, axis=-1, kind="stable")
    return order[:, :k]


def attention_head(q, k, v, score_mult: int, score_shift: int, out_mult: int, out_shift: int,
                   out_bits: int) -> np.ndarray:
    """One head with a single-pass softmax and deferred normalisation.

    s = q.k (exact); e = exp_weights(s) (row max taken while the scores stream out);
    one pass over the keys accumulates both sum(e) and o = e.v (exact);
    the normalisation 1/sum(e) is applied to the head_dim outputs, not to every probability:
    t = rshift_round(o * r, RECIP_FRAC + mant_shift - ATTN_FRAC) ~= 2**ATTN_FRAC * sum(p.v),
    then requant(t, out_mult, out_shift). No int8 probabilities are ever formed.
    """
    scores = exact_matmul(q, np.asarray(k, np.int64).T)
    e = exp_weights(scores, score_mult, score_shift)
    r, mant_shift = recip_parts(e.sum(axis=-1, keepdims=True))
    t = rshift_round(exact_matmul(e, v) * r, RECIP_FRAC + mant_shift - ATTN_FRAC)
    return requant(t, out_mult, out_shift, out_bits)
