"""The compute unit's microarchitecture, described once (docs/UARCH.md).

`derive_uarch(prog, P, Q, board)` gives the parameters the RTL core, the HLS kernel and the
estimate are all built from: the array shape, the beat and element widths, the accumulator width
the program needs, and the depth of every on-chip memory. `check_program` enforces the hardware
rules of docs/UARCH.md. `constants()` is what the Jinja templates receive.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..quant import arith as A
from .isa import Flag, Instr, Op
from .program import Program


class HardwareRuleError(ValueError):
    """A program the compute unit cannot run as generated (one line naming the instruction)."""


def _clog2(n: int) -> int:
    return max(0, math.ceil(math.log2(max(1, n))))


def signed_sum_bits(term_bits: int, terms: int) -> int:
    """Bits of an exact signed sum of `terms` values of magnitude < 2**term_bits."""
    return term_bits + _clog2(terms) + 1


def instr_acc_bits(ins: Instr, wbits: int, abits: int) -> int:
    """Accumulator bits the MAC array needs for one instruction (0: it does not use the array)."""
    a = ins.args
    product = (wbits - 1) + (abits - 1)
    if ins.op == Op.MATMUL:
        return signed_sum_bits(product, a["k"])
    if ins.op == Op.GATE:
        return signed_sum_bits(product, a["dim"])
    if ins.op == Op.ATTN:
        scores = signed_sum_bits(2 * (abits - 1), a["head_dim"])
        ev = signed_sum_bits(A.EXP_FRAC + (abits - 1), a["tokens"])
        return max(scores, ev)
    return 0


def packable(wbits: int, abits: int) -> bool:
    """Two products sharing the activation fit one 27x18 multiply (docs/UARCH.md, packed mode)."""
    return wbits <= 9 and wbits + abits <= 18


@dataclass(frozen=True)
class Uarch:
    P: int
    Q: int
    beat_bytes: int  # B
    elem_bytes: int  # EB
    weight_ports: int  # W
    wbits: int
    abits: int
    acc_w: int
    max_tokens: int
    max_k: int
    max_n: int
    max_dim: int  # widest LAYERNORM / ADD row, GATE dim, attention D
    max_dh: int  # 0 without attention
    max_experts: int  # 0 without GATE
    bank_beats: int  # one abank copy
    slot_row_beats: int  # beats of one weight row in a slot (max_k / EPB)
    param_words: int  # int32 parameters a slot holds (bias + mult, or gamma + beta)
    acc_words: int  # moe_acc words (EPB int32 each), 0 without MoE
    instrs: int  # program words / 16, END included
    gelu: bool

    @property
    def epb(self) -> int:
        return self.beat_bytes // self.elem_bytes

    @property
    def G(self) -> int:
        return -(-self.P // self.epb)

    @property
    def GW(self) -> int:
        return -(-self.Q // self.epb)

    @property
    def packed(self) -> bool:
        return packable(self.wbits, self.abits)

    @property
    def macs_per_dsp(self) -> int:
        return 2 if self.packed else 1

    @property
    def dsps_array(self) -> int:
        return self.P * self.Q // 2

    @property
    def macs_per_cycle(self) -> int:
        """Peak MACs per cycle of packed work (MATMUL, scores); e.v runs at half of it."""
        return self.dsps_array * self.macs_per_dsp

    def constants(self) -> dict:
        """Template variables shared by rtl_templates/ and hls_templates/ (`uarch.<name>`)."""
        d = asdict(self)
        d.update(EPB=self.epb, G=self.G, GW=self.GW, packed=int(self.packed), EB=self.elem_bytes,
                 B=self.beat_bytes, W=self.weight_ports, ACC_W=self.acc_w, HALF_Q=self.Q // 2,
                 EXP_COPIES=max(1, self.P // 2), ROUTER_EXP_COPIES=max(1, self.max_experts // 2),
                 LUT_COPIES=max(1, self.epb // 2))
        return d


def _args(prog: Program, op: Op) -> list[dict]:
    return [i.args for i in prog.instrs if i.op == op]


def derive_uarch(prog: Program, P: int, Q: int, beat_bytes: int, weight_ports: int) -> Uarch:
    """The microarchitecture parameters of `prog` on a P x Q array (sizes from the program)."""
    eb = prog.elem_bytes
    epb = beat_bytes // eb
    mm, gate, attn = _args(prog, Op.MATMUL), _args(prog, Op.GATE), _args(prog, Op.ATTN)
    norm, add, rq = _args(prog, Op.LAYERNORM), _args(prog, Op.ADD), _args(prog, Op.REQUANT32)
    tokens = [a["m"] for a in mm] + [a["tokens"] for a in gate + attn] + [a["rows"] for a in norm]
    max_k = max([a["k"] for a in mm] + [a["dim"] for a in gate] + [1])
    max_n = max([a["n"] for a in mm] + [a["experts"] for a in gate] + [1])
    dims = [a["dim"] for a in norm + gate] + [a["heads"] * a["head_dim"] for a in attn]
    # Bank: the largest A operand, forwarded output, attention qkv or elementwise tensor.
    elems = ([a["m"] * max(a["k"], a["n"]) for a in mm] + [a["tokens"] * a["dim"] for a in gate]
             + [a["tokens"] * 3 * a["heads"] * a["head_dim"] for a in attn]
             + [a["rows"] * a["dim"] for a in norm] + [a["count"] for a in add + rq])
    acc_elems = max([a["tokens"] * a["dim"] for a in gate] + [0])
    acc_w = max([instr_acc_bits(i, prog.wbits, prog.abits) for i in prog.instrs] + [1])
    return Uarch(
        P=P, Q=Q, beat_bytes=beat_bytes, elem_bytes=eb, weight_ports=weight_ports, wbits=prog.wbits,
        abits=prog.abits, acc_w=acc_w, max_tokens=max(tokens + [1]), max_k=max_k, max_n=max_n,
        max_dim=max(dims + [1]), max_dh=max([a["head_dim"] for a in attn] + [0]),
        max_experts=max([a["experts"] for a in gate] + [0]),
        bank_beats=-(-max(elems + [1]) // epb), slot_row_beats=-(-max_k // epb),
        param_words=max([2 * Q] + [2 * d for d in dims]), acc_words=-(-acc_elems // epb),
        instrs=len(prog.instrs) + 1, gelu=any(i.op == Op.MATMUL and i.flags & Flag.GELU for i in prog.instrs),
    )


# ---------------------------------------------------------------- hardware rules

def check_program(prog: Program, u: Uarch) -> None:
    """Raise HardwareRuleError for the first instruction the compute unit cannot run."""
    last_gate = None
    for pc, ins in enumerate(prog.instrs):
        problem = _rule_violation(ins, u, last_gate)
        if problem:
            raise HardwareRuleError(f"instruction {pc} ({ins.op.name} {ins.layer}): {problem}")
        if ins.op == Op.GATE:
            last_gate = ins


def _multiple(value: int, of: int, what: str) -> str | None:
    return None if value % of == 0 else f"{what}={value} is not a multiple of {of}"


def _rule_violation(ins: Instr, u: Uarch, last_gate: Instr | None) -> str | None:
    a, eb, epb, B = ins.args, u.elem_bytes, u.epb, u.beat_bytes
    checks: list[str | None] = []
    if ins.op == Op.MATMUL:
        checks += [_multiple(a["k"], epb, "k"), _multiple(a["n"], epb, "n"),
                   _multiple(a["a_stride"] * eb, B, "a_stride bytes")]
        checks += [_multiple(a[f], B, f) for f in ("a_addr", "w_addr", "out_addr")]
        if not ins.flags & Flag.SCATTER:
            checks.append(_multiple(a["out_stride"] * eb, B, "out_stride bytes"))
        if ins.flags & Flag.DYNM:
            checks.append(_dynm_from_gate(a["count_addr"], last_gate))
    elif ins.op == Op.GATE:
        checks += [_multiple(a["dim"], epb, "dim"), _multiple(a["x_addr"], B, "x_addr")]
        if a["experts"] > u.Q:
            checks.append(f"experts={a['experts']} > Q={u.Q} (the router takes one tile)")
    elif ins.op == Op.ATTN:
        d = a["heads"] * a["head_dim"]
        checks += [_multiple(a["head_dim"], epb, "head_dim"), _multiple(d * eb, B, "row bytes"),
                   _multiple(a["qkv_addr"], B, "qkv_addr"), _multiple(a["out_addr"], B, "out_addr")]
    elif ins.op == Op.LAYERNORM:
        checks += [_multiple(a["dim"], epb, "dim")] + [_multiple(a[f], B, f) for f in ("x_addr", "out_addr")]
    elif ins.op in (Op.ADD, Op.REQUANT32):
        names = ("a_addr", "b_addr", "out_addr") if ins.op == Op.ADD else ("out_addr",)
        checks += [_multiple(a["count"], epb, "count")] + [_multiple(a[f], B, f) for f in names]
    return next((c for c in checks if c), None)


def _dynm_from_gate(count_addr: int, gate: Instr | None) -> str | None:
    if gate is None:
        return "a DYNM count with no GATE before it (the count must be on chip)"
    base, experts = gate.args["counts_addr"], gate.args["experts"]
    off = count_addr - base
    if off % 4 or not 0 <= off < 4 * experts:
        return "its DYNM count is not one of the last GATE's counts"
    return None
