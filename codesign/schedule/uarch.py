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
    # moe_acc as the HLS kernel declares it: acc_tokens rows of acc_row_words words (0: not on chip)
    acc_tokens: int = 0  # the widest GATE's tokens
    acc_row_words: int = 0  # the widest GATE's dim / EPB

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
    def packed_scores(self) -> bool:
        """Attention scores pack too: their W operand is a query (abits wide)."""
        return packable(self.abits, self.abits)

    @property
    def ev_cols(self) -> int:
        """Output columns of one e.v pass: Q/2, or fewer when the bank's G copies cannot deliver
        Q/2 elements of a V row per cycle (docs/UARCH.md: needs Q/2 <= G*EPB)."""
        return min(self.Q // 2, self.G * self.epb)

    @property
    def max_tiles(self) -> int:
        return -(-self.max_n // self.Q)

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
                 EXP_COPIES=-(-self.P // 2), ROUTER_EXP_COPIES=max(1, -(-self.max_experts // 2)),
                 LUT_COPIES=max(1, self.epb // 2), packed_scores=int(self.packed_scores), EV_COLS=self.ev_cols,
                 max_tiles=self.max_tiles)
        return d


def _args(prog: Program, op: Op) -> list[dict]:
    return [i.args for i in prog.instrs if i.op == op]


def derive_uarch(prog: Program, P: int, Q: int, beat_bytes: int, weight_ports: int,
                 acc_on_chip: bool = True) -> Uarch:
    """The microarchitecture parameters of `prog` on a P x Q array (sizes from the program).

    acc_on_chip False: no moe_acc (a tiling without room for it); the MoE accumulator stays in DDR."""
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
    acc_tokens = max([a["tokens"] for a in gate] + [0]) if acc_on_chip else 0
    acc_row_words = max([-(-a["dim"] // epb) for a in gate] + [0]) if acc_on_chip else 0
    acc_w = max([instr_acc_bits(i, prog.wbits, prog.abits) for i in prog.instrs] + [1])
    return Uarch(
        P=P, Q=Q, beat_bytes=beat_bytes, elem_bytes=eb, weight_ports=weight_ports, wbits=prog.wbits,
        abits=prog.abits, acc_w=acc_w, max_tokens=max(tokens + [1]), max_k=max_k, max_n=max_n,
        max_dim=max(dims + [1]), max_dh=max([a["head_dim"] for a in attn] + [0]),
        max_experts=max([a["experts"] for a in gate] + [0]),
        bank_beats=-(-max(elems + [1]) // epb), slot_row_beats=-(-max_k // epb),
        param_words=max([2 * Q] + [2 * d for d in dims]), acc_words=acc_tokens * acc_row_words,
        instrs=len(prog.instrs) + 1, gelu=any(i.op == Op.MATMUL and i.flags & Flag.GELU for i in prog.instrs),
        acc_tokens=acc_tokens, acc_row_words=acc_row_words,
    )


# ---------------------------------------------------------------- hardware rules

def check_program(prog: Program, u: Uarch) -> None:
    """Raise HardwareRuleError for the array shape or the first instruction the compute unit cannot run."""
    shape = _array_violation(u)
    if shape:
        raise HardwareRuleError(f"the {u.P}x{u.Q} MAC array: {shape}")
    gates = _gate_spans(prog)
    last_gate = None
    for pc, ins in enumerate(prog.instrs):
        problem = (_rule_violation(ins, u, last_gate) or _width_violation(ins, u)
                   or _gate_state_violation(pc, ins, prog, u, gates))
        if problem:
            raise HardwareRuleError(f"instruction {pc} ({ins.op.name} {ins.layer}): {problem}")
        if ins.op == Op.GATE:
            last_gate = ins


def _array_violation(u: Uarch) -> str | None:
    if u.P < 1 or u.Q < 2 or u.Q % (2 * u.epb):
        return (f"Q={u.Q} must be a multiple of 2*EPB={2 * u.epb} (a column pair holds columns u and u+Q/2, "
                f"and a drained beat lies in one half)")
    return None


def _width_violation(ins: Instr, u: Uarch) -> str | None:
    need = instr_acc_bits(ins, u.wbits, u.abits)
    return f"needs {need}-bit accumulators, the array has {u.acc_w}" if need > u.acc_w else None


def _multiple(value: int, of: int, what: str) -> str | None:
    return None if value % of == 0 else f"{what}={value} is not a multiple of {of}"


def _rule_violation(ins: Instr, u: Uarch, last_gate: Instr | None) -> str | None:
    a, eb, epb, B = ins.args, u.elem_bytes, u.epb, u.beat_bytes
    checks: list[str | None] = []
    if ins.op == Op.MATMUL:
        checks += [_multiple(a["k"], epb, "k"), _multiple(a["n"], epb, "n"),
                   _multiple(a["a_stride"] * eb, B, "a_stride bytes")]
        checks += [_multiple(a[f], B, f) for f in ("a_addr", "w_addr", "out_addr", "bias_addr", "mult_addr")]
        if ins.flags & Flag.GELU:
            checks.append(_multiple(a["lut_addr"], B, "lut_addr"))
        out_item = 4 if ins.flags & Flag.SCATTER else eb
        checks.append(_multiple(a["out_stride"] * out_item, B, "out_stride bytes"))
        if ins.flags & Flag.DYNM:
            checks.append(_dynm_from_gate(a["count_addr"], last_gate))
        if ins.flags & (Flag.GATHER | Flag.SCATTER):
            checks.append(_lists_from_gate(ins, last_gate))
        if ins.flags & Flag.SCATTER and u.acc_tokens:
            checks.append(_scatter_into_acc(a, last_gate))
    elif ins.op == Op.GATE:
        checks += [_multiple(a["dim"], epb, "dim")]
        checks += [_multiple(a[f], B, f) for f in ("x_addr", "wg_addr", "bg_addr", "counts_addr", "idx_addr",
                                                   "score_addr")]
        checks.append(_multiple(4 * a["list_stride"], B, "list_stride bytes"))
        if a["num_tasks"] > 1:
            checks.append(_multiple(4 * a["experts"], B, "router bias bytes per task"))
        if a["experts"] > min(u.Q, epb):
            checks.append(f"experts={a['experts']} > min(Q, EPB)={min(u.Q, epb)} (the router reads one drained beat)")
    elif ins.op == Op.ATTN:
        d = a["heads"] * a["head_dim"]
        checks += [_multiple(a["head_dim"], epb, "head_dim"), _multiple(d * eb, B, "row bytes"),
                   _multiple(a["qkv_addr"], B, "qkv_addr"), _multiple(a["out_addr"], B, "out_addr")]
    elif ins.op == Op.LAYERNORM:
        checks += [_multiple(a["dim"], epb, "dim")]
        checks += [_multiple(a[f], B, f) for f in ("x_addr", "out_addr", "gamma_addr", "beta_addr")]
    elif ins.op in (Op.ADD, Op.REQUANT32):
        names = ("a_addr", "b_addr", "out_addr") if ins.op == Op.ADD else ("src_addr", "out_addr")
        checks += [_multiple(a["count"], epb, "count")] + [_multiple(a[f], B, f) for f in names]
        slot_bytes = u.GW * u.epb * u.slot_row_beats * B
        if ins.op == Op.ADD and ins.flags & Flag.B_WGT and a["count"] * eb > slot_bytes:
            checks.append(f"its wgt operand ({a['count'] * eb} bytes) does not fit a weight slot ({slot_bytes})")
    return next((c for c in checks if c), None)


def _dynm_from_gate(count_addr: int, gate: Instr | None) -> str | None:
    if gate is None:
        return "a DYNM count with no GATE before it (the count must be on chip)"
    base, experts = gate.args["counts_addr"], gate.args["experts"]
    off = count_addr - base
    if off % 4 or not 0 <= off < 4 * experts:
        return "its DYNM count is not one of the last GATE's counts"
    return None


def list_expert(ins: Instr, gate: Instr) -> int | None:
    """The expert whose on-chip token list a GATHER / SCATTER MATMUL reads (idx_addr at its start)."""
    g, a = gate.args, ins.args
    off = a["idx_addr"] - g["idx_addr"]
    row = 4 * g["list_stride"]
    if off < 0 or off % row or off // row >= g["experts"]:
        return None
    return off // row


def _lists_from_gate(ins: Instr, gate: Instr | None) -> str | None:
    """GATHER / SCATTER rows come from the last GATE's lists, which stay on chip."""
    if gate is None:
        return "a GATHER / SCATTER with no GATE before it (the token lists must be on chip)"
    g, a = gate.args, ins.args
    e = list_expert(ins, gate)
    if e is None:
        return "its idx_addr is not the start of one of the last GATE's token lists"
    if a["m"] > g["list_stride"]:
        return f"m={a['m']} exceeds the last GATE's list_stride={g['list_stride']}"
    if ins.flags & Flag.SCATTER and a["score_addr"] != g["score_addr"] + 4 * e * g["list_stride"]:
        return f"its score_addr is not expert {e}'s score list of the last GATE"
    if ins.flags & Flag.DYNM and a["count_addr"] != g["counts_addr"] + 4 * e:
        return f"its DYNM count is not expert {e}'s, whose token list it reads"
    return None


def _scatter_into_acc(a: dict, gate: Instr | None) -> str | None:
    """With moe_acc on chip, a SCATTER adds whole rows into the last GATE's accumulator."""
    g = gate.args if gate is not None else None
    if g is None or a["out_addr"] != g["acc_addr"] or a["n"] != g["dim"] or a["out_stride"] != g["dim"]:
        return "a SCATTER must add whole rows into the last GATE's accumulator (it is on chip)"
    return None


@dataclass(frozen=True)
class _GateSpan:
    """What a GATE leaves on chip and until when: its counts and lists until its last MATMUL that
    reads them, its accumulator until the REQUANT32 that reads it whole (or the next GATE)."""
    pc: int
    lists: tuple[tuple[int, int], ...]  # (addr, bytes) of counts, token lists, score lists
    lists_until: int
    acc: tuple[int, int]
    acc_until: int


def _gate_spans(prog: Program) -> list[_GateSpan]:
    spans = []
    gate_pcs = [pc for pc, i in enumerate(prog.instrs) if i.op == Op.GATE]
    for n, pc in enumerate(gate_pcs):
        end = gate_pcs[n + 1] if n + 1 < len(gate_pcs) else len(prog.instrs)
        g = prog.instrs[pc].args
        users = [q for q in range(pc + 1, end) if prog.instrs[q].op == Op.MATMUL
                 and prog.instrs[q].flags & (Flag.DYNM | Flag.GATHER | Flag.SCATTER)]
        acc = (g["acc_addr"], 4 * g["tokens"] * g["dim"])
        whole = [q for q in range(pc + 1, end) if prog.instrs[q].op == Op.REQUANT32
                 and prog.instrs[q].args["src_addr"] == acc[0] and 4 * prog.instrs[q].args["count"] == acc[1]]
        lists = ((g["counts_addr"], 4 * g["experts"]), (g["idx_addr"], 4 * g["experts"] * g["list_stride"]),
                 (g["score_addr"], 4 * g["experts"] * g["list_stride"]))
        spans.append(_GateSpan(pc, lists, max(users, default=pc), acc, whole[0] if whole else end))
    return spans


def instr_writes(ins: Instr, eb: int) -> list[tuple[int, int]]:
    """(addr, bytes) spans of act an instruction writes (upper bounds: DYNM rows count as m)."""
    a = ins.args
    if ins.op == Op.MATMUL:
        if ins.flags & Flag.SCATTER:
            return []  # into the GATE's accumulator, checked by _scatter_into_acc
        return [(a["out_addr"], ((a["m"] - 1) * a["out_stride"] + a["n"]) * eb)] if a["m"] else []
    if ins.op == Op.ATTN:
        return [(a["out_addr"], a["tokens"] * a["heads"] * a["head_dim"] * eb)]
    if ins.op == Op.LAYERNORM:
        return [(a["out_addr"], a["rows"] * a["dim"] * eb)]
    if ins.op in (Op.ADD, Op.REQUANT32):
        return [(a["out_addr"], a["count"] * eb)]
    return []


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def _gate_state_violation(pc: int, ins: Instr, prog: Program, u: Uarch, spans: list[_GateSpan]) -> str | None:
    """No instruction writes over what a GATE keeps on chip while it is still to be read there."""
    writes = instr_writes(ins, u.elem_bytes)
    for span in spans:
        if span.pc < pc <= span.lists_until and any(_overlap(w, l) for w in writes for l in span.lists):
            return f"it writes over the counts or token lists of the GATE at {span.pc}, which later MATMULs read on chip"
        if u.acc_tokens and span.pc < pc < span.acc_until and any(_overlap(w, span.acc) for w in writes):
            return f"it writes into the accumulator of the GATE at {span.pc}, which is on chip until its REQUANT32"
    return None
