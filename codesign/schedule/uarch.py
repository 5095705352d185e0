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


def instr_acc_bits(ins: Instr, wbits: int, abits: int) -> int:
    """Accumulator bits the MAC array needs for one instruction (0: it does not use the array).

    The compiler knows each instruction's need from the layer formats (Instr.acc_bits); for a
    decoded program, the need with the program's widest weights `wbits` and activations `abits`."""
    a = ins.args
    if ins.op not in (Op.MATMUL, Op.GATE, Op.ATTN):
        return 0
    if ins.acc_bits:
        return ins.acc_bits
    if ins.op == Op.MATMUL:
        return A.matmul_acc_bits(wbits, abits, a["k"])
    if ins.op == Op.GATE:
        return A.matmul_acc_bits(wbits, abits, a["dim"])
    return A.attention_acc_bits(abits, a["head_dim"], a["tokens"])


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
    bank_beats: int  # one abank copy: the tiling's bank capacity (at most the largest tensor)
    slot_row_beats: int  # beats of one weight row in a slot (max_k / EPB)
    acc_words: int  # moe_acc words (EPB int32 each), 0 without MoE
    instrs: int  # program words / 16, END included
    gelu: bool
    dsp_packing: bool = True  # the DSP is a DSP48E2 (27x18): two int8 products fit one multiply
    # moe_acc as the kernels declare it: acc_tokens rows of acc_row_words words (0: not on chip)
    acc_tokens: int = 0  # the widest GATE's tokens
    acc_row_words: int = 0  # the widest GATE's dim / EPB
    max_top_k: int = 0  # the largest GATE top_k (the router's top-k list); 0: max_experts

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
        return self.dsp_packing and packable(self.wbits, self.abits)

    @property
    def packed_scores(self) -> bool:
        """Attention scores pack too: their W operand is a query (abits wide)."""
        return packable(self.abits, self.abits)

    @property
    def lut_size(self) -> int:
        """Entries of a GELU table buffer: 2**abits of the widest activation, at least one beat."""
        return max(1 << self.abits, self.epb)

    @property
    def ev_cols(self) -> int:
        """Output columns of one e.v pass: Q/2, or fewer when the bank's G copies cannot deliver
        Q/2 elements of a V row per cycle (docs/UARCH.md: needs Q/2 <= G*EPB)."""
        return min(self.Q // 2, self.G * self.epb)

    def beats(self, elems: int) -> int:
        return -(-elems * self.elem_bytes // self.beat_bytes)

    def fits_bank(self, rows: int, row_elems: int) -> bool:
        """Rows of row_elems, packed (row r at beat r * beats(row_elems)), fit one bank."""
        return rows * self.beats(row_elems) <= self.bank_beats

    def chunk_rows(self, row_elems: int) -> int:
        """Rows of a streamed A operand per bank load: whole row blocks of P (0: not even one fits)."""
        return self.bank_beats // max(1, self.beats(row_elems)) // self.P * self.P

    def attn_plan(self, tokens: int, heads: int, head_dim: int) -> tuple[str, int]:
        """(mode, keys per tile) of an ATTN (docs/UARCH.md "ATTN"): "whole" when its qkv fits a bank,
        "head" when one head's q, k and v rows do (loaded per head), else "keys": per query block its
        Qb queries and K, then V, in tiles of that many keys (a multiple of P)."""
        if self.fits_bank(tokens, 3 * heads * head_dim):
            return "whole", tokens
        if self.fits_bank(tokens, 3 * head_dim):
            return "head", tokens
        dhb, qb = self.beats(head_dim), min(self.Q, tokens)
        return "keys", max(0, (self.bank_beats - qb * dhb) // dhb // self.P * self.P)

    @property
    def score_bits(self) -> int:
        """Bits of an attention score (an sbuf word holds Q of them: 32 each when they fit, else 64)."""
        return A.signed_sum_bits(2 * (self.abits - 1), self.max_dh) if self.max_dh else 0

    @property
    def score_word_bits(self) -> int:
        return 32 if self.score_bits <= 32 else 64

    @property
    def acc_old_rows(self) -> int:
        """Rows of acc_old (0: moe_acc on chip, or no MoE): with the accumulator in DDR a SCATTER
        reads the old int32 rows of at most this many list entries per tile (whole row blocks, at
        least 256 rows or 8 blocks); more entries run in chunks of it."""
        if self.acc_tokens or not self.max_experts:
            return 0
        rows = self.P * -(-self.max_tokens // self.P)
        return min(rows, self.P * -(-max(256, 8 * self.P) // self.P))

    @property
    def slot_beats(self) -> int:
        """Beats of one weight slot (GW groups of EPB rows of max_k)."""
        return self.GW * self.epb * self.slot_row_beats

    def add_streams_b(self, count: int) -> bool:
        """An ADD's wgt operand larger than a slot streams over the first weight master in its loop."""
        return self.beats(count) > self.slot_beats

    @property
    def param_words(self) -> int:
        """int32 parameters of an HLS weight slot: bias + mult, or LayerNorm's gamma + beta (the
        RTL keeps those in its param ring, docs/UARCH.md)."""
        return max(2 * self.Q, 2 * self.max_dim)

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
                 max_tiles=self.max_tiles, param_words=self.param_words, acc_old_rows=self.acc_old_rows,
                 score_word_bits=self.score_word_bits)
        return d


def _args(prog: Program, op: Op) -> list[dict]:
    return [i.args for i in prog.instrs if i.op == op]


def bank_need_beats(prog: Program, beat_bytes: int) -> int:
    """Beats of one bank that holds the program's largest tensor whole (no streaming at all)."""
    epb = beat_bytes // prog.elem_bytes
    mm, gate, attn = _args(prog, Op.MATMUL), _args(prog, Op.GATE), _args(prog, Op.ATTN)
    norm, add, rq = _args(prog, Op.LAYERNORM), _args(prog, Op.ADD), _args(prog, Op.REQUANT32)
    # the largest A operand, forwarded output, attention qkv or elementwise tensor
    elems = ([a["m"] * max(a["k"], a["n"]) for a in mm] + [a["tokens"] * a["dim"] for a in gate]
             + [a["tokens"] * 3 * a["heads"] * a["head_dim"] for a in attn]
             + [a["rows"] * a["dim"] for a in norm] + [a["count"] for a in add + rq])
    return -(-max(elems + [1]) // epb)


def bank_min_beats(prog: Program, P: int, Q: int, beat_bytes: int) -> int:
    """The smallest bank the program runs with: P rows of the widest streamed A operand, and an
    attention's Qb queries plus one tile of P keys (docs/UARCH.md hardware rules)."""
    epb = beat_bytes // prog.elem_bytes
    ks = [a["k"] for a in _args(prog, Op.MATMUL)] + [a["dim"] for a in _args(prog, Op.GATE)]
    need = [P * -(-k // epb) for k in ks]
    need += [(min(Q, a["tokens"]) + P) * -(-a["head_dim"] // epb) for a in _args(prog, Op.ATTN)]
    return max(need + [1])


def derive_uarch(prog: Program, P: int, Q: int, beat_bytes: int, weight_ports: int,
                 dsp_packing: bool = True, acc_on_chip: bool = True, bank_beats: int | None = None) -> Uarch:
    """The microarchitecture parameters of `prog` on a P x Q array (sizes from the program).

    dsp_packing False: the DSP cannot hold two int8 products (7-series DSP48E1); acc_on_chip False:
    no moe_acc (a tiling without room for it), the MoE accumulator stays in DDR; bank_beats: the
    capacity of one abank copy (default: the largest tensor; a smaller bank streams what exceeds it)."""
    eb = prog.elem_bytes
    epb = beat_bytes // eb
    mm, gate, attn, norm = _args(prog, Op.MATMUL), _args(prog, Op.GATE), _args(prog, Op.ATTN), _args(prog, Op.LAYERNORM)
    tokens = [a["m"] for a in mm] + [a["tokens"] for a in gate + attn] + [a["rows"] for a in norm]
    max_k = max([a["k"] for a in mm] + [a["dim"] for a in gate] + [1])
    max_n = max([a["n"] for a in mm] + [a["experts"] for a in gate] + [1])
    dims = [a["dim"] for a in norm + gate] + [a["heads"] * a["head_dim"] for a in attn]
    need = bank_need_beats(prog, beat_bytes)
    acc_tokens = max([a["tokens"] for a in gate] + [0]) if acc_on_chip else 0
    acc_row_words = max([-(-a["dim"] // epb) for a in gate] + [0]) if acc_on_chip else 0
    acc_w = max([instr_acc_bits(i, prog.wbits, prog.abits) for i in prog.instrs] + [1])
    return Uarch(
        P=P, Q=Q, beat_bytes=beat_bytes, elem_bytes=eb, weight_ports=weight_ports, wbits=prog.wbits,
        abits=prog.abits, acc_w=acc_w, max_tokens=max(tokens + [1]), max_k=max_k, max_n=max_n,
        max_dim=max(dims + [1]), max_dh=max([a["head_dim"] for a in attn] + [0]),
        max_experts=max([a["experts"] for a in gate] + [0]),
        bank_beats=need if bank_beats is None else max(1, min(need, bank_beats)), slot_row_beats=-(-max_k // epb),
        acc_words=acc_tokens * acc_row_words,
        instrs=len(prog.instrs) + 1, gelu=any(i.op == Op.MATMUL and i.flags & Flag.GELU for i in prog.instrs),
        dsp_packing=dsp_packing, acc_tokens=acc_tokens, acc_row_words=acc_row_words,
        max_top_k=max([min(a["top_k"], a["experts"]) for a in gate] + [0]),
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
        if ins.flags & Flag.SCATTER and ins.flags & Flag.GATHER and u.acc_old_rows:
            checks.append("GATHER and SCATTER in one MATMUL with the accumulator in DDR (its chunks of acc_old rows "
                          "would split the gathered blocks)")
        gathered = ins.flags & Flag.GATHER and last_gate is not None
        checks.append(_stream_violation(u, last_gate.args["tokens"] if gathered else a["m"], a["k"], "k"))
    elif ins.op == Op.GATE:
        checks += [_multiple(a["dim"], epb, "dim")]
        checks += [_multiple(a[f], B, f) for f in ("x_addr", "wg_addr", "bg_addr", "counts_addr", "idx_addr",
                                                   "score_addr")]
        checks.append(_multiple(4 * a["list_stride"], B, "list_stride bytes"))
        if a["num_tasks"] > 1:
            checks.append(_multiple(4 * a["experts"], B, "router bias bytes per task"))
        checks.append(_stream_violation(u, a["tokens"], a["dim"], "dim"))
        if a["experts"] > min(u.Q, epb):
            checks.append(f"experts={a['experts']} > min(Q, EPB)={min(u.Q, epb)} (the router reads one drained beat)")
    elif ins.op == Op.ATTN:
        d = a["heads"] * a["head_dim"]
        checks += [_multiple(a["head_dim"], epb, "head_dim"), _multiple(d * eb, B, "row bytes"),
                   _multiple(a["qkv_addr"], B, "qkv_addr"), _multiple(a["out_addr"], B, "out_addr")]
        mode, keys = u.attn_plan(a["tokens"], a["heads"], a["head_dim"])
        if mode == "keys" and keys < u.P:
            checks.append(f"one head's q, k, v exceed a bank ({u.bank_beats} beats), which does not hold "
                          f"{min(u.Q, a['tokens'])} queries and a tile of {u.P} keys")
    elif ins.op == Op.LAYERNORM:
        checks += [_multiple(a["dim"], epb, "dim")]
        checks += [_multiple(a[f], B, f) for f in ("x_addr", "out_addr", "gamma_addr", "beta_addr")]
    elif ins.op in (Op.ADD, Op.REQUANT32):
        names = ("a_addr", "b_addr", "out_addr") if ins.op == Op.ADD else ("src_addr", "out_addr")
        checks += [_multiple(a["count"], epb, "count")] + [_multiple(a[f], B, f) for f in names]
        slot_bytes = u.GW * u.epb * u.slot_row_beats * B
        if ins.op == Op.ADD and ins.flags & Flag.B_WGT and a["count"] * eb > slot_bytes and u.weight_ports < 2:
            checks.append(f"its wgt operand ({a['count'] * eb} bytes) does not fit a weight slot ({slot_bytes}) "
                          f"and one weight master cannot stream it beside the act reads")
    return next((c for c in checks if c), None)


def _stream_violation(u: Uarch, rows: int, k: int, what: str) -> str | None:
    """An A operand larger than a bank streams in chunks of whole row blocks: one must fit."""
    if u.fits_bank(rows, k) or u.chunk_rows(k) >= u.P:
        return None
    return (f"its A operand ({rows} rows of {what}={k}) exceeds a bank ({u.bank_beats} beats), which does not "
            f"hold one block of P={u.P} rows")


def _dynm_from_gate(count_addr: int, gate: Instr | None) -> str | None:
    if gate is None:
        return "a DYNM count with no GATE before it (the count must be on chip)"
    base, experts = gate.args["counts_addr"], gate.args["experts"]
    off = count_addr - base
    if off % 4 or not 0 <= off < 4 * experts:
        return "its DYNM count is not one of the last GATE's counts"
    return None


# ---------------------------------------------------------------- memories (docs/UARCH.md table)

# Simple dual-port aspect ratios (width bits, depth); 9/18/36/72-bit modes include parity bits,
# which hold data here. A BRAM36 splits into two BRAM18, counted as 0.5 each.
BRAM36_SHAPES = ((72, 512), (36, 1024), (18, 2048), (9, 4096), (4, 8192), (2, 16384), (1, 32768))
BRAM18_SHAPES = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))
URAM_SHAPE = (72, 4096)  # URAM288: one fixed aspect ratio
LUTRAM_DEPTH = 64  # a LUT6 as a 64x1 RAM/ROM
# Shallow or tiny memories go to distributed RAM, as Vivado does: a BRAM would be mostly empty.
LUTRAM_MAX_DEPTH = 64
LUTRAM_MAX_BITS = 8192
# A memory that needs at least this many BRAM36 goes to URAM while URAM is left.
URAM_MIN_BRAM36 = 4


@dataclass(frozen=True)
class Memory:
    name: str
    purpose: str
    width: int  # bits read per port per cycle
    depth: int
    copies: int = 1
    binding: str = ""  # "bram36", "uram" or "lutram" (bind_memories)
    count: float = 0.0  # BRAM36 (halves), URAM or LUTs, all copies
    async_read: bool = False  # read in the cycle it is addressed: only LUTRAM can

    @property
    def bits(self) -> int:
        return self.width * self.depth * self.copies


def memories(u: Uarch) -> list[Memory]:
    """Every on-chip memory the core declares, with the shape each copy has."""
    beat, eb, lanes32 = 8 * u.beat_bytes, 8 * u.elem_bytes, u.beat_bytes // 4
    mems = [
        Memory("prog", "the program, one instruction (16 words) a row", 512, u.instrs),
        Memory("abank", "A operand / forwarded tensor: 2 banks x G copies", beat, u.bank_beats, 2 * u.G),
        # a group's two slots in one memory (slot 1 behind slot 0): the fill writes one while the feed
        # reads the other, one port each, and the deeper memory packs better (URAM: half as many)
        Memory("wslot", "weight tile rows: GW group memories of 2 slots", beat, 2 * u.epb * u.slot_row_beats, u.GW),
        Memory("params", "bias + mult of 2 slots", 32, 2 * 2 * u.Q),
        Memory("pring", "LayerNorm gamma + beta, 2 entries", 32, 2 * 2 * u.max_dim),
        Memory("rsqrt_rom", "LayerNorm RSQRT table", A.RSQRT_FRAC + 1, 1 << A.RSQRT_MBITS),
        Memory("recip_rom", "softmax RECIP table", A.RECIP_FRAC - A.RECIP_MBITS + 2, 1 << (A.RECIP_MBITS - 1)),
        # the RTL sequencer's (cs_seq) read combinationally, so a LUTRAM copy per read port: the ids
        # by the P feed rows, the DDR gather and the drain's two; the scores by the drain
        Memory("seq_lists", "a GATHER / SCATTER's token ids and scores: B/4 16-bit entries a row, a copy a "
               "read port", 16 * lanes32, -(-max(2, u.max_tokens) // lanes32), u.P + 4, async_read=True),
    ]
    if u.gelu:
        mems.append(Memory("lut", "GELU table of 2 MATMULs, EPB/2 copies", eb, 2 * u.lut_size, max(1, u.epb // 2)))
    if u.max_dh:
        mems += [Memory("qbuf", "attention queries: 2 blocks x GW groups", beat, u.epb * (u.max_dh // u.epb), 2 * u.GW),
                 Memory("sbuf", "scores of one query block: a word of Q scores (int32 when they fit) per key",
                        u.score_word_bits * u.Q, u.max_tokens),
                 Memory("exp_rom", "EXP table for the e.v feed, P/2 copies", A.EXP_FRAC + 1, A.EXP_LUT_SIZE,
                        max(1, u.P // 2))]
    if u.max_experts:
        if u.acc_old_rows:
            mems.append(Memory("acc_old", "accumulator in DDR: a SCATTER chunk's old int32 rows of one tile", beat,
                               u.acc_old_rows * (u.Q // (u.beat_bytes // 4))))
        if u.acc_words:
            mems.append(Memory("acc_written", "moe_acc's written bits, a token's row a word", u.acc_row_words,
                               u.acc_tokens))
        mems += [Memory("moe_acc", "MoE accumulator: EPB int32 a word", 32 * u.epb, u.acc_words),
                 Memory("lists", "per expert: token ids and scores (int32), B/4 banks each for the write-out", 32,
                        -(-u.max_tokens // lanes32), 2 * u.max_experts * lanes32),
                 # the RTL router's one table (one expert a cycle); the HLS kernel's has experts/2
                 Memory("router_exp", "EXP table for the router", A.EXP_FRAC + 1, A.EXP_LUT_SIZE, 1)]
    return mems


def bram36_count(width: int, depth: int) -> float:
    """BRAM36 primitives of one memory, in halves (a memory may use a lone BRAM18)."""
    whole = min(math.ceil(width / w) * math.ceil(depth / d) for w, d in BRAM36_SHAPES)
    halves = min(math.ceil(width / w) * math.ceil(depth / d) for w, d in BRAM18_SHAPES)
    return min(float(whole), halves / 2)


def uram_count(width: int, depth: int) -> int:
    return math.ceil(width / URAM_SHAPE[0]) * math.ceil(depth / URAM_SHAPE[1])


def lutram_count(width: int, depth: int) -> int:
    return width * math.ceil(depth / LUTRAM_DEPTH)


def bind_memories(mems: list[Memory], uram_budget: int) -> list[Memory]:
    """Small memories to LUTs, the biggest to URAM while it lasts, the rest to BRAM36."""
    out, left = {}, uram_budget
    for m in sorted(mems, key=lambda m: -bram36_count(m.width, m.depth) * m.copies):
        brams = bram36_count(m.width, m.depth) * m.copies
        urams = uram_count(m.width, m.depth) * m.copies
        if m.async_read or m.depth <= LUTRAM_MAX_DEPTH or m.width * m.depth <= LUTRAM_MAX_BITS:
            out[m.name] = _bound(m, "lutram", lutram_count(m.width, m.depth) * m.copies)
        elif brams >= URAM_MIN_BRAM36 and urams <= left and urams < brams:
            left -= urams
            out[m.name] = _bound(m, "uram", urams)
        else:
            out[m.name] = _bound(m, "bram36", brams)
    return [out[m.name] for m in mems]


# Each binding as the ram_style attribute that Vivado and yosys both read.
RAM_STYLES = {"uram": "ultra", "bram36": "block", "lutram": "distributed"}


def memory_bindings(u: Uarch, uram_budget: int) -> dict[str, str]:
    """Memory name -> what resource_use binds it to ("uram", "bram36", "lutram"): the one binding
    that the HLS pragmas (codesign.emit.hls) and the RTL's ram_style (ram_styles) both take."""
    return {m.name: m.binding for m in bind_memories(memories(u), uram_budget)}


def ram_styles(u: Uarch, uram_budget: int) -> dict[str, str]:
    """Memory name -> the ram_style the RTL declares it with."""
    return {name: RAM_STYLES[b] for name, b in memory_bindings(u, uram_budget).items()}


def _bound(m: Memory, binding: str, count: float) -> Memory:
    return Memory(m.name, m.purpose, m.width, m.depth, m.copies, binding, count, m.async_read)


# ---------------------------------------------------------------- logic

# Per-unit fabric coefficients: what each instantiated piece costs. They are a model of the
# generated RTL, measured by yosys 0.23 synth_xilinx -family xcup of each unit on its own
# (codesign synth --mode per-unit, docs/SYNTH.md) at edge-moe-tiny's Uarch (EPB 16, int8, ACC_W 31,
# 4 weight masters) at 1x32 and 2x64, and refitted where a unit changed to 1x32, 2x64, 4x64 and
# 16x64 (the whole core, every unit: docs/SYNTH.md, "After cs_rowsel"): a part that scales with a
# parameter costs what the unit grew by per unit of it, the rest is the unit's fixed part. They
# model the RTL, not Vivado's mapping.
# Drain lane: (acc + bias) x mult, a 33 x 17 product in two 27x18 multipliers (cs_mul), its
# rshift_round (306 LUT) and saturate (57), and its stage registers (acc, mult, acc + bias, product,
# result: 138 FF at ACC_W 31).
LANE_DSPS = 2
LUTS_PER_LANE = 396
FF_PER_LANE = 138
# The drain's own: the write / acc_old / bank address products, the three FIFOs, the block walk
# (its lanes' column select is `column_select` below). cs_drain after cs_rowsel took its row select (yosys 0.23, edge-moe-tiny's
# Uarch): 41 DSP48E2 / 8,475 LUT (178 of them LUTRAM) / 3,013 FF at 2x64, 4x64 and 16x64 alike,
# 8,326 LUT at 1x32: P does not reach it any more.
DRAIN_DSPS = 9
DRAIN_LUTS = 1643
DRAIN_FFS = 805
# The shadow's row select (cs_rowsel, one in cs_core for the drain, cs_attn and cs_router): a P-to-1
# choice of Q x ACC_W bits, LUTs a bit as yosys 0.23 maps cs_rowsel (64-bit rows, its rows past P
# repeating the upper ones), by rows; between two measured sizes the larger's. A tree of 4:1 muxes
# (mux4_luts) would be 1, 3, 5, 8, 9, 10, 11 at 4, 8, 16, 17, 22, 28, 32 rows: past 16, yosys takes
# 1.2-1.8 times that. In the core at 16x64 (ACC_W 31): 10,804 LUT, 5.45 a bit.
ROWSEL_LUTS_PER_BIT = ((1, 0), (2, 1), (4, 1), (8, 3), (12, 5.05), (16, 5.72), (17, 11.08), (20, 11.41),
                       (22, 10.86), (24, 13.77), (28, 14.20), (32, 20.09))


def rowsel_luts_per_bit(P: int) -> float:
    """LUTs of one bit of the P-to-1 row select; past the table, twice its last per doubling."""
    for rows, luts in ROWSEL_LUTS_PER_BIT:
        if P <= rows:
            return luts
    last_rows, last = ROWSEL_LUTS_PER_BIT[-1]
    return last * 2 ** math.ceil(math.log2(P / last_rows))
# The vector unit's own lanes (cs_vecop's cs_vec: LAYERNORM, ADD, REQUANT32), EPB of them beside the
# drain's (the two are never busy in the same cycle, but their pipelines differ: docs/UARCH.md). A
# lane: (acc | a | d) x (mult | ma | r) in two 27x18 multipliers, (t | b) x (gamma | mb) in one
# (gamma: arith.LN_GAMMA_BITS), x^2 and D*x in one each; cs_vec's LayerNorm statistics and scale
# are shared out over its lanes (cs_vec alone at EPB 16: 17,134 LUT, 6,034 FF). cs_vecop in the core:
# 87 DSP / 25,620-25,736 LUT / 8,723 FF at all four sizes.
VECTOR_LANE_DSPS = 5
VECTOR_LANE_LUTS = 1071
VECTOR_LANE_FFS = 377
# cs_vecop's own: the two read streams and bank readers, the int32 gearbox, the param memories'
# ports, the fields and addresses; cs_vec's var products (4 DSPs) and cs_vecop's count product (3).
VECTOR_DSPS = 7
VECTOR_LUTS = 8523
VECTOR_FFS = 2691
# The operand feed (cs_feed): per array row and per weight row (P + Q) its next / current beat
# registers and its output register; per weight row its element select. yosys: 2,534 LUT at 1x32,
# 5,309 at 2x64, 5,509 at 4x64, 4,855 at 16x64 -- the LUT follows Q (81.5 a column, least squares)
# and the array rows' selects are not seen (fewer LUT at 16 rows than at 4).
FEED_COL_LUTS = 82
FEED_ROW_FFS = 8
FEED_DSPS = 1
FEED_FFS = 379
# The attention unit (cs_attn: qbuf / sbuf walks, the score max, the e.v feed's EXP index per array
# row, the normalising drain's EPB lanes, the reciprocal): yosys 0.23 synth_xilinx of the unit alone
# for edge-moe-tiny (129 tokens, 3 heads of 64, ACC_W 31) gives 82 DSP48E2 / 14,765 LUT / 2,818 FF
# at 1x32, 86 / 18,768 / 3,968 at 2x64 and 190 / 71,519 / 8,383 at 28x64 (its memories -- sbuf,
# qbuf, the EXP and RECIP tables -- are the memory model's). The line through the three (exact: no
# residual): per array row the z x score_mult product (4 DSP) and ~170 FF of index pipeline and row
# sums; per column the running maximum (one ACC_W register and comparator); per MAC ~ACC_W LUT,
# the unit's P-to-1 select of a shadow row (Q x ACC_W bits); the rest (78 DSP: 16 lanes x 3 and
# the 16x16 index products) is fixed. Those runs predate cs_rowsel, which took the unit's P-to-1
# select of a shadow row (a per-MAC term then). After it, in the core (codesign synth, per unit):
# 82 / 13,599 / 2,818 at 1x32, 86 / 16,854 / 3,968 at 2x64, 94 / 18,676 / 4,287 at 4x64 and
# 142 / 26,952 / 6,205 at 16x64; the least-squares plane in P and Q through the four, within 1.2%.
ATTN_DSPS = 78
ATTN_ROW_DSPS = 4
ATTN_LUTS = 10159
ATTN_ROW_LUTS = 710
ATTN_COL_LUTS = 85
ATTN_FFS = 1668
ATTN_ROW_FFS = 160
ATTN_COL_FFS = 30.9
# The sequencer (cs_seq with cs_tags: fetch, decode, the field registers, the MATMUL / GATHER / ATTN
# walks, the bank tags, the copy of a GATE's lists, moe_acc's hooks), less its lists (the memory
# model's seq_lists, LUTRAM): 42 DSP48E2 of address products and one more per array row (its row
# addresses), and per row the lane select and address sum of a gathered row. Fitted to yosys 0.23
# of edge-moe-tiny's cs_seq (129 tokens) with the lists in LUTRAM: 7,264 / 7,328 / 8,874 LUT (392 /
# 464 / 1,472 of them LUTRAM, 72 a read port), 43 / 44 / 58 DSP48E2, 3.84k FF at 1x32 / 2x64 / 16x64
# (the line in P through the two 64-column sizes, 0.7% off at 1x32). The default model's 17 tokens
# give 7,806 LUT (800 LUTRAM: 32-deep copies cost half) and 3,806 FF at 16x64, the model 8,873: the
# lists' depth is the only token term left, and the model counts it in whole 64-row LUTs.
SEQ_DSPS = 42
SEQ_LUTS = 6851
SEQ_ROW_LUTS = 46.4
SEQ_FFS = 3835
# The weight engine's own (cs_wgt less what the model's wslot / params / lut memories count): its
# address products, the slot bookkeeping, and the part of its bias / mult / GELU memories the
# memory model does not see (yosys maps them to 2,080 LUT of LUTRAM; `params` and `lut` count 576);
# per weight group its row memory's port logic (4,375 LUT at 1x32, GW 2; 4,692 at 2x64, 4x64 and
# 16x64, GW 4; 16 DSP48E2, 3,922-3,926 FF).
WGT_DSPS = 16
WGT_LUTS = 3418
WGT_GROUP_LUTS = 158
WGT_FFS = 3924
# The router (cs_router: one expert a cycle, so one multiplier of each kind): yosys 0.23 of the unit
# alone at 1x32 gives 9 DSP / 7,615 LUT (2,076 of them LUTRAM) / 3,370 FF for the default model
# (8 experts, 17 tokens) and 10 / 14,287 (7,197) / 6,414 for edge-moe-tiny (16 experts, 129 tokens);
# the line through the two, less the `lists` memory the model counts, is per expert: the second
# copy of the lists (cs_seq's port), the counters and the write-out's select.
ROUTER_DSPS = 10
ROUTER_LUTS = 943
ROUTER_LUTS_PER_EXPERT = 578
ROUTER_FFS = 326
ROUTER_FFS_PER_EXPERT = 380
# The rest (cs_rdarb, axi_lite_control, cs_core / codesign_top's glue: the bank and read-client
# muxes, which grow with Q, and cs_attn's per-row feed addresses, with P): 3,681, 4,413, 4,500,
# 5,018 LUT at 1x32, 2x64, 4x64, 16x64 (the plane through them); 484 FF. Those row addresses are
# r x stride products, which yosys maps to 0, 0, 1 and 11 DSP48E2 at the four sizes: not modelled.
LUTS_CONTROL = 2949
LUTS_CONTROL_PER_ROW = 43
LUTS_CONTROL_PER_COL = 21.5
FF_CONTROL = 484
# cs_moeacc's own (its memory is the model's moe_acc): the GATE's clear sweep, the port muxes.
MOEACC_LUTS = 586
MOEACC_FFS = 44
# An abank copy's port logic (cs_ram: 130 LUT each; the memory is the model's abank).
BANK_PORT_LUTS = 130
LUTS_PER_MASTER = 409  # one AXI4 master: burst splitter, queues (axi_master alone)
FF_PER_MASTER = 241
# The packed product register of a column pair (two 18-bit halves): yosys keeps it in fabric, not
# in the DSP48E2's M register (cs_mac alone, tests/test_synth.py).
PROD_FF = 36


def mux4_luts(n: int) -> int:
    """LUT6s of an n-to-1 select of one bit as a tree of 4:1 muxes (0 for n = 1)."""
    return 0 if n <= 1 else -(-n // 4) + mux4_luts(-(-n // 4))


@dataclass(frozen=True)
class Part:
    """One instantiated piece: how many, and what each costs."""
    name: str
    count: int
    dsp: float = 0
    ff: float = 0
    lut: float = 0


def logic_parts(u: Uarch) -> list[Part]:
    """The datapath as instantiated: array cells, operand feed, drain and vector lanes, the
    sequencer, weight engine, attention and router units, control, masters."""
    pairs, beat = u.dsps_array, 8 * u.beat_bytes
    acc = u.acc_w
    # A column pair: one DSP, two ACC_W accumulators (+ their shadow) and the product register;
    # the packed hi half's borrow and the restart select fold into the two adders, and attention's
    # unpacked mode (the whole product into acc0) is a 2:1 select on acc0's addend, two bits a LUT6
    # (cs_mac alone at 2x32, ACC_W 25: 2,038 LUT, 63.7 a pair).
    cell = Part("mac_pair", pairs, dsp=1, ff=4 * acc + PROD_FF, lut=2 * acc + 2 + math.ceil(acc / 2))
    row_select = Part("row_select", u.Q * acc, lut=rowsel_luts_per_bit(u.P))
    # the drain lanes' choice of EPB of the row's Q values: (Q/EPB)-to-1 in the same 4:1 muxes
    column_select = Part("column_select", u.epb * acc, lut=mux4_luts(u.Q // u.epb))
    feed = Part("operand_row", u.P + u.Q, ff=2 * beat + FEED_ROW_FFS)
    feed_select = Part("weight_row_select", u.Q, lut=FEED_COL_LUTS)
    feed_control = Part("feed_control", 1, dsp=FEED_DSPS, ff=FEED_FFS)
    lanes = Part("drain_lane", u.epb, dsp=LANE_DSPS, ff=FF_PER_LANE, lut=LUTS_PER_LANE)
    drain = Part("drain_control", 1, dsp=DRAIN_DSPS, ff=DRAIN_FFS, lut=DRAIN_LUTS)
    vector = Part("vector_lane", u.epb, dsp=VECTOR_LANE_DSPS, ff=VECTOR_LANE_FFS, lut=VECTOR_LANE_LUTS)
    vector_control = Part("vector_control", 1, dsp=VECTOR_DSPS, ff=VECTOR_FFS, lut=VECTOR_LUTS)
    masters = Part("axi_master", 1 + u.weight_ports, ff=FF_PER_MASTER, lut=LUTS_PER_MASTER)
    sequencer = Part("sequencer", 1, dsp=SEQ_DSPS + u.P, ff=SEQ_FFS,
                     lut=SEQ_LUTS + SEQ_ROW_LUTS * u.P)
    bank_ports = Part("bank_port", 2 * u.G, lut=BANK_PORT_LUTS)
    weights = Part("weight_engine", 1, dsp=WGT_DSPS, ff=WGT_FFS, lut=WGT_LUTS + WGT_GROUP_LUTS * u.GW)
    parts = [cell, row_select, column_select, feed, feed_select, feed_control, bank_ports, lanes, drain, vector,
             vector_control, masters, sequencer, weights]
    if u.max_dh:
        parts.append(Part("attention", 1, dsp=ATTN_DSPS + ATTN_ROW_DSPS * u.P,
                          ff=ATTN_FFS + ATTN_ROW_FFS * u.P + ATTN_COL_FFS * u.Q,
                          lut=ATTN_LUTS + ATTN_ROW_LUTS * u.P + ATTN_COL_LUTS * u.Q))
    if u.max_experts:
        parts.append(Part("router", 1, dsp=ROUTER_DSPS, ff=ROUTER_FFS + ROUTER_FFS_PER_EXPERT * u.max_experts,
                          lut=ROUTER_LUTS + ROUTER_LUTS_PER_EXPERT * u.max_experts))
    if u.acc_words:
        parts.append(Part("moe_acc_control", 1, ff=MOEACC_FFS, lut=MOEACC_LUTS))
    return parts + [Part("control", 1, ff=FF_CONTROL,
                         lut=LUTS_CONTROL + LUTS_CONTROL_PER_ROW * u.P + LUTS_CONTROL_PER_COL * u.Q)]


RESOURCES = ("dsp", "ff", "lut", "bram36", "uram")


@dataclass(frozen=True)
class ResourceUse:
    used: dict[str, float]  # resource -> count
    parts: list[Part]
    memories: list[Memory]

    def breakdown(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {r: {} for r in RESOURCES}
        for p in self.parts:
            for r in ("dsp", "ff", "lut"):
                if getattr(p, r):
                    out[r][p.name] = p.count * getattr(p, r)
        for m in self.memories:
            out["lut" if m.binding == "lutram" else m.binding][m.name] = m.count
        return out


def resource_use(u: Uarch, uram_budget: int) -> ResourceUse:
    parts, mems = logic_parts(u), bind_memories(memories(u), uram_budget)
    used = {r: sum(p.count * getattr(p, r) for p in parts) for r in ("dsp", "ff", "lut")}
    used["lut"] += sum(m.count for m in mems if m.binding == "lutram")
    used["bram36"] = math.ceil(sum(m.count for m in mems if m.binding == "bram36"))
    used["uram"] = sum(m.count for m in mems if m.binding == "uram")
    return ResourceUse({r: math.ceil(used[r]) for r in RESOURCES}, parts, mems)


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
    reads them, its accumulator until the REQUANT32 that reads it whole (or the next GATE) and its
    last SCATTER."""
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
        # a SCATTER after that REQUANT32 still adds into moe_acc (the RTL's, written through to DDR)
        scatters = [q for q in users if prog.instrs[q].flags & Flag.SCATTER]
        acc_until = max([whole[0] if whole else end] + [q + 1 for q in scatters])
        lists = ((g["counts_addr"], 4 * g["experts"]), (g["idx_addr"], 4 * g["experts"] * g["list_stride"]),
                 (g["score_addr"], 4 * g["experts"] * g["list_stride"]))
        spans.append(_GateSpan(pc, lists, max(users, default=pc), acc, acc_until))
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
