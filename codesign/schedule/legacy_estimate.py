"""Analytical latency model of a program on the tiled accelerator (see codesign.schedule.tiling).

Per instruction:
* MAC-array cycles: ceil(M/P) * ceil(N/Q) * K for each product it runs (K is sequential); ATTN
  per head and block of P*Q / head_dim queries, one key per cycle for the scores and one for the
  outputs (tiling.instr_array_cycles).
* Vector-unit cycles at Q elements per cycle (the pass model below); requantisation and GELU of
  a MATMUL (a SCATTER's score multiply-add) are pipelined into the array's drain, which costs
  only for the last row block (drain_tail).
* Softmax (ATTN) is one pass with deferred normalisation: the row maximum is kept as the scores
  come, exp and sum are fused with the e.v loop, and only the head_dim outputs per query row are
  normalised, in the next block's scores loop. Q, K and V stream in and the outputs out beside
  the key loops, except head 0's K, V and first query block and the last block's rows
  (attn_ends). GATE routes one token per step (softmax, top_k and list slots with the experts
  unrolled), then writes its counts and lists.
* LayerNorm reads each row once: sum and sum of squares accumulate as it streams in, and the
  normalisation of row r overlaps the read of row r+1.
* DDR bytes: weights read once per instruction (weight tiles are double-buffered, activations
  held on chip), activations as the instruction reads / writes them, except the A operand of a
  MATMUL that directly consumes the previous MATMUL's output (a MoE expert's hidden rows fc1 ->
  fc2, a dense MLP's hidden rows): the kernel keeps that output in its second A bank, so it is
  written (the ISA stores it) but never read back. An expert with no tokens reads only its count.
  The int32 MoE accumulator is on chip from its GATE to its REQUANT32 (MoeAcc in the kernel,
  on_chip_acc here): the GATE writes no zeros, the fc2 SCATTERs add into it and the REQUANT32
  reads it without DDR traffic.
* Memory cycles: activations and the program go over m_axi_gmem, reads and writes on separate
  channels (axi_data_bits per cycle each); weights over board.memory.weight_ports masters of the
  same width, one beat per cycle each (with one weight port the weights share gmem's read
  channel). Everything shares the DDR (board.ddr_bytes_per_cycle).
* Serial loads before a MAC-array instruction's pipeline (matmul_preamble), each a DDR round trip
  plus its beats: an expert's token count unless on chip from the GATE, then its token list
  (read once per expert: fc2 reuses what fc1 read) and the GELU table side by side. A SCATTER's
  scores stream in with weight tile 0, and its drain marks the rows it writes first. The bias
  and multipliers of a tile stream with its rows (after the rows of the ports with the fewest).
* The kernel reads the whole program from DDR once per run, in one burst before instruction 0
  (program_load_cycles, charged to instruction 0's overhead); an instruction is then fetched
  from the on-chip copy (fetch_cycles), one ahead, and a MATMUL reads the next MATMUL's weight
  tile 0 during its own last tile when the next one is sure to run (read_ahead_cycles).
* An expert MATMUL no token was routed to returns at once: its fetch and SKIPPED_INSTR_CYCLES,
  plus the DDR read of its count when that is not on chip from the GATE (matmul_preamble). After
  a MATMUL the kernel does not even dispatch it (skipped_experts): only its fetch, and the MATMUL
  before reads ahead for the next one that runs.
* LayerNorm reads gamma and beta before its row loop, each burst a DDR round trip plus its beats
  (layernorm_preamble); ADD reads b after a in one loop, so a position table in wgt does not
  come in beside a (read_ports).
* cycles = max(compute + prologue, memory + epilogue) + overhead (instr_overhead): weight prefetch
  overlaps compute, except at the ends of a MATMUL / GATE on the MAC array: weight tile 0 streams
  in before the array can start, the A rows (streamed during tile 0, unless on chip) and the
  prefetch of tile 1 (after the A rows when they share a port) can outlast tile 0's compute
  (matmul_prologue), and nothing is left to read while the array computes the last tile
  (matmul_epilogue).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from ..boards import Board
from ..quant.golden import run_golden
from ..quant.qmodel import QuantModel
from .isa import WORDS, Flag, Instr, Op
from .program import Program
from .legacy_tiling import (Budget, Tiling, array_passes, attn_query_block, gate_instrs, instr_array_cycles,
                     instr_rows, program_sizes, tiling_params, uniform_expert_counts)

# One PL -> PS DDR read round trip (~0.5 us = ~100 cycles at 200 MHz): paid by every burst that
# nothing overlaps.
DDR_ROUND_TRIP_CYCLES = 100
# Pipeline fill and drain of an instruction's loops, on top of reading it from the on-chip program
# (fetch_cycles): no instruction waits for DDR to be fetched (the program is loaded once per run).
INSTR_OVERHEAD_CYCLES = 28
# Reading an instruction from the on-chip program: the BRAM's read latency, then its 64 bytes one
# AXI beat a cycle (the kernel's fetch).
PROGRAM_READ_LATENCY = 2
# An expert MATMUL no token was routed to, besides its fetch: decode, the look-up of its count in
# the GATE's counts kept on chip, and the return (op_matmul). Not a whole instruction's overhead:
# it runs no pipelined loop.
SKIPPED_INSTR_CYCLES = 4
# Vector-unit passes over the data (see the module docstring): LayerNorm one pass per row.
LAYERNORM_PASSES = 1

# Report kinds of layers (roofline summary per kind).
KINDS = ("attention", "moe", "dense matmul", "vector ops")

_MOE_PART = re.compile(r"^(?P<block>b\d+)\.(gate|e\d+\.fc[12]|mlp)$")


@dataclass
class InstrCost:
    index: int
    layer: str  # report group: instr.layer, or "<block>.moe" for a MoE layer's instructions
    name: str  # instr.layer
    op: str
    rows: int  # rows processed (an expert MATMUL: tokens routed to it)
    macs: int
    array_cycles: int
    vector_cycles: int
    weight_bytes: int
    act_read_bytes: int
    act_write_bytes: int
    memory_cycles: int
    cycles: int
    prologue_cycles: int = 0  # not overlapped: serial loads, weight tile 0, A rows beyond tile 0's compute
    epilogue_cycles: int = 0  # the last weight tile's compute, after the last read
    isa_extra_bytes: int = 0  # what the plain ISA dataflow moves on top of ddr_bytes (isa_extra_bytes)
    overhead_cycles: int = 0  # instr_overhead; instruction 0's also loads the program (program_load_cycles)

    @property
    def compute_cycles(self) -> int:
        """Array + vector cycles and the MAC prologue: cycles = max(compute, memory) + overhead."""
        return self.array_cycles + self.vector_cycles + self.prologue_cycles

    @property
    def ddr_bytes(self) -> int:
        return self.weight_bytes + self.act_read_bytes + self.act_write_bytes


@dataclass
class LayerCost:
    name: str
    instrs: int
    macs: int
    compute_cycles: int
    memory_cycles: int
    cycles: int
    weight_bytes: int
    ddr_bytes: int
    bound: str  # "compute" or "memory"
    utilisation: float  # MACs / (P*Q * cycles)
    kind: str = ""  # one of KINDS
    board_roofline: float = 0.0  # max(MACs / (P*Q), DDR bytes / sustained DDR bytes per cycle)
    roofline_ratio: float = 0.0  # board_roofline / cycles
    # DDR bytes of the plain ISA dataflow, without the HLS kernel's on-chip MoE accumulator and
    # list cache: what the RTL core moves (codesign.report.cycles uses it for the core's roofline)
    isa_ddr_bytes: int = 0


@dataclass
class KindCost:
    """The layers of one kind together: their estimate against the pure board roofline."""
    kind: str
    layers: int
    macs: int
    ddr_bytes: int
    cycles: int
    board_roofline: float
    roofline_ratio: float


@dataclass
class Estimate:
    board: str
    clock_mhz: float
    tiling: dict
    num_tasks: int
    ddr_bytes_per_cycle: float
    axi_bytes_per_cycle: float
    weight_ports: int
    expert_counts: dict[str, list[int]]
    assumptions: list[str]
    instrs: list[InstrCost]
    layers: list[LayerCost]
    totals: dict[str, int] = field(default_factory=dict)
    latency_ms: float = 0.0
    utilisation: float = 0.0
    roofline_cycles: float = 0.0
    roofline_bound: str = ""
    roofline_ratio: float = 0.0  # roofline / estimate, in (0, 1]: how close to the board bound
    # Per layer kind (KINDS): estimate vs the pure board roofline (no AXI port limit, no vector unit).
    kinds: list[KindCost] = field(default_factory=list)
    # resource -> {"used", "budget", "board"} (DSP, BRAM36, URAM, LUT of the tiling)
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    tiling_summary: str = ""
    tiling_detail: dict = field(default_factory=dict)  # Tiling.to_json(): buffers, breakdowns

    def to_json(self) -> dict:
        d = asdict(self)
        for row, ins in zip(d["instrs"], self.instrs):
            row.update(compute_cycles=ins.compute_cycles, ddr_bytes=ins.ddr_bytes)
        return d

    def resource_table(self) -> str:
        head = f"{'resource':<10}{'used':>10}{'budget':>10}{'board':>10}{'of budget':>11}{'of board':>10}"
        rows = [f"{name.upper():<10}{r['used']:>10,.0f}{r['budget']:>10,.0f}{r['board']:>10,.0f}"
                f"{_share(r['used'], r['budget']):>11}{_share(r['used'], r['board']):>10}"
                for name, r in self.resources.items()]
        return "\n".join([head, *rows])

    def kind_summary(self) -> str:
        parts = [f"{k.kind} {k.roofline_ratio:.1%} ({k.layers} layers, {k.cycles:,} cycles vs {k.board_roofline:,.0f})"
                 for k in self.kinds if k.layers]
        return "roofline/estimate by kind: " + "; ".join(parts)

    def summary(self) -> str:
        t, tot = self.tiling, self.totals
        return "\n".join([
            f"board {self.board} @ {self.clock_mhz:g} MHz, {t['P']}x{t['Q']} MAC array; one image, one task",
            f"total: {tot['macs']:,} MACs, {tot['cycles']:,} cycles = {self.latency_ms:.3f} ms "
            f"(x{self.num_tasks} tasks: {self.latency_ms * self.num_tasks:.3f} ms), "
            f"MAC utilisation {self.utilisation:.1%}",
            f"DDR: {tot['ddr_bytes']:,} bytes ({tot['weight_bytes']:,} weights) at "
            f"{self.ddr_bytes_per_cycle:.1f} B/cycle DDR, {self.axi_bytes_per_cycle:.0f} B/cycle per AXI channel, "
            f"{self.weight_ports} weight port(s)",
            f"roofline: {self.roofline_cycles:,.0f} cycles ({self.roofline_bound}-bound), "
            f"{self.roofline_ratio:.1%} of the estimate",
        ] + [f"assumption: {a}" for a in self.assumptions])

    def table(self) -> str:
        w = max([len("layer")] + [len(l.name) for l in self.layers]) + 2
        head = (f"{'layer':<{w}}{'kind':>13}{'instrs':>7}{'MACs':>15}{'compute':>12}{'memory':>12}{'cycles':>12}"
                f"{'DDR bytes':>14}{'bound':>9}{'util':>7}{'roofline':>10}{'roof/est':>9}")
        rows = [f"{l.name:<{w}}{l.kind:>13}{l.instrs:>7}{l.macs:>15,}{l.compute_cycles:>12,}{l.memory_cycles:>12,}"
                f"{l.cycles:>12,}{l.ddr_bytes:>14,}{l.bound:>9}{l.utilisation:>7.1%}{l.board_roofline:>10,.0f}"
                f"{l.roofline_ratio:>9.1%}" for l in self.layers]
        tot = self.totals
        board_roof = sum(k.board_roofline for k in self.kinds)
        total = (f"{'TOTAL':<{w}}{'':>13}{len(self.instrs):>7}{tot['macs']:>15,}{tot['compute_cycles']:>12,}"
                 f"{tot['memory_cycles']:>12,}{tot['cycles']:>12,}{tot['ddr_bytes']:>14,}{'':>9}"
                 f"{self.utilisation:>7.1%}{board_roof:>10,.0f}{_share(board_roof, tot['cycles']):>9}")
        rule = "-" * len(head)
        out = [head, rule, *rows, rule, total, "", self.kind_summary(),
               "(roofline = max(MACs / (P*Q), DDR bytes / sustained DDR bytes per cycle): the board bound, "
               "without the AXI port limit and vector-unit cycles)", ""]
        if self.resources:
            out += [self.tiling_summary, self.resource_table(), ""]
        return "\n".join(out + [self.summary()])


# ---------------------------------------------------------------- expert routing

def expert_counts_from_golden(qm: QuantModel, x_q, task: int) -> dict[str, list[int]]:
    """Tokens routed to each expert of each MoE block, from a bit-exact golden run."""
    routing = run_golden(qm, x_q, task).routing
    experts = qm.cfg.num_experts
    return {f"b{block}": np.bincount(np.asarray(ids).ravel(), minlength=experts).tolist()
            for block, ids in sorted(routing.items())}


def resolve_expert_counts(prog: Program, expert_counts: dict[str, list[int]] | None
                          ) -> tuple[dict[str, list[int]], list[str]]:
    """Checked counts for every MoE block (uniform where not given) and notes on what was assumed."""
    given = {_block_name(k): list(v) for k, v in (expert_counts or {}).items()}
    gates = gate_instrs(prog)
    unknown = sorted(set(given) - set(gates))
    if unknown:
        raise ValueError(f"expert_counts for unknown MoE block(s) {unknown}; MoE blocks: {sorted(gates)}")
    counts, uniform = {}, []
    for block, g in gates.items():
        if block in given:
            counts[block] = _checked_counts(block, given[block], g)
        else:
            counts[block] = uniform_expert_counts(g.args["tokens"], g.args["top_k"], g.args["experts"])
            uniform.append(block)
    notes = []
    if uniform:
        g = gates[uniform[0]]
        notes.append(f"expert counts of {', '.join(uniform)} assumed uniform: tokens*top_k/experts = "
                     f"{g.args['tokens']}*{g.args['top_k']}/{g.args['experts']} tokens per expert "
                     f"(every expert active: worst case for weight traffic)")
    return counts, notes


def _block_name(key: str) -> str:
    return key[:-len(".moe")] if key.endswith(".moe") else key


def _checked_counts(block: str, counts: list[int], gate: Instr) -> list[int]:
    experts, tokens = gate.args["experts"], gate.args["tokens"]
    if len(counts) != experts:
        raise ValueError(f"expert_counts[{block!r}] has {len(counts)} entries, the block has {experts} experts")
    if any(not 0 <= int(c) <= tokens for c in counts):
        raise ValueError(f"expert_counts[{block!r}] must be in 0..{tokens} (tokens), got {counts}")
    return [int(c) for c in counts]


# ---------------------------------------------------------------- one instruction

def report_layer(prog: Program, ins: Instr) -> str:
    m = _MOE_PART.match(ins.layer)
    return f"{m['block']}.moe" if m and m["block"] in prog.moe_layers else ins.layer


def forwarded_operands(prog: Program, act_banks: int = 2) -> set[int]:
    """Indices of the instructions whose A operand (MATMUL) or x rows (GATE) the kernel still holds
    on chip in an A bank: exactly the rows the previous MATMUL (no SCATTER) or LAYERNORM wrote, no
    GATHER, and an output no wider than the A buffer. A GATE leaves the bank as it is. With one A
    bank (act_banks=1) only LayerNorm outputs stay. Mirrors op_matmul / op_layernorm / op_gate in
    hls_templates/firmware/codesign_top.cpp.j2."""
    max_k = program_sizes(prog).max_k
    max_m = max([i.args["m"] for i in prog.instrs if i.op == Op.MATMUL] +
                [i.args["tokens"] for i in prog.instrs if i.op == Op.GATE], default=0)
    out: set[int] = set()
    fwd = None  # (addr, stride, n, rows bound, DYNM count_addr or None)
    for i, ins in enumerate(prog.instrs):
        a = ins.args
        if ins.op == Op.MATMUL:
            dynm = a["count_addr"] if ins.flags & Flag.DYNM else None
            if (fwd and not ins.flags & Flag.GATHER and (a["a_addr"], a["a_stride"]) == fwd[:2] and a["k"] <= fwd[2]
                    and a["m"] <= fwd[3] and fwd[4] in (None, dynm)):
                out.add(i)
            keep = act_banks == 2 and not ins.flags & Flag.SCATTER and a["n"] <= max_k
            fwd = (a["out_addr"], a["out_stride"], a["n"], a["m"], dynm) if keep else None
        elif ins.op == Op.LAYERNORM:
            keep = a["dim"] <= max_k and a["rows"] <= max_m
            fwd = (a["out_addr"], a["dim"], a["dim"], a["rows"], None) if keep else None
        elif ins.op == Op.GATE:
            if fwd and (a["x_addr"], a["dim"]) == fwd[:2] and a["dim"] <= fwd[2] and a["tokens"] <= fwd[3] \
                    and fwd[4] is None:
                out.add(i)
            else:
                fwd = None
        else:
            fwd = None
    return out


def vector_cycles(ins: Instr, rows: int, Q: int, P: int = 1, axi_bpc: float = 16) -> int:
    """Vector-unit cycles not hidden behind the MAC array (see the pass model above)."""
    a = ins.args
    if ins.op == Op.LAYERNORM:
        return a["rows"] * LAYERNORM_PASSES * math.ceil(a["dim"] / Q)
    if ins.op in (Op.ADD, Op.REQUANT32):
        return math.ceil(a["count"] / Q)
    if ins.op == Op.GATE:
        # One step per token (route_tokens: softmax, top_k and list slots with the experts
        # unrolled, the lazy clear's mark), then the counts and lists written out.
        t, e, k = a["tokens"], a["experts"], a["top_k"]
        return t + math.ceil((4 * e + 2 * 4 * t * k) / axi_bpc)
    return 0



def on_chip_acc(prog: Program, enabled: bool = True) -> set[int]:
    """Indices of the GATEs, SCATTERs and REQUANT32s that use the kernel's on-chip MoE accumulator
    (MoeAcc in hls_templates/firmware/codesign_top.cpp.j2; `enabled`: Tiling.acc_on_chip): a GATE
    that clears it without DDR writes, the whole-row SCATTERs into it and the REQUANT32 that reads
    it whole. Any other instruction touching it (or any other non-MATMUL) sends it to DDR."""
    out: set[int] = set()
    acc = None  # (addr, bytes, dim, elements) of the live on-chip accumulator
    for i, ins in enumerate(prog.instrs if enabled else ()):
        a = ins.args
        if ins.op == Op.GATE:
            out.add(i)
            acc = (a["acc_addr"], 4 * a["tokens"] * a["dim"], a["dim"], a["tokens"] * a["dim"])
        elif acc and ins.op == Op.MATMUL and ins.flags & Flag.SCATTER and \
                (a["out_addr"], a["out_stride"], a["n"]) == (acc[0], acc[2], acc[2]):
            out.add(i)
        elif acc and ins.op == Op.REQUANT32 and (a["src_addr"], a["count"]) == (acc[0], acc[3]):
            out.add(i)
            acc = None
        elif ins.op != Op.MATMUL or _touches(ins, acc, prog.elem_bytes):
            acc = None
    return out


def _touches(ins: Instr, acc: tuple | None, eb: int) -> bool:
    """A MATMUL whose A rows or output overlap the accumulator (op_matmul's acc_overlaps)."""
    if acc is None:
        return False
    a, out_eb = ins.args, 4 if ins.flags & Flag.SCATTER else eb
    spans = [(a["a_addr"], eb * a["a_stride"] * a["m"]), (a["out_addr"], out_eb * a["out_stride"] * a["m"])]
    return any(addr < acc[0] + acc[1] and acc[0] < addr + n for addr, n in spans)


def isa_extra_bytes(ins: Instr, rows: int, acc_on_chip: bool, cached: set[str]) -> int:
    """Bytes the plain ISA dataflow moves on top of the HLS kernel's ddr_bytes: GATE's zeros in
    the accumulator, the SCATTERs' read-modify-writes of it and the REQUANT32's read of it when
    it is on chip, lists read again."""
    a = ins.args
    if ins.op == Op.GATE:  # the zeros
        return 4 * a["tokens"] * a["dim"] if acc_on_chip else 0
    if ins.op == Op.REQUANT32:  # the int32 reads
        return 4 * a["count"] if acc_on_chip else 0
    if ins.op != Op.MATMUL:
        return 0
    count = 4 if "count" in cached else 0
    ids = 4 * rows if "ids" in cached and rows else 0
    acc = 2 * 4 * rows * a["n"] if acc_on_chip and rows else 0
    return count + ids + acc


def ddr_bytes(prog: Program, ins: Instr, rows: int, a_on_chip: bool = False, acc_on_chip: bool = False,
              cached: set[str] = frozenset()) -> tuple[int, int, int]:
    """(weight bytes, activation bytes read, activation bytes written) of one instruction;
    `acc_on_chip`: a SCATTER / REQUANT32 of the on-chip MoE accumulator (on_chip_acc); `cached`:
    what the kernel's ListCache holds (cached_lists)."""
    eb, a = prog.elem_bytes, ins.args
    if ins.op == Op.MATMUL:
        return _matmul_bytes(ins, rows, eb, prog.abits, a_on_chip, acc_on_chip, cached)
    if ins.op == Op.ATTN:
        d = a["heads"] * a["head_dim"]
        return 0, a["tokens"] * 3 * d * eb, a["tokens"] * d * eb
    if ins.op == Op.LAYERNORM:
        n = a["rows"] * a["dim"] * eb
        return 2 * 4 * a["dim"], n, n
    if ins.op == Op.ADD:
        n = a["count"] * eb
        return (n, n, n) if ins.flags & Flag.B_WGT else (0, 2 * n, n)
    if ins.op == Op.GATE:
        t, d, e, k = a["tokens"], a["dim"], a["experts"], a["top_k"]
        # One task's gate; writes counts, idx and score lists, and zeros the accumulator unless it is on chip.
        zeros = 0 if acc_on_chip else 4 * t * d
        return e * d * eb + 4 * e, 0 if a_on_chip else t * d * eb, 4 * e + 2 * 4 * t * k + zeros
    if ins.op == Op.REQUANT32:
        return 0, 0 if acc_on_chip else 4 * a["count"], a["count"] * eb
    return 0, 0, 0


def _matmul_bytes(ins: Instr, rows: int, eb: int, abits: int, a_on_chip: bool, acc_on_chip: bool = False,
                  cached: set[str] = frozenset()) -> tuple[int, int, int]:
    a, f = ins.args, ins.flags
    count = 4 if f & Flag.DYNM and "count" not in cached else 0
    if rows == 0:
        return 0, count, 0  # an unused expert: only its count is read
    n, k = a["n"], a["k"]
    weights = n * k * eb + 2 * 4 * n + ((1 << abits) * eb if f & Flag.GELU else 0)  # W, bias, mult, LUT
    ids = f & (Flag.GATHER | Flag.SCATTER) and "ids" not in cached
    lists = 4 * rows * ((1 if ids else 0) + (1 if f & Flag.SCATTER else 0))
    a_read = 0 if a_on_chip else rows * k * eb
    if f & Flag.SCATTER and acc_on_chip:
        return weights, count + lists + a_read, 0
    if f & Flag.SCATTER:  # read-modify-write of the int32 accumulator rows in DDR
        return weights, count + lists + a_read + 4 * rows * n, 4 * rows * n
    return weights, count + lists + a_read, rows * n * eb


def tile_read_beats(cols: int, k: int, eb: int, axi_bpc: float, ports: int, has_mult: bool = True) -> int:
    """Cycles to read one weight tile of `cols` rows of k elements with its bias and multipliers:
    the busiest port's beats (port p: rows p, p + ports, ...; the bias after the rows of port
    ports-1, the multipliers after those of port (ports-2) % ports), one beat per cycle."""
    if cols == 0:
        return 0
    row_beats = math.ceil(k * eb / axi_bpc)
    col_beats = math.ceil(4 * cols / axi_bpc)
    extra = [0] * ports
    extra[ports - 1] += col_beats
    if has_mult:
        extra[(ports - 2) % ports] += col_beats
    return max(math.ceil(max(0, cols - p) / ports) * row_beats + extra[p] for p in range(ports))


def matmul_prologue(ins: Instr, rows: int, P: int, Q: int, eb: int, axi_bpc: float, a_on_chip: bool,
                    weight_ports: int = 1) -> int:
    """Cycles of a MAC-array instruction that nothing overlaps (the kernel's mac_run): weight tile 0
    is read before the array starts; during tile 0 the A rows (a SCATTER's scores) and weight
    tile 1 stream in (one after the other when the weights share gmem, side by side otherwise),
    and whatever of that outlasts tile 0's compute stalls the array. One AXI beat per cycle and
    port."""
    a = ins.args
    if ins.op == Op.MATMUL:
        n, k, has_mult = a["n"], a["k"], True
    elif ins.op == Op.GATE:
        n, k, rows, has_mult = a["experts"], a["dim"], a["tokens"], False
    else:
        return 0
    if rows == 0:
        return 0
    tile0 = tile_read_beats(min(Q, n), k, eb, axi_bpc, weight_ports, has_mult)
    tile1 = tile_read_beats(min(Q, max(0, n - Q)), k, eb, axi_bpc, weight_ports, has_mult)
    a_beats = 0 if a_on_chip else rows * math.ceil(k * eb / axi_bpc)
    if ins.op == Op.MATMUL and ins.flags & Flag.SCATTER:
        a_beats += math.ceil(4 * rows / axi_bpc)  # the router scores
    reads = a_beats + tile1 if weight_ports == 1 else max(a_beats, tile1)
    return tile0 + max(0, reads - math.ceil(rows / P) * k)


def cached_lists(prog: Program) -> list[set[str]]:
    """Per instruction, what op_matmul finds in the kernel's ListCache: "count" when the GATE
    that wrote the expert counts ran before it with only MATMULs in between, "ids" when the
    MATMUL just before it read the same token list (an expert's fc2 after its fc1)."""
    out, gate, prev = [], None, None
    lists = Flag.GATHER | Flag.SCATTER
    for ins in prog.instrs:
        hits = set()
        if ins.op == Op.MATMUL:
            a = ins.args
            if ins.flags & Flag.DYNM and gate is not None and \
                    0 <= a["count_addr"] - gate["counts_addr"] < 4 * gate["experts"]:
                hits.add("count")
            if prev is not None and ins.flags & lists and prev.flags & lists and a["idx_addr"] == prev.args["idx_addr"]:
                hits.add("ids")
            prev = ins
        else:
            gate = ins.args if ins.op == Op.GATE else None
            prev = None
        out.append(hits)
    return out


def matmul_preamble(prog: Program, ins: Instr, rows: int, axi_bpc: float, cached: set[str] = frozenset(),
                    weight_ports: int = 1) -> int:
    """Serial loads of a MATMUL before its MAC pipeline starts (op_matmul), each a DDR round trip
    and its beats: the token count, then the token list (gmem) and the GELU table (a weight port)
    side by side, one after the other when the weights share gmem; `cached`: what the ListCache
    already holds (cached_lists)."""
    if ins.op != Op.MATMUL:
        return 0
    f = ins.flags

    def burst(beats: int) -> int:
        return DDR_ROUND_TRIP_CYCLES + beats if beats else 0

    count = burst(1) if f & Flag.DYNM and "count" not in cached else 0
    ids = burst(math.ceil(4 * rows / axi_bpc)) if rows and f & (Flag.GATHER | Flag.SCATTER) and "ids" not in cached else 0
    gelu = burst(math.ceil((1 << prog.abits) * prog.elem_bytes / axi_bpc)) if rows and f & Flag.GELU else 0
    return count + (ids + gelu if weight_ports == 1 else max(ids, gelu))


def attn_ends(ins: Instr, t: Tiling, eb: int, axi_bpc: float) -> tuple[int, int]:
    """(prologue, tail) of an ATTN that nothing overlaps (op_attn): head 0's K, V and first query
    block read before the first scores loop, a DDR round trip and a beat per cycle; the last
    block's rows normalised, a row per cycle, and written. Every other read and write streams
    beside the key loops, and each block's exp weights are taken in its output loop."""
    if ins.op != Op.ATTN:
        return 0, 0
    a = ins.args
    qb = min(attn_query_block(t.P, t.Q, t.max_head_dim, t.max_tokens), a["tokens"])
    row_beats = math.ceil(a["head_dim"] * eb / axi_bpc)
    last = a["tokens"] - (math.ceil(a["tokens"] / qb) - 1) * qb
    return DDR_ROUND_TRIP_CYCLES + (2 * a["tokens"] + qb) * row_beats, last * (1 + row_beats)


def drain_tail(ins: Instr, rows: int, P: int, Q: int, axi_bpc: float, eb: int, acc_on_chip: bool = False) -> int:
    """The drain of a MATMUL's last row block, after the array's last step (the earlier blocks
    drain while the array computes the next): one beat of outputs per cycle, for a SCATTER into
    DDR int32 beats, into the on-chip accumulator one element per bank (a beat's worth of elements)."""
    if ins.op != Op.MATMUL or not rows:
        return 0
    n = ins.args["n"]
    last_rows, last_cols = rows - (math.ceil(rows / P) - 1) * P, n - (math.ceil(n / Q) - 1) * Q
    out_bytes = 4 if ins.flags & Flag.SCATTER and not acc_on_chip else eb
    return last_rows * math.ceil(last_cols * out_bytes / axi_bpc)


def matmul_epilogue(ins: Instr, rows: int, P: int, Q: int, axi_bpc: float, acc_on_chip: bool = False) -> int:
    """The last weight tile's reduction steps, which no read overlaps but a SCATTER's reads of
    that tile's old accumulator rows from DDR."""
    a = ins.args
    if ins.op == Op.MATMUL:
        if not rows:
            return 0
        last_cols = a["n"] - (math.ceil(a["n"] / Q) - 1) * Q
        acc_in_ddr = ins.flags & Flag.SCATTER and not acc_on_chip
        acc_reads = rows * math.ceil(last_cols * 4 / axi_bpc) if acc_in_ddr else 0
        return max(0, math.ceil(rows / P) * a["k"] - acc_reads)
    if ins.op == Op.GATE:
        return math.ceil(a["tokens"] / P) * a["dim"]
    return 0


def transfer_cycles(wgt_read: float, act_read: float, write: float, ddr_bpc: float, axi_bpc: float,
                    weight_ports: int = 1) -> int:
    """Cycles to move the bytes: gmem's read and write channels, the weight ports (gmem's read
    channel when there is only one), and the DDR that all of them share."""
    if weight_ports == 1:
        read = (wgt_read + act_read) / axi_bpc
    else:
        read = max(wgt_read / (weight_ports * axi_bpc), act_read / axi_bpc)
    return math.ceil(max(read, write / axi_bpc, (wgt_read + act_read + write) / ddr_bpc))


def instr_cost(prog: Program, t: Tiling, board: Board, index: int, ins: Instr, rows: int,
               a_on_chip: bool = False, acc_on_chip: bool = False, cached: set[str] = frozenset(),
               read_ahead: int = 0, skipped: bool = False) -> InstrCost:
    """`acc_on_chip`: a SCATTER or REQUANT32 of the on-chip MoE accumulator (on_chip_acc);
    `skipped`: an unused expert the kernel does not dispatch (skipped_experts);
    `cached`: the count / token list the kernel still holds from the previous MATMUL (cached_lists);
    `read_ahead`: cycles of weight tile 0 the previous MATMUL read during its last tile (read_ahead_cycles)."""
    passes = array_passes(ins, rows)
    macs = sum(M * N * K for M, N, K in passes)
    arr = instr_array_cycles(ins, rows, t.P, t.Q, t.max_head_dim, t.max_tokens)
    axi_bpc, ports = axi_bytes_per_cycle(board), read_ports(ins, board)
    attn_prologue, attn_tail = attn_ends(ins, t, prog.elem_bytes, axi_bpc)
    vec = (vector_cycles(ins, rows, t.Q, t.P, axi_bpc) + attn_tail
           + drain_tail(ins, rows, t.P, t.Q, axi_bpc, prog.elem_bytes, acc_on_chip))
    wgt, rd, wr = ddr_bytes(prog, ins, rows, a_on_chip, acc_on_chip, cached)
    mem = transfer_cycles(wgt, rd, wr, board.ddr_bytes_per_cycle, axi_bpc, ports)
    prologue = (matmul_prologue(ins, rows, t.P, t.Q, prog.elem_bytes, axi_bpc, a_on_chip, ports) - read_ahead
                + matmul_preamble(prog, ins, rows, axi_bpc, cached, ports))
    epilogue = matmul_epilogue(ins, rows, t.P, t.Q, axi_bpc, acc_on_chip)
    prologue += layernorm_preamble(ins, axi_bpc) + attn_prologue
    overhead = instr_overhead(ins, rows, board, skipped) + (program_load_cycles(prog, board) if index == 0 else 0)
    return InstrCost(index, report_layer(prog, ins), ins.layer, ins.op.name, rows, macs, arr, vec, wgt, rd, wr,
                     mem, max(arr + vec + prologue, mem + epilogue) + overhead, prologue, epilogue,
                     isa_extra_bytes(ins, rows, acc_on_chip, cached), overhead)


def fetch_cycles(board: Board) -> int:
    """Cycles to read one 64-byte instruction from the kernel's on-chip program."""
    return PROGRAM_READ_LATENCY + math.ceil(4 * WORDS / axi_bytes_per_cycle(board))


def program_load_cycles(prog: Program, board: Board) -> int:
    """The kernel's one read of the whole program (END included) before instruction 0: one burst."""
    return DDR_ROUND_TRIP_CYCLES + math.ceil(len(prog.code) / axi_bytes_per_cycle(board))


def instr_overhead(ins: Instr, rows: int, board: Board, skipped: bool = False) -> int:
    """Cycles of an instruction besides its compute and transfers: its fetch, then its pipelines'
    fill and drain, or for an expert MATMUL with no rows only SKIPPED_INSTR_CYCLES (the DDR read of
    its count, when not on chip, is in matmul_preamble); only the fetch when it is not dispatched
    (`skipped`: skipped_experts)."""
    if skipped:
        return fetch_cycles(board)
    return fetch_cycles(board) + (SKIPPED_INSTR_CYCLES if ins.op == Op.MATMUL and rows == 0 else INSTR_OVERHEAD_CYCLES)


def skipped_experts(prog: Program, rows: list[int], cached: list[set[str]]) -> set[int]:
    """Indices of the unused experts the kernel does not dispatch: right after a MATMUL, an expert
    MATMUL whose count (on chip from the GATE) is 0 (skip_unused_experts in the kernel)."""
    return {i for i in range(1, len(prog.instrs))
            if prog.instrs[i].op == prog.instrs[i - 1].op == Op.MATMUL and rows[i] == 0 and "count" in cached[i]}


def layernorm_preamble(ins: Instr, axi_bpc: float) -> int:
    """LayerNorm's gamma and beta, each read in its own burst before its row loop (op_layernorm)."""
    if ins.op != Op.LAYERNORM:
        return 0
    return 2 * (DDR_ROUND_TRIP_CYCLES + math.ceil(4 * ins.args["dim"] / axi_bpc))


def read_ports(ins: Instr, board: Board) -> int:
    """Weight ports that read beside gmem: none for ADD, whose one loop reads b (under B_WGT the
    position table in wgt) after a, a beat a cycle (op_add)."""
    return 1 if ins.op == Op.ADD else board.memory.weight_ports


def read_ahead_cycles(prog: Program, t: Tiling, board: Board, prev: InstrCost | None, ins: Instr, rows: int,
                      cached: set[str]) -> int:
    """Cycles of a MATMUL's weight tile 0 that the MATMUL before it (`prev`: the last one that ran,
    with only skipped experts since) read during its last tile (the kernel's WeightAhead): when this
    one's rows are known on chip (not DYNM, or its count from the GATE) and the one before has the
    tiles for it (a SCATTER 2, others 3), the previous last tile's compute, up to the whole tile 0."""
    if ins.op != Op.MATMUL or prev is None or prev.op != "MATMUL" or not prev.rows or not rows:
        return 0
    if ins.flags & Flag.DYNM and "count" not in cached:
        return 0
    before = prog.instrs[prev.index]
    if math.ceil(before.args["n"] / t.Q) < (2 if before.flags & Flag.SCATTER else 3):
        return 0
    a = ins.args
    tile0 = tile_read_beats(min(t.Q, a["n"]), a["k"], prog.elem_bytes, axi_bytes_per_cycle(board),
                            board.memory.weight_ports)
    return min(prev.epilogue_cycles, tile0)


def axi_bytes_per_cycle(board: Board) -> float:
    return board.memory.axi_data_bits / 8


# ---------------------------------------------------------------- the whole program

def group_layers(costs: list[InstrCost], macs_per_cycle: int, ddr_bpc: float = 0.0) -> list[LayerCost]:
    groups: dict[str, list[InstrCost]] = {}
    for c in costs:
        groups.setdefault(c.layer, []).append(c)
    return [layer_cost(name, cs, macs_per_cycle, ddr_bpc) for name, cs in groups.items()]


def layer_kind(cs: list[InstrCost]) -> str:
    ops = {c.op for c in cs}
    if "ATTN" in ops:
        return "attention"
    if "GATE" in ops or any(c.layer.endswith(".moe") for c in cs):
        return "moe"
    if "MATMUL" in ops:
        return "dense matmul"
    return "vector ops"


def board_roofline(macs: int, ddr_bytes: int, macs_per_cycle: int, ddr_bpc: float) -> float:
    """The pure board bound: MAC array peak and sustained DDR bandwidth, nothing else."""
    return max(macs / macs_per_cycle, ddr_bytes / ddr_bpc if ddr_bpc else 0.0)


def layer_cost(name: str, cs: list[InstrCost], macs_per_cycle: int, ddr_bpc: float = 0.0) -> LayerCost:
    macs, cycles = sum(c.macs for c in cs), sum(c.cycles for c in cs)
    compute, memory = sum(c.compute_cycles for c in cs), sum(c.memory_cycles for c in cs)
    ddr = sum(c.ddr_bytes for c in cs)
    roof = board_roofline(macs, ddr, macs_per_cycle, ddr_bpc)
    return LayerCost(name, len(cs), macs, compute, memory, cycles, sum(c.weight_bytes for c in cs),
                     ddr, "compute" if compute >= memory else "memory",
                     macs / (macs_per_cycle * cycles) if cycles else 0.0,
                     layer_kind(cs), roof, roof / cycles if cycles else 0.0,
                     ddr + sum(c.isa_extra_bytes for c in cs))


def kind_costs(layers: list[LayerCost]) -> list[KindCost]:
    out = []
    for kind in KINDS:
        ls = [l for l in layers if l.kind == kind]
        cycles, roof = sum(l.cycles for l in ls), sum(l.board_roofline for l in ls)
        out.append(KindCost(kind, len(ls), sum(l.macs for l in ls), sum(l.ddr_bytes for l in ls), cycles, roof,
                            roof / cycles if cycles else 0.0))
    return out


def resource_use(t: Tiling, board: Board, dsp_fraction: float = 0.8, mem_fraction: float = 0.8
                 ) -> dict[str, dict[str, float]]:
    """used / budget / board total of DSP, BRAM36, URAM and LUT for the tiling."""
    budget = Budget(board, dsp_fraction, mem_fraction)
    return {r: {"used": getattr(t, r), "budget": budget.limit(r), "board": getattr(board.resources, r)}
            for r in ("dsp", "bram36", "uram", "lut")}


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def sum_totals(costs: list[InstrCost]) -> dict[str, int]:
    return {key: sum(getattr(c, key) for c in costs)
            for key in ("macs", "array_cycles", "vector_cycles", "compute_cycles", "memory_cycles", "cycles",
                        "weight_bytes", "act_read_bytes", "act_write_bytes", "ddr_bytes")}


def estimate(prog: Program, tiling: Tiling, board: Board, expert_counts: dict[str, list[int]] | None = None
             ) -> Estimate:
    """Cycles, bytes and latency of one inference (one image, one task) of `prog` on `board`."""
    counts, notes = resolve_expert_counts(prog, expert_counts)
    forwarded = forwarded_operands(prog, tiling.act_banks)
    rows = instr_rows(prog, counts)
    acc_users = on_chip_acc(prog, tiling.acc_on_chip)
    cached = cached_lists(prog)
    skipped = skipped_experts(prog, rows, cached)
    costs: list[InstrCost] = []
    ran = None  # the last MATMUL that ran, with only skipped experts since
    for i, (ins, r) in enumerate(zip(prog.instrs, rows)):
        ahead = read_ahead_cycles(prog, tiling, board, ran, ins, r, cached[i])
        costs.append(instr_cost(prog, tiling, board, i, ins, r, i in forwarded, i in acc_users, cached[i], ahead,
                                i in skipped))
        if i not in skipped:
            ran = costs[-1] if ins.op == Op.MATMUL and r else None
    totals = sum_totals(costs)
    peak = tiling.macs_per_cycle
    ddr_bpc, axi_bpc = board.ddr_bytes_per_cycle, axi_bytes_per_cycle(board)
    compute_bound = totals["macs"] / peak
    memory_bound = transfer_cycles(totals["weight_bytes"], totals["act_read_bytes"], totals["act_write_bytes"],
                                   ddr_bpc, axi_bpc, board.memory.weight_ports)
    roofline = max(compute_bound, memory_bound)
    layers = group_layers(costs, peak, ddr_bpc)
    return Estimate(
        board=board.name, clock_mhz=board.clock_mhz, tiling=tiling_params(tiling), num_tasks=prog.num_tasks,
        ddr_bytes_per_cycle=ddr_bpc, axi_bytes_per_cycle=axi_bpc, weight_ports=board.memory.weight_ports,
        expert_counts=counts,
        assumptions=notes + model_notes(tiling, board), instrs=costs, layers=layers, totals=totals,
        latency_ms=totals["cycles"] / board.clock_hz * 1e3,
        utilisation=totals["macs"] / (peak * totals["cycles"]) if totals["cycles"] else 0.0,
        roofline_cycles=roofline, roofline_bound="compute" if compute_bound >= memory_bound else "memory",
        roofline_ratio=roofline / totals["cycles"] if totals["cycles"] else 0.0,
        kinds=kind_costs(layers), resources=resource_use(tiling, board, *tiling_fractions(tiling)),
        tiling_summary=tiling.summary(), tiling_detail=tiling.to_json(),
    )


def tiling_fractions(t: Tiling) -> tuple[float, float]:
    """The budget fractions the tiling was chosen with."""
    return t.dsp_fraction, t.mem_fraction


def _weight_port_text(ports: int) -> str:
    return f"{ports} weight masters side by side" if ports > 1 else "the weights on gmem's read channel"


def model_notes(t: Tiling, board: Board) -> list[str]:
    return [
        f"program loaded from DDR once per run, before instruction 0 (one round trip and its beats); an "
        f"instruction then costs its on-chip fetch ({fetch_cycles(board)} cycles) and {INSTR_OVERHEAD_CYCLES} "
        f"cycles of pipeline fill/drain, an expert MATMUL with no tokens {SKIPPED_INSTR_CYCLES} instead "
        f"(plus its count's DDR round trip when the count is not on chip), or only its fetch right after a MATMUL "
        f"(not dispatched)",
        "LayerNorm: gamma and beta loaded serially before its row loop (a DDR round trip each); ADD: b read "
        "after a in the same loop, also from wgt",
        f"vector unit: {t.Q} elements/cycle; requant/GELU pipelined into the MAC drain",
        "MAC-array instructions: weight tile 0, A rows + tile 1 beyond tile 0's compute, and the last tile's "
        "compute are not overlapped with the other stream",
        f"serial loads before a MATMUL's pipeline (its count, then its token list beside the GELU table): "
        f"{DDR_ROUND_TRIP_CYCLES} cycles of DDR round trip each, plus their beats",
        f"DDR through {board.memory.axi_data_bits}-bit AXI masters, {axi_bytes_per_cycle(board):g} B/cycle per channel: "
        f"gmem (activations, program) and {_weight_port_text(board.memory.weight_ports)}; "
        f"{board.ddr_bytes_per_cycle:.1f} B/cycle of sustained DDR shared by all",
        "a MATMUL's output stays on chip for a directly following MATMUL that reads it (MoE hidden rows fc1 -> fc2, "
        "dense MLP hidden rows); the int32 MoE accumulator is on chip from its GATE to its REQUANT32 (no DDR traffic "
        "for it, cleared lazily)",
        "attention: blocks of P*Q/head_dim queries meet one key per cycle, scores then e.v with exp/sum fused; "
        "max kept as the scores come, normalisation of the outputs only; Q/K/V reads and output writes beside "
        "the key loops but head 0's K, V and first block and the last block's rows",
        "roofline peak: the P*Q array's MACs per cycle; bytes at the same DDR/AXI rates as the estimate",
    ]
