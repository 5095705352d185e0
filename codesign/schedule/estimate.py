"""Analytical latency model of a program on the tiled accelerator (see codesign.schedule.tiling).

Per instruction:
* MAC-array cycles: ceil(M/P) * ceil(N/Q) * K for each product it runs (K is sequential).
* Vector-unit cycles at Q elements per cycle (VECTOR_PASSES below); requantisation and GELU of a
  MATMUL are pipelined into the array's drain and cost nothing extra.
* DDR bytes: weights read once per instruction (weight tiles are double-buffered, activations
  held on chip), activations as the instruction reads / writes them, except a MoE expert's
  hidden rows, which stay in the on-chip MoE hidden buffer between fc1 and fc2. An expert with
  no tokens reads only its count.
* Memory cycles: reads and writes use separate AXI channels of the single m_axi_gmem port
  (axi_data_bits per cycle each) and share the DDR (board.ddr_bytes_per_cycle).
* cycles = max(compute, memory) + INSTR_OVERHEAD_CYCLES: weight prefetch overlaps compute.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from ..boards import Board
from ..quant.golden import run_golden
from ..quant.qmodel import QuantModel
from .isa import Flag, Instr, Op
from .program import Program
from .tiling import (Tiling, array_cycles, array_passes, gate_instrs, instr_rows, tiling_params,
                     uniform_expert_counts)

# Instruction fetch (a 64-byte read: one PL->PS DDR round trip, ~0.5 us = ~100 cycles at 200 MHz)
# plus pipeline fill and drain. Paid by every instruction, including unused experts.
INSTR_OVERHEAD_CYCLES = 128
# Vector-unit passes over the data: layernorm (statistics, then normalise); softmax (max,
# exp and sum, normalise).
LAYERNORM_PASSES = 2
SOFTMAX_PASSES = 3

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

    @property
    def compute_cycles(self) -> int:
        return self.array_cycles + self.vector_cycles

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


@dataclass
class Estimate:
    board: str
    clock_mhz: float
    tiling: dict
    num_tasks: int
    ddr_bytes_per_cycle: float
    axi_bytes_per_cycle: float
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

    def to_json(self) -> dict:
        d = asdict(self)
        for row, ins in zip(d["instrs"], self.instrs):
            row.update(compute_cycles=ins.compute_cycles, ddr_bytes=ins.ddr_bytes)
        return d

    def summary(self) -> str:
        t, tot = self.tiling, self.totals
        return "\n".join([
            f"board {self.board} @ {self.clock_mhz:g} MHz, {t['P']}x{t['Q']} MAC array; one image, one task",
            f"total: {tot['macs']:,} MACs, {tot['cycles']:,} cycles = {self.latency_ms:.3f} ms "
            f"(x{self.num_tasks} tasks: {self.latency_ms * self.num_tasks:.3f} ms), "
            f"MAC utilisation {self.utilisation:.1%}",
            f"DDR: {tot['ddr_bytes']:,} bytes ({tot['weight_bytes']:,} weights) at "
            f"{self.ddr_bytes_per_cycle:.1f} B/cycle DDR, {self.axi_bytes_per_cycle:.0f} B/cycle per AXI channel",
            f"roofline: {self.roofline_cycles:,.0f} cycles ({self.roofline_bound}-bound), "
            f"{self.roofline_ratio:.1%} of the estimate",
        ] + [f"assumption: {a}" for a in self.assumptions])

    def table(self) -> str:
        w = max([len("layer")] + [len(l.name) for l in self.layers]) + 2
        head = (f"{'layer':<{w}}{'instrs':>7}{'MACs':>15}{'compute':>12}{'memory':>12}{'cycles':>12}"
                f"{'DDR bytes':>14}{'bound':>9}{'util':>7}")
        rows = [f"{l.name:<{w}}{l.instrs:>7}{l.macs:>15,}{l.compute_cycles:>12,}{l.memory_cycles:>12,}"
                f"{l.cycles:>12,}{l.ddr_bytes:>14,}{l.bound:>9}{l.utilisation:>7.1%}" for l in self.layers]
        tot = self.totals
        total = (f"{'TOTAL':<{w}}{len(self.instrs):>7}{tot['macs']:>15,}{tot['compute_cycles']:>12,}"
                 f"{tot['memory_cycles']:>12,}{tot['cycles']:>12,}{tot['ddr_bytes']:>14,}{'':>9}"
                 f"{self.utilisation:>7.1%}")
        rule = "-" * len(head)
        return "\n".join([head, rule, *rows, rule, total, "", self.summary()])


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


def hidden_addrs(prog: Program) -> set[int]:
    """act addresses of MoE hidden rows, which live in the on-chip MoE hidden buffer."""
    return {r.addr for name, r in prog.regions.items() if name.endswith("moe.hidden")}


def vector_cycles(ins: Instr, rows: int, Q: int) -> int:
    a = ins.args
    if ins.op == Op.MATMUL:
        # SCATTER: multiply by the score and add into the int32 accumulator row.
        return rows * math.ceil(a["n"] / Q) if ins.flags & Flag.SCATTER else 0
    if ins.op == Op.ATTN:
        return a["heads"] * a["tokens"] * SOFTMAX_PASSES * math.ceil(a["tokens"] / Q)
    if ins.op == Op.LAYERNORM:
        return a["rows"] * LAYERNORM_PASSES * math.ceil(a["dim"] / Q)
    if ins.op in (Op.ADD, Op.REQUANT32):
        return math.ceil(a["count"] / Q)
    if ins.op == Op.GATE:
        # Softmax of each token's logits, then top-k and the expert lists, one slot per cycle.
        return a["tokens"] * (SOFTMAX_PASSES * math.ceil(a["experts"] / Q) + a["top_k"])
    return 0


def ddr_bytes(prog: Program, ins: Instr, rows: int, on_chip: set[int]) -> tuple[int, int, int]:
    """(weight bytes, activation bytes read, activation bytes written) of one instruction."""
    eb, a = prog.elem_bytes, ins.args
    if ins.op == Op.MATMUL:
        return _matmul_bytes(ins, rows, eb, prog.abits, on_chip)
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
        # One task's gate; writes counts, idx and score lists, and zeroes the int32 accumulator.
        return e * d * eb + 4 * e, t * d * eb, 4 * e + 2 * 4 * t * k + 4 * t * d
    if ins.op == Op.REQUANT32:
        return 0, 4 * a["count"], a["count"] * eb
    return 0, 0, 0


def _matmul_bytes(ins: Instr, rows: int, eb: int, abits: int, on_chip: set[int]) -> tuple[int, int, int]:
    a, f = ins.args, ins.flags
    count = 4 if f & Flag.DYNM else 0
    if rows == 0:
        return 0, count, 0  # an unused expert: only its count is read
    n, k = a["n"], a["k"]
    weights = n * k * eb + 2 * 4 * n + ((1 << abits) * eb if f & Flag.GELU else 0)  # W, bias, mult, LUT
    lists = 4 * rows * ((1 if f & (Flag.GATHER | Flag.SCATTER) else 0) + (1 if f & Flag.SCATTER else 0))
    a_read = 0 if a["a_addr"] in on_chip else rows * k * eb
    if f & Flag.SCATTER:  # read-modify-write of the int32 accumulator rows
        return weights, count + lists + a_read + 4 * rows * n, 4 * rows * n
    out = 0 if a["out_addr"] in on_chip else rows * n * eb
    return weights, count + lists + a_read, out


def transfer_cycles(read: float, write: float, ddr_bpc: float, axi_bpc: float) -> int:
    return math.ceil(max(read / axi_bpc, write / axi_bpc, (read + write) / ddr_bpc))


def instr_cost(prog: Program, t: Tiling, board: Board, index: int, ins: Instr, rows: int,
               on_chip: set[int]) -> InstrCost:
    passes = array_passes(ins, rows)
    macs = sum(M * N * K for M, N, K in passes)
    arr = sum(array_cycles(M, N, K, t.P, t.Q) for M, N, K in passes)
    vec = vector_cycles(ins, rows, t.Q)
    wgt, rd, wr = ddr_bytes(prog, ins, rows, on_chip)
    mem = transfer_cycles(wgt + rd, wr, board.ddr_bytes_per_cycle, axi_bytes_per_cycle(board))
    return InstrCost(index, report_layer(prog, ins), ins.layer, ins.op.name, rows, macs, arr, vec, wgt, rd, wr,
                     mem, max(arr + vec, mem) + INSTR_OVERHEAD_CYCLES)


def axi_bytes_per_cycle(board: Board) -> float:
    return board.memory.axi_data_bits / 8


# ---------------------------------------------------------------- the whole program

def group_layers(costs: list[InstrCost], macs_per_cycle: int) -> list[LayerCost]:
    groups: dict[str, list[InstrCost]] = {}
    for c in costs:
        groups.setdefault(c.layer, []).append(c)
    return [layer_cost(name, cs, macs_per_cycle) for name, cs in groups.items()]


def layer_cost(name: str, cs: list[InstrCost], macs_per_cycle: int) -> LayerCost:
    macs, cycles = sum(c.macs for c in cs), sum(c.cycles for c in cs)
    compute, memory = sum(c.compute_cycles for c in cs), sum(c.memory_cycles for c in cs)
    return LayerCost(name, len(cs), macs, compute, memory, cycles, sum(c.weight_bytes for c in cs),
                     sum(c.ddr_bytes for c in cs), "compute" if compute >= memory else "memory",
                     macs / (macs_per_cycle * cycles) if cycles else 0.0)


def sum_totals(costs: list[InstrCost]) -> dict[str, int]:
    return {key: sum(getattr(c, key) for c in costs)
            for key in ("macs", "array_cycles", "vector_cycles", "compute_cycles", "memory_cycles", "cycles",
                        "weight_bytes", "act_read_bytes", "act_write_bytes", "ddr_bytes")}


def estimate(prog: Program, tiling: Tiling, board: Board, expert_counts: dict[str, list[int]] | None = None
             ) -> Estimate:
    """Cycles, bytes and latency of one inference (one image, one task) of `prog` on `board`."""
    counts, notes = resolve_expert_counts(prog, expert_counts)
    on_chip = hidden_addrs(prog)
    rows = instr_rows(prog, counts)
    costs = [instr_cost(prog, tiling, board, i, ins, r, on_chip) for i, (ins, r) in enumerate(zip(prog.instrs, rows))]
    totals = sum_totals(costs)
    peak = tiling.macs_per_cycle
    ddr_bpc, axi_bpc = board.ddr_bytes_per_cycle, axi_bytes_per_cycle(board)
    compute_bound = totals["macs"] / peak
    memory_bound = transfer_cycles(totals["weight_bytes"] + totals["act_read_bytes"], totals["act_write_bytes"],
                                   ddr_bpc, axi_bpc)
    roofline = max(compute_bound, memory_bound)
    return Estimate(
        board=board.name, clock_mhz=board.clock_mhz, tiling=tiling_params(tiling), num_tasks=prog.num_tasks,
        ddr_bytes_per_cycle=ddr_bpc, axi_bytes_per_cycle=axi_bpc, expert_counts=counts,
        assumptions=notes + model_notes(tiling, board), instrs=costs, layers=group_layers(costs, peak), totals=totals,
        latency_ms=totals["cycles"] / board.clock_hz * 1e3,
        utilisation=totals["macs"] / (peak * totals["cycles"]) if totals["cycles"] else 0.0,
        roofline_cycles=roofline, roofline_bound="compute" if compute_bound >= memory_bound else "memory",
        roofline_ratio=roofline / totals["cycles"] if totals["cycles"] else 0.0,
    )


def model_notes(t: Tiling, board: Board) -> list[str]:
    return [
        f"{INSTR_OVERHEAD_CYCLES} cycles fixed overhead per instruction (fetch, pipeline fill/drain)",
        f"vector unit: {t.Q} elements/cycle; requant/GELU pipelined into the MAC drain",
        f"DDR through the one {board.memory.axi_data_bits}-bit AXI master: {axi_bytes_per_cycle(board):g} B/cycle "
        f"per direction, {board.ddr_bytes_per_cycle:.1f} B/cycle of sustained DDR shared by both",
        "MoE hidden rows stay on chip between fc1 and fc2; the int32 MoE accumulator is in DDR",
        "roofline peak: the P*Q array's MACs per cycle; bytes at the same DDR/AXI rates as the estimate",
    ]
