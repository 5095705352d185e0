"""Size the unified accelerator for a program and a board: the PxQ MAC array and its buffers.

Dataflow assumed by the sizing (and by codesign.schedule.estimate):

* MATMUL is output-stationary on a P x Q MAC array: P activation rows x Q output columns, the
  reduction dimension K streamed one step per cycle. A weight tile is Q rows of W (Q x K).
* The whole A operand of one instruction (up to max_tokens x max_k) sits in the activation tile
  buffer, and weight tiles are double-buffered: every weight tile streams over all row tiles
  while the next one is prefetched, so a layer's weights and its input are each read from DDR
  once. The activation buffer has two banks: a MATMUL's drained outputs also go to the other
  bank, where the next MATMUL finds its A operand when it is exactly those rows (a MoE expert's
  compact hidden rows, fc1 -> fc2; a dense MLP's hidden rows), so they are not read back.
* ATTN runs on the same multipliers, one head at a time: that head's K and V (tokens x head_dim
  each) are on chip, with room for the next head's, which stream in meanwhile. A block of
  P*Q / head_dim queries meets one key per cycle, for S = q K^T and then for O = softmax(S) V
  (instr_array_cycles), so the P x Q shape does not matter to it.
* The int32 MoE accumulator (tokens x dim) is on chip from its GATE to its REQUANT32 (moe_acc,
  one int32 bank per element of an AXI beat): the experts' fc2 SCATTERs add into it and the
  REQUANT32 reads it without DDR traffic. acc_tile holds a tile's old rows for a SCATTER into DDR
  (the ISA allows one; a compiled program has none).
* GATE computes its logits on the MAC array too (x rows as A, the router weights as a tile).
* The whole program (64 bytes an instruction) is on chip, read from DDR once per run.
* The vector unit has Q lanes (requantisation, GELU lookup, layernorm, softmax, add); the MAC
  drain requantises one AXI beat of outputs per cycle.

Resource assumptions (stated where they are used): MACs per DSP, DSPs per vector lane, the
BRAM36 / URAM aspect ratios, LUTs per MAC and per lane.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..boards import Board
from ..quant import arith as A
from .isa import WORDS, Flag, Instr, Op
from .program import Program

# DSP48E2 (UltraScale+) packs two int8 x int8 products that share one operand (AMD WP486); in a
# PxQ array each activation is shared by the Q columns, so packing applies. Wider operands and
# the 7-series DSP48E1 are counted as one MAC per DSP.
PACKED_MACS_PER_DSP = 2
# One requantisation multiply per vector lane: a 32-bit accumulator x 15-bit multiplier needs a
# cascade of two 27x18 DSPs; layernorm, softmax and the MoE score multiply reuse these lanes.
DSPS_PER_VECTOR_LANE = 2
# Scalar datapath: layernorm rsqrt/variance, softmax reciprocal, address generation.
SCALAR_DSPS = 8

# Fabric estimates (coarse, for a budget check, not a substitute for synthesis).
LUTS_PER_MAC = 12  # fabric accumulator + operand pipelining per MAC
LUTS_PER_VECTOR_LANE = 600  # rounding, saturation, table addressing, adders
LUTS_CONTROL = 15000  # instruction decoder, AXI master + DMA engines, AXI-Lite control
LUTRAM_DEPTH = 64  # a LUT6 as a 64x1 RAM/ROM
# Shallow or tiny memories go to distributed RAM (as Vivado does): a BRAM would be mostly empty.
LUTRAM_MAX_DEPTH = 64
LUTRAM_MAX_BITS = 4096

# Simple dual-port aspect ratios (width bits, depth); 9/18/36/72-bit modes include parity bits,
# which hold data here. A BRAM36 splits into two independent BRAM18, counted as 0.5 each.
BRAM36_SHAPES = ((72, 512), (36, 1024), (18, 2048), (9, 4096), (4, 8192), (2, 16384), (1, 32768))
BRAM18_SHAPES = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))
URAM_SHAPE = (72, 4096)  # URAM288 has a single, fixed aspect ratio
# Below this many MACs an accelerator is not worth building (the PS's NEON cores are in that
# range), so a program that only fits a smaller array is reported as not fitting.
MIN_ARRAY_MACS = 16
# A buffer that needs at least this many BRAM36 goes to URAM when URAM is left: below that a
# URAM (8x a BRAM36's capacity) would mostly be wasted.
URAM_MIN_BRAM36 = 8

# ROM tables of the vector unit (docs/ISA.md): entries and data bits.
EXP_TABLE = (A.EXP_LUT_SIZE, A.EXP_FRAC + 1)
RECIP_TABLE = (1 << (A.RECIP_MBITS - 1), A.RECIP_FRAC - (A.RECIP_MBITS - 1) + 1)
RSQRT_TABLE = (1 << A.RSQRT_MBITS, A.RSQRT_FRAC + 1)


# (A banks, MoE accumulator on chip) tried in this order for each array shape: one A bank (a
# MATMUL's output read back from DDR by the next MATMUL) costs less than the accumulator's
# read-modify-writes in DDR.
BUFFER_FALLBACKS = ((2, True), (1, True), (2, False), (1, False))


class ResourceError(ValueError):
    """The program does not fit the board (always a one-line message naming the resource)."""


@dataclass(frozen=True)
class Buffer:
    """An on-chip memory: `lanes` elements of `elem_bits` read per cycle, `depth` words deep."""
    name: str
    purpose: str
    lanes: int
    elem_bits: int
    depth: int
    copies: int = 1  # replicated ROMs, one per pair of vector lanes
    binding: str = ""  # "bram36", "uram" or "lutram"
    count: float = 0  # primitives (BRAM36 in halves, URAM) or LUTs used, all copies

    @property
    def width_bits(self) -> int:
        return self.lanes * self.elem_bits

    @property
    def bits(self) -> int:
        return self.width_bits * self.depth * self.copies

    @property
    def bytes(self) -> int:
        return self.bits // 8


@dataclass
class Tiling:
    board: str
    P: int  # MAC array rows (activation rows in parallel)
    Q: int  # MAC array columns (output columns in parallel); also the vector-unit lanes
    macs_per_dsp: int
    elem_bytes: int
    max_k: int
    max_n: int
    max_tokens: int
    max_head_dim: int
    weight_tile_bytes: int  # one Q x max_k tile; the buffer holds two (prefetch double buffering)
    weight_buffer_bytes: int
    act_tile_bytes: int  # the A operand of one instruction: max_tokens x max_k
    act_row_bytes: int  # P rows of the widest output / attention-score row
    kv_bytes: int  # one head's K and V
    moe_hidden_bytes: int  # one expert's compact hidden rows
    lut_rom_bits: int  # GELU, EXP, RECIP, RSQRT tables, all copies
    dsp: int
    bram36: int
    uram: int
    lut: int
    buffers: list[Buffer] = field(default_factory=list)
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)  # resource -> part -> count
    dsp_fraction: float = 0.8  # the budget it was chosen within (choose_tiling)
    mem_fraction: float = 0.8
    act_banks: int = 2  # A operand banks: 2 lets a MATMUL's output stay on chip for the next one
    acc_on_chip: bool = True  # the MoE accumulator on chip (moe_acc), else in DDR as the ISA has it

    @property
    def macs_per_cycle(self) -> int:
        return self.P * self.Q

    def to_json(self) -> dict:
        d = asdict(self)
        d["buffers"] = [dict(asdict(b), bytes=b.bytes) for b in self.buffers]
        return d

    def summary(self) -> str:
        return (f"{self.board}: {self.P}x{self.Q} MAC array ({self.macs_per_cycle} MACs/cycle, "
                f"{self.macs_per_dsp} MAC/DSP); DSP {self.dsp}, BRAM36 {self.bram36}, URAM {self.uram}, "
                f"LUT {self.lut}")


def tiling_params(t: Tiling) -> dict:
    """The sizes the HLS / RTL templates are generated with."""
    return {"P": t.P, "Q": t.Q, "max_k": t.max_k, "max_n": t.max_n, "max_tokens": t.max_tokens,
            "max_head_dim": t.max_head_dim, "act_banks": t.act_banks, "acc_on_chip": int(t.acc_on_chip)}


# ---------------------------------------------------------------- workload of the MAC array

def uniform_expert_counts(tokens: int, top_k: int, experts: int) -> list[int]:
    """tokens*top_k routing slots spread as evenly as integers allow (sums to tokens*top_k)."""
    base, extra = divmod(tokens * top_k, experts)
    return [base + 1] * extra + [base] * (experts - extra)


def gate_instrs(prog: Program) -> dict[str, Instr]:
    """MoE block name (as in prog.moe_layers) -> its GATE instruction."""
    by_counts = {info["counts_addr"]: name for name, info in prog.moe_layers.items()}
    return {by_counts[i.args["counts_addr"]]: i for i in prog.instrs if i.op == Op.GATE}


def expert_of(prog: Program, ins: Instr) -> tuple[str, int] | None:
    """(MoE block, expert id) of a per-expert MATMUL (DYNM reads that expert's count), else None."""
    if ins.op != Op.MATMUL or not ins.flags & Flag.DYNM:
        return None
    for name, info in prog.moe_layers.items():
        ex, rem = divmod(ins.args["count_addr"] - info["counts_addr"], 4)
        if rem == 0 and 0 <= ex < info["experts"]:
            return name, ex
    raise ValueError(f"{ins.layer}: DYNM count_addr matches no MoE layer's counts")


def instr_rows(prog: Program, expert_counts: dict[str, list[int]]) -> list[int]:
    """Rows each instruction processes: m, or for an expert MATMUL min(m, tokens routed to it)."""
    rows = []
    for ins in prog.instrs:
        owner = expert_of(prog, ins)
        if owner is None:
            rows.append(ins.args.get("m", 0))
        else:
            block, ex = owner
            rows.append(min(ins.args["m"], expert_counts[block][ex]))
    return rows


def uniform_counts_for(prog: Program) -> dict[str, list[int]]:
    return {name: uniform_expert_counts(g.args["tokens"], g.args["top_k"], g.args["experts"])
            for name, g in gate_instrs(prog).items()}


def array_passes(ins: Instr, rows: int) -> list[tuple[int, int, int]]:
    """The (M, N, K) products an instruction runs on the MAC array."""
    a = ins.args
    if ins.op == Op.MATMUL:
        return [(rows, a["n"], a["k"])] if rows else []
    if ins.op == Op.GATE:
        return [(a["tokens"], a["experts"], a["dim"])]
    if ins.op == Op.ATTN:
        t, dh = a["tokens"], a["head_dim"]
        return [(t, t, dh), (t, dh, t)] * a["heads"]  # S = q K^T, then O = P V, per head
    return []


def array_cycles(M: int, N: int, K: int, P: int, Q: int) -> int:
    return math.ceil(M / P) * math.ceil(N / Q) * K


def attn_query_block(P: int, Q: int, max_head_dim: int, max_tokens: int) -> int:
    """Queries an ATTN block holds (the kernel's ATTN_QB): the array's P*Q multipliers over the
    head_dim lanes of each query."""
    return max(1, min(P * Q // max(1, max_head_dim), max_tokens))


def instr_array_cycles(ins: Instr, rows: int, P: int, Q: int, max_head_dim: int, max_tokens: int) -> int:
    """Cycles an instruction keeps the MAC array busy: its products in P x Q blocks, or for ATTN,
    per head and query block, one key per cycle for the scores and one for the outputs."""
    if ins.op == Op.ATTN:
        a = ins.args
        blocks = math.ceil(a["tokens"] / attn_query_block(P, Q, max_head_dim, max_tokens))
        return a["heads"] * blocks * 2 * a["tokens"]
    return sum(array_cycles(M, N, K, P, Q) for M, N, K in array_passes(ins, rows))


# ---------------------------------------------------------------- program sizes

@dataclass(frozen=True)
class Sizes:
    max_k: int
    max_n: int
    max_tokens: int
    max_head_dim: int
    moe_hidden: int  # 0 without MoE layers
    gelu: bool
    max_experts: int = 0  # 0 without GATE instructions
    moe_acc_elems: int = 0  # the largest MoE accumulator (GATE tokens x dim), 0 without GATE instructions
    instrs: int = 1  # instructions, END included: the kernel holds the whole program on chip


def program_sizes(prog: Program) -> Sizes:
    """The largest operand sizes of the program, which the buffers are sized for."""
    def args(op: Op) -> list[dict]:
        return [i.args for i in prog.instrs if i.op == op]

    mm, gate, attn, norm = args(Op.MATMUL), args(Op.GATE), args(Op.ATTN), args(Op.LAYERNORM)
    expert_fc2 = [i.args for i in prog.instrs if i.op == Op.MATMUL and i.flags & Flag.SCATTER]
    return Sizes(
        max_k=max([a["k"] for a in mm] + [a["dim"] for a in gate], default=1),
        max_n=max([a["n"] for a in mm] + [a["experts"] for a in gate], default=1),
        max_tokens=max([a["m"] for a in mm] + [a["tokens"] for a in gate + attn] + [a["rows"] for a in norm],
                       default=1),
        max_head_dim=max((a["head_dim"] for a in attn), default=0),
        moe_hidden=max((a["k"] for a in expert_fc2), default=0),  # fc2 of an expert reads the hidden rows
        gelu=any(i.op == Op.MATMUL and i.flags & Flag.GELU for i in prog.instrs),
        max_experts=max((a["experts"] for a in gate), default=0),
        moe_acc_elems=max((a["tokens"] for a in gate), default=0) * max((a["dim"] for a in gate), default=0),
        instrs=len(prog.instrs) + 1,
    )


# ---------------------------------------------------------------- buffers and their binding

def plan_buffers(s: Sizes, P: int, Q: int, elem_bytes: int, abits: int, beat_bytes: int = 16,
                 act_banks: int = 2, acc_on_chip: bool = True) -> list[Buffer]:
    """The kernel's on-chip memories (hls_templates/firmware/codesign_top.cpp.j2 declares the same)."""
    eb = 8 * elem_bytes
    row_tiles = math.ceil(s.max_tokens / P)
    buffers = [
        Buffer("weights", "weight tile Q x max_k, double-buffered for prefetch", Q, eb, 2 * s.max_k),
        Buffer("act_tile", "A operand of one instruction (max_tokens x max_k)" +
               (" and the forwarded output bank" if act_banks == 2 else ""), P, eb, act_banks * row_tiles * s.max_k),
        # Output rows (elements) or, in attention, int32 score rows: whole rows let the drain
        # softmax / write back in long bursts.
        Buffer("act_row", "P rows of the widest output / attention-score row", Q, 32,
               P * math.ceil(max(s.max_n * elem_bytes, s.max_tokens * 4) / (4 * Q))),
    ]
    if s.max_head_dim:
        # Two heads each: the kernel computes on one head's K and V while the next head's stream in.
        buffers += [Buffer("k", "K of two heads (compute one, prefetch the next): 2 x tokens x head_dim", Q, eb,
                           2 * math.ceil(s.max_tokens / Q) * s.max_head_dim),
                    Buffer("v", "V of two heads (compute one, prefetch the next): 2 x tokens x head_dim", Q, eb,
                           2 * math.ceil(s.max_head_dim / Q) * s.max_tokens)]
    if s.moe_hidden:
        seg_beats = math.ceil(Q * 4 / beat_bytes) + 1  # a tile row of int32, possibly unaligned
        buffers.append(Buffer("acc_tile", "SCATTER: old MoE accumulator rows of one weight tile",
                              seg_beats * beat_bytes // 4, 32, s.max_tokens))
    if s.moe_acc_elems and acc_on_chip:
        banks = beat_bytes // elem_bytes  # one int32 per bank: any beat of elements or of int32 in one cycle
        buffers.append(Buffer("moe_acc", "the MoE accumulator, tokens x dim int32, from its GATE to its REQUANT32",
                              1, 32, math.ceil(s.moe_acc_elems / banks), copies=banks))
    if s.max_experts:
        buffers += [Buffer("gate_logits", "router logits: max_tokens x experts", s.max_experts, 64, s.max_tokens),
                    Buffer("gate_lists", "per-expert token and score lists", 2, 32, s.max_experts * s.max_tokens)]
    buffers.append(Buffer("program", "the whole program, loaded once per run", beat_bytes // 4, 32,
                          s.instrs * 4 * WORDS // beat_bytes))
    return buffers + rom_tables(s, Q, elem_bytes, abits, beat_bytes)


def rom_tables(s: Sizes, Q: int, elem_bytes: int, abits: int, beat_bytes: int = 16) -> list[Buffer]:
    """Per-element tables are replicated for every two lanes (a BRAM has two read ports): softmax
    runs on Q lanes, the GELU lookup in the MAC drain on one AXI beat of elements per cycle."""
    per_lane_pair = max(1, Q // 2)
    per_beat_pair = max(1, beat_bytes // elem_bytes // 2)
    roms = [Buffer("exp_rom", "softmax EXP table", 1, EXP_TABLE[1], EXP_TABLE[0], per_lane_pair),
            Buffer("recip_rom", "softmax RECIP table (once per row)", 1, RECIP_TABLE[1], RECIP_TABLE[0]),
            Buffer("rsqrt_rom", "layernorm RSQRT table (once per row)", 1, RSQRT_TABLE[1], RSQRT_TABLE[0])]
    if s.gelu:
        roms.append(Buffer("gelu_lut", "GELU table, loaded per instruction", 1, 8 * elem_bytes, 1 << abits,
                           per_beat_pair))
    return roms


def bram36_count(width_bits: int, depth: int) -> float:
    """BRAM36 primitives for one memory, in halves (a memory may use a lone BRAM18)."""
    whole = min(math.ceil(width_bits / w) * math.ceil(depth / d) for w, d in BRAM36_SHAPES)
    halves = min(math.ceil(width_bits / w) * math.ceil(depth / d) for w, d in BRAM18_SHAPES)
    return min(float(whole), halves / 2)


def uram_count(width_bits: int, depth: int) -> int:
    return math.ceil(width_bits / URAM_SHAPE[0]) * math.ceil(depth / URAM_SHAPE[1])


def bind_buffers(buffers: list[Buffer], uram_budget: int) -> list[Buffer]:
    """Small ROMs to LUTs, the biggest buffers to URAM while it lasts, the rest to BRAM36."""
    bound, uram_left = [], uram_budget
    for b in sorted(buffers, key=lambda b: -bram36_count(b.width_bits, b.depth) * b.copies):
        brams = bram36_count(b.width_bits, b.depth) * b.copies
        urams = uram_count(b.width_bits, b.depth) * b.copies
        if b.depth <= LUTRAM_MAX_DEPTH or b.width_bits * b.depth <= LUTRAM_MAX_BITS:
            luts = b.width_bits * math.ceil(b.depth / LUTRAM_DEPTH) * b.copies
            bound.append(_bind(b, "lutram", luts))
        elif brams >= URAM_MIN_BRAM36 and urams <= uram_left and urams < brams:
            uram_left -= urams
            bound.append(_bind(b, "uram", urams))
        else:
            bound.append(_bind(b, "bram36", brams))
    order = [b.name for b in buffers]
    return sorted(bound, key=lambda b: order.index(b.name))


def _bind(b: Buffer, binding: str, count: float) -> Buffer:
    return Buffer(b.name, b.purpose, b.lanes, b.elem_bits, b.depth, b.copies, binding, count)


# ---------------------------------------------------------------- resource totals

def macs_per_dsp(board: Board, prog: Program) -> int:
    narrow = max(prog.wbits, prog.abits) <= 8
    return PACKED_MACS_PER_DSP if narrow and board.family == "zynquplus" else 1


def dsp_breakdown(P: int, Q: int, per_dsp: int) -> dict[str, int]:
    return {"mac_array": math.ceil(P * Q / per_dsp), "vector_unit": DSPS_PER_VECTOR_LANE * Q,
            "scalar": SCALAR_DSPS}


def lut_breakdown(P: int, Q: int, buffers: list[Buffer]) -> dict[str, int]:
    return {"mac_array": LUTS_PER_MAC * P * Q, "vector_unit": LUTS_PER_VECTOR_LANE * Q,
            "control_axi": LUTS_CONTROL, "lutram": sum(b.count for b in buffers if b.binding == "lutram")}


def memory_breakdown(buffers: list[Buffer], binding: str) -> dict[str, float]:
    return {b.name: b.count for b in buffers if b.binding == binding}


@dataclass(frozen=True)
class Budget:
    board: Board
    dsp_fraction: float
    mem_fraction: float

    def limit(self, resource: str) -> int:
        fraction = self.mem_fraction if resource in ("bram36", "uram") else self.dsp_fraction
        return int(getattr(self.board.resources, resource) * fraction)

    def describe(self, resource: str) -> str:
        fraction = self.mem_fraction if resource in ("bram36", "uram") else self.dsp_fraction
        return (f"board budget is {self.limit(resource)} ({fraction:.0%} of "
                f"{getattr(self.board.resources, resource)})")


# ---------------------------------------------------------------- choosing the array

def array_caps(s: Sizes) -> tuple[int, int]:
    """Largest useful P and Q: more rows than tokens or columns than outputs would idle."""
    return _pow2_ceil(s.max_tokens), _pow2_ceil(max(s.max_n, s.max_head_dim, 1))


def array_sizes(s: Sizes, max_macs: int) -> list[int]:
    """Candidate P*Q, largest first, down to the smallest array worth building."""
    p_cap, q_cap = array_caps(s)
    smallest = min(MIN_ARRAY_MACS, p_cap * q_cap)
    return [n for n in reversed(_powers_of_two(max_macs)) if n >= smallest]


def array_shapes(total: int, s: Sizes, beat_elems: int) -> list[tuple[int, int]]:
    """(P, Q) powers of two with P*Q == total, neither larger than the program can use."""
    p_cap, q_cap = array_caps(s)
    shapes = [(total // q, q) for q in _powers_of_two(total) if total // q <= p_cap and q <= q_cap]
    wide = [(p, q) for p, q in shapes if q % beat_elems == 0]
    return wide or shapes  # prefer Q a multiple of the AXI beat: a weight row streams a beat a cycle


def _powers_of_two(limit: int) -> list[int]:
    return [1 << i for i in range(limit.bit_length()) if 1 << i <= limit]


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def program_array_cycles(prog: Program, P: int, Q: int) -> int:
    """MAC-array cycles of the whole program under uniform routing: the figure a shape is chosen by."""
    rows = instr_rows(prog, uniform_counts_for(prog))
    s = program_sizes(prog)
    return sum(instr_array_cycles(ins, r, P, Q, s.max_head_dim, s.max_tokens) for ins, r in zip(prog.instrs, rows))


def build_tiling(prog: Program, board: Board, s: Sizes, P: int, Q: int, per_dsp: int, uram_budget: int,
                 act_banks: int = 2, acc_on_chip: bool = True) -> Tiling:
    eb = prog.elem_bytes
    buffers = bind_buffers(plan_buffers(s, P, Q, eb, prog.abits, beat_bytes(board), act_banks, acc_on_chip),
                           uram_budget)
    dsp, lut = dsp_breakdown(P, Q, per_dsp), lut_breakdown(P, Q, buffers)
    bram, uram = memory_breakdown(buffers, "bram36"), memory_breakdown(buffers, "uram")
    return Tiling(
        board=board.name, P=P, Q=Q, macs_per_dsp=per_dsp, elem_bytes=eb,
        max_k=s.max_k, max_n=s.max_n, max_tokens=s.max_tokens, max_head_dim=s.max_head_dim,
        weight_tile_bytes=Q * s.max_k * eb, weight_buffer_bytes=2 * Q * s.max_k * eb,
        act_tile_bytes=s.max_tokens * s.max_k * eb,
        act_row_bytes=P * max(s.max_n * eb, s.max_tokens * 4),
        kv_bytes=2 * s.max_tokens * s.max_head_dim * eb,
        moe_hidden_bytes=s.max_tokens * s.moe_hidden * eb,
        lut_rom_bits=sum(b.bits for b in buffers if b.name.endswith(("_rom", "_lut"))),
        dsp=sum(dsp.values()), bram36=math.ceil(sum(bram.values())), uram=sum(uram.values()),
        lut=sum(lut.values()),
        buffers=buffers, breakdown={"dsp": dsp, "bram36": bram, "uram": uram, "lut": lut}, act_banks=act_banks,
        acc_on_chip=acc_on_chip,
    )


def beat_bytes(board: Board) -> int:
    return board.memory.axi_data_bits // 8


def buffer_bindings(prog: Program, board: Board, P: int, Q: int, act_banks: int = 2, mem_fraction: float = 0.8,
                    acc_on_chip: bool = True) -> dict[str, str]:
    """Buffer name -> "bram36" / "uram" / "lutram" for a P x Q array (the kernel's BIND_STORAGE)."""
    budget = Budget(board, 0.8, mem_fraction)
    t = build_tiling(prog, board, program_sizes(prog), P, Q, macs_per_dsp(board, prog), budget.limit("uram"),
                     act_banks, acc_on_chip)
    return {b.name: b.binding for b in t.buffers}


def first_overrun(t: Tiling, budget: Budget) -> str | None:
    """The first resource over budget, or None."""
    for resource in ("dsp", "bram36", "uram", "lut"):
        if getattr(t, resource) > budget.limit(resource):
            return resource
    return None


_WHAT_FOR = {"dsp": "for the MAC array and vector unit", "bram36": "for buffers", "uram": "for buffers",
             "lut": "for logic"}


def overrun_message(t: Tiling, budget: Budget, resource: str) -> str:
    extra = f" (with {t.uram} URAM also used)" if resource == "bram36" and t.uram else ""
    return (f"design does not fit {budget.board.name}: needs {getattr(t, resource)} {resource.upper()} "
            f"{_WHAT_FOR[resource]}{extra} even with a {t.P}x{t.Q} MAC array, {budget.describe(resource)}")


def choose_tiling(prog: Program, board: Board, dsp_fraction: float = 0.8, mem_fraction: float = 0.8) -> Tiling:
    """The largest MAC array (power-of-two P and Q) whose DSPs, buffers and logic fit the budget.

    dsp_fraction bounds DSPs and LUTs, mem_fraction BRAM36 and URAM.
    Among shapes of the same size, the one with the fewest MAC-array cycles for this program
    wins (ties: the smaller Q, whose weight buffer is smaller). A shape whose buffers do not fit
    is tried with less on chip (BUFFER_FALLBACKS) before a smaller array. Raises ResourceError
    when not even the smallest array (MIN_ARRAY_MACS) fits.
    """
    budget = Budget(board, dsp_fraction, mem_fraction)
    s = program_sizes(prog)
    per_dsp = macs_per_dsp(board, prog)
    beat_elems = max(1, board.memory.axi_data_bits // (8 * prog.elem_bytes))
    tried: list[Tiling] = []
    for total in array_sizes(s, per_dsp * board.resources.dsp):
        shapes = array_shapes(total, s, beat_elems)
        tried = [build_tiling(prog, board, s, P, Q, per_dsp, budget.limit("uram"), banks, acc)
                 for P, Q in sorted(shapes, key=lambda pq: (program_array_cycles(prog, *pq), pq[1]))
                 for banks, acc in BUFFER_FALLBACKS]
        fitting = [t for t in tried if first_overrun(t, budget) is None]
        if fitting:
            fitting[0].dsp_fraction, fitting[0].mem_fraction = dsp_fraction, mem_fraction
            return fitting[0]
    if not tried:  # cannot happen with >= 1 DSP, kept for a clear message
        raise ResourceError(f"design does not fit {board.name}: no MAC array shape available")
    # Report the smallest array's shape that comes closest to fitting.
    closest = min(tried, key=lambda t: overrun_ratio(t, budget))
    raise ResourceError(overrun_message(closest, budget, first_overrun(closest, budget)))


def overrun_ratio(t: Tiling, budget: Budget) -> float:
    resource = first_overrun(t, budget)
    return getattr(t, resource) / max(1, budget.limit(resource))
