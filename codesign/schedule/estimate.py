"""Cycle model of a program on the compute unit (docs/UARCH.md), evaluating docs/SCHEDULE.md.

Two streams run side by side, as in the core:
* the **weight engine** walks the program ahead of the sequencer and fills the two weight slots
  in program order: a slot job is issued once its slot is free (its job two back was consumed)
  and, for a DYNM MATMUL, once the GATE before it has completed; each of the W weight ports then
  returns its beats one per cycle after the DDR read latency (a port already streaming hides the
  latency of the next burst), all of them within the board's sustained DDR bandwidth;
* the **sequencer** runs one instruction at a time; a MAC-array block of `k` cycles waits for its
  weight slot, its A rows and the shadow (the drain of the block before), exactly the rows of
  codesign.schedule.schedule.SCHEDULE.

The abank forwarding tags follow UARCH.md (`Banks`), so the model knows which inputs come from
chip and which from DDR (after a write fence: every earlier write acknowledged).

The figures are estimates: the RTL core simulated with the board's DDR latency and bandwidth is
what measures cycles (reports/cycles.json compares the two per layer).
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
from .schedule import (LATENCY, Ctx, attn_col_passes, attn_key_blocks, attn_query_blocks, attn_query_groups,
                       feed_latency, k_passes, list_write_beats, loop, mm_dims, router_token_cycles)
from .uarch import Uarch

KINDS = ("attention", "moe", "dense matmul", "vector ops")
_MOE_PART = re.compile(r"^(?P<block>b\d+)\.(gate|e\d+\.fc[12]|mlp)$")
DEFAULT_READ_LATENCY_NS = 250.0


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------- expert routing

def expert_counts_from_golden(qm: QuantModel, x_q, task: int) -> dict[str, list[int]]:
    """Tokens routed to each expert of each MoE block, from a bit-exact golden run."""
    routing = run_golden(qm, x_q, task).routing
    experts = qm.cfg.num_experts
    return {f"b{block}": np.bincount(np.asarray(ids).ravel(), minlength=experts).tolist()
            for block, ids in sorted(routing.items())}


def uniform_expert_counts(tokens: int, top_k: int, experts: int) -> list[int]:
    """tokens*top_k routing slots spread as evenly as integers allow."""
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


def instr_rows(prog: Program, counts: dict[str, list[int]]) -> list[int]:
    """Rows each instruction processes: m, or for an expert MATMUL min(m, tokens routed to it)."""
    rows = []
    for ins in prog.instrs:
        owner = expert_of(prog, ins)
        rows.append(ins.args.get("m", 0) if owner is None else min(ins.args["m"], counts[owner[0]][owner[1]]))
    return rows


# ---------------------------------------------------------------- forwarding (UARCH.md abank tags)

@dataclass(frozen=True)
class Rect:
    """Bytes of `rows` rows of `row_bytes`, `stride` apart, from `addr` (act space)."""
    addr: int
    stride: int
    rows: int
    row_bytes: int

    @property
    def contiguous(self) -> bool:
        return self.rows <= 1 or self.stride == self.row_bytes

    @property
    def end(self) -> int:
        return self.addr + (self.rows - 1) * self.stride + self.row_bytes if self.rows else self.addr

    def inside(self, tag: "Rect") -> bool:
        """Both contiguous: a byte range inside the other. Else the same stride, starting in the
        tag's first row (a column slice of its rows): the RTL's tag lookup divides by no stride."""
        if self.contiguous and tag.contiguous:
            return tag.addr <= self.addr and self.end <= tag.end
        off = self.addr - tag.addr
        return (self.stride == tag.stride and 0 <= off < self.stride and off + self.row_bytes <= tag.row_bytes
                and self.rows <= tag.rows)

    def overlaps(self, other: "Rect") -> bool:
        return self.addr < other.end and other.addr < self.end


class Banks:
    """The two abank tags: which tensor each bank mirrors, and which was written last."""

    def __init__(self, capacity_bytes: int):
        self.capacity = capacity_bytes
        self.tags: list[Rect | None] = [None, None]
        self.last = 1  # the bank written most recently

    def fits(self, r: Rect) -> bool:
        """Rows packed in a bank (row r at r * row_bytes) fit it; a larger tensor is streamed."""
        return r.rows * r.row_bytes <= self.capacity

    def stream(self) -> int:
        """The bank a streamed operand's chunks go through: the one written less recently, its tag dropped."""
        b = 1 - self.last
        self.tags[b] = None
        return b

    def find(self, r: Rect) -> int | None:
        return next((i for i, t in enumerate(self.tags) if t is not None and r.inside(t)), None)

    def find_all(self, rects: list[Rect]) -> list[int | None]:
        """The bank of each input of an instruction, None for DDR: a bank serves one input (its
        read port), so a second input in the same bank comes from DDR."""
        sources: list[int | None] = []
        for r in rects:
            b = self.find(r)
            sources.append(None if b in sources else b)
        return sources

    def write(self, out: Rect, busy: set[int]) -> None:
        """An instruction writes `out` to DDR, and to a bank its inputs (`busy`) do not use."""
        for i, t in enumerate(self.tags):
            if t is not None and t.overlaps(out):
                self.tags[i] = None
        free = [i for i in (1 - self.last, self.last) if i not in busy]
        if free and self.fits(out):
            self.tags[free[0]], self.last = out, free[0]
        elif free:  # too large: written to DDR only, and the bank it would have gone to no longer mirrors anything
            self.tags[free[0]] = None

    def invalidate(self, r: Rect) -> None:
        for i, t in enumerate(self.tags):
            if t is not None and t.overlaps(r):
                self.tags[i] = None

    def load(self, r: Rect, busy: set[int]) -> int | None:
        """A DDR load of `r` into a bank (MATMUL/GATE A rows, ATTN qkv): the bank written less recently."""
        free = [i for i in (1 - self.last, self.last) if i not in busy]
        if not free or not self.fits(r):
            return None
        self.tags[free[0]], self.last = r, free[0]
        return free[0]


def instr_io(ins: Instr, rows: int, eb: int) -> tuple[list[Rect], Rect | None]:
    """(element-row inputs read from act, element-row output) of one instruction."""
    a = ins.args
    if ins.op == Op.MATMUL:
        src = Rect(a["a_addr"], a["a_stride"] * eb, a["m"] if ins.flags & Flag.GATHER else rows, a["k"] * eb)
        out = None if ins.flags & Flag.SCATTER else Rect(a["out_addr"], a["out_stride"] * eb, rows, a["n"] * eb)
        return [src], out
    if ins.op == Op.GATE:
        return [Rect(a["x_addr"], a["dim"] * eb, a["tokens"], a["dim"] * eb)], None
    if ins.op == Op.ATTN:
        d = a["heads"] * a["head_dim"]
        return [Rect(a["qkv_addr"], 3 * d * eb, a["tokens"], 3 * d * eb)], Rect(a["out_addr"], d * eb, a["tokens"], d * eb)
    if ins.op == Op.LAYERNORM:
        r = a["dim"] * eb
        return [Rect(a["x_addr"], r, a["rows"], r)], Rect(a["out_addr"], r, a["rows"], r)
    if ins.op == Op.ADD:
        n = a["count"] * eb
        srcs = [Rect(a["a_addr"], n, 1, n)] + ([] if ins.flags & Flag.B_WGT else [Rect(a["b_addr"], n, 1, n)])
        return srcs, Rect(a["out_addr"], n, 1, n)
    if ins.op == Op.REQUANT32:
        n = a["count"] * eb
        return [], Rect(a["out_addr"], n, 1, n)
    return [], None


def side_writes(ins: Instr) -> list[Rect]:
    """act bytes an instruction writes besides element rows (GATE counts and lists)."""
    a = ins.args
    if ins.op == Op.GATE:
        e, s = a["experts"], a["list_stride"]
        return [Rect(a["counts_addr"], 4 * e, 1, 4 * e), Rect(a["idx_addr"], 4 * e * s, 1, 4 * e * s),
                Rect(a["score_addr"], 4 * e * s, 1, 4 * e * s)]
    return []


# ---------------------------------------------------------------- cost records

@dataclass
class InstrCost:
    index: int
    layer: str  # report group: instr.layer, or "<block>.moe" for a MoE layer's instructions
    name: str
    op: str
    rows: int
    macs: int  # packed (two per DSP) and unpacked MACs together
    unpacked_macs: int  # MACs at one per DSP (attention e.v; all of them when operands are wide)
    start: float
    end: float
    cycles: int  # end of the previous instruction -> end of this one
    weight_bytes: int
    act_read_bytes: int
    act_write_bytes: int
    weight_wait: int = 0  # cycles the array waited for a weight slot
    forwarded: bool = False  # every element-row input came from an abank
    skipped: bool = False  # an expert with no tokens: neither run nor read

    @property
    def ddr_bytes(self) -> int:
        return self.weight_bytes + self.act_read_bytes + self.act_write_bytes


@dataclass
class LayerCost:
    name: str
    kind: str
    instrs: int
    macs: int
    cycles: int
    weight_bytes: int
    ddr_bytes: int
    roofline: float  # max(array-peak cycles of its MACs, DDR bytes / sustained bytes per cycle)
    board_roofline: float  # the same against every DSP of the board
    bound: str  # "compute" or "memory" (the larger term of `roofline`)
    utilisation: float  # MACs / (peak MACs per cycle * cycles)

    @property
    def roofline_ratio(self) -> float:
        return self.roofline / self.cycles if self.cycles else 0.0


@dataclass
class KindCost:
    kind: str
    layers: int
    macs: int
    ddr_bytes: int
    cycles: int
    roofline: float
    board_roofline: float

    @property
    def roofline_ratio(self) -> float:
        return self.roofline / self.cycles if self.cycles else 0.0

    @property
    def board_ratio(self) -> float:
        return self.board_roofline / self.cycles if self.cycles else 0.0


# ---------------------------------------------------------------- the machine

class Machine:
    """Event model of one run: the sequencer's time, the weight engine's slots and ports, the writer."""

    def __init__(self, prog: Program, u: Uarch, board: Board, rows: list[int], read_latency: int):
        self.prog, self.u, self.board, self.rows = prog, u, board, rows
        self.L = read_latency
        self.t = 0.0
        self.last_write = 0.0  # when the last DDR write was queued
        self.banks = Banks(u.bank_beats * u.beat_bytes)
        self.jobs = list(weight_jobs(prog, u, rows))
        self.job_index = {}  # instruction index -> its job indices
        self.ring_prev: list[int | None] = []
        by_ring: dict[str, list[int]] = {}
        for j, job in enumerate(self.jobs):
            self.job_index.setdefault(job.pc, []).append(j)
            ring = by_ring.setdefault(job.ring, [])
            self.ring_prev.append(ring[-2] if len(ring) >= 2 else None)
            ring.append(j)
        self.ready: dict[int, float] = {}
        self.release: dict[int, float] = {}
        self.issue_prev = 0.0
        self.port_free = [0.0] * u.weight_ports
        self.gate_end: dict[int, float] = {}  # GATE pc -> completion time
        self.stretch = max(1.0, u.weight_ports * u.beat_bytes / board.ddr_bytes_per_cycle)

    # -- weight engine
    def job_ready(self, j: int) -> float:
        if j in self.ready:
            return self.ready[j]
        job = self.jobs[j]
        before = self.ring_prev[j]  # the job two back in the same ring: its slot is the one j fills
        issue = max(self.issue_prev, self.release.get(before, 0.0) if before is not None else 0.0,
                    self.program_loaded)
        if job.after_gate is not None:
            issue = max(issue, self.gate_end[job.after_gate])
        self.issue_prev = issue
        end = issue
        for p, beats in enumerate(job.port_beats):
            if beats:
                start = max(issue + self.L, self.port_free[p])
                self.port_free[p] = start + beats * self.stretch
                end = max(end, self.port_free[p])
        self.ready[j] = end
        return end

    # -- DDR activation traffic
    def fence(self) -> float:
        """When a DDR read of act may be issued: every earlier write acknowledged."""
        return self.last_write + self.L if self.last_write else 0.0

    def ddr_stream_ready(self, start: float) -> float:
        return max(start, self.fence()) + self.L

    def run(self) -> list[InstrCost]:
        u = self.u
        prog_beats = _cdiv(len(self.prog.code), u.beat_bytes)
        self.program_loaded = self.L + prog_beats
        self.t = self.program_loaded
        costs = []
        prev_end = 0.0
        for pc, ins in enumerate(self.prog.instrs):
            cost = self.instr(pc, ins, self.rows[pc])
            cost.cycles = int(round(cost.end - prev_end))
            prev_end = cost.end
            costs.append(cost)
        end = max(self.t, self.last_write + self.L)  # END: every write acknowledged
        costs[-1].end = end
        costs[-1].cycles += int(round(end - prev_end))
        return costs

    # -- one instruction
    def instr(self, pc: int, ins: Instr, rows: int) -> InstrCost:
        u, eb = self.u, self.prog.elem_bytes
        start = self.t + LATENCY["issue"]
        skipped = ins.op == Op.MATMUL and ins.flags & Flag.DYNM and rows == 0
        ins_io, out = instr_io(ins, rows, eb)
        cost = InstrCost(pc, report_layer(self.prog, ins), ins.layer, ins.op.name, rows, *instr_macs(ins, rows, u),
                         start, start, 0, sum(self.jobs[j].bytes for j in self.job_index.get(pc, [])), 0, 0,
                         skipped=bool(skipped))
        if skipped:
            self.t = start
            cost.end = start
            return cost
        sources = self.banks.find_all(ins_io)
        cost.forwarded = all(s is not None for s in sources) and bool(sources)
        busy = {s for s in sources if s is not None}
        handler = getattr(self, "op_" + ins.op.name.lower())
        end = handler(pc, ins, rows, start, ins_io, sources, busy, cost)
        if out is not None:
            self.banks.write(out, busy)
            cost.act_write_bytes += out.rows * out.row_bytes
        for r in side_writes(ins):
            self.banks.invalidate(r)
        if out is not None or side_writes(ins):
            self.last_write = end
        self.t = end
        cost.end = end
        if ins.op == Op.GATE:
            self.gate_end[pc] = end
        return cost

    def a_rows_ready(self, src: Rect, source: int | None, start: float, busy: set[int], cost: InstrCost,
                     row_beats: int):
        """When each row of a MAC-array operand is on chip: at once from a bank, else as its DDR load
        (into a bank) streams in, one beat per cycle."""
        if source is not None:
            return lambda r: start
        t0 = self.ddr_stream_ready(start)
        self.banks.load(src, busy)
        cost.act_read_bytes += src.rows * src.row_bytes
        return lambda r: t0 + (r + 1) * row_beats

    def op_matmul(self, pc, ins, rows, start, ins_io, sources, busy, cost):
        u = self.u
        ctx = Ctx(ins, rows, u)
        M, N, K = mm_dims(ctx)
        kc = K * k_passes(ctx)
        streamed = sources[0] is None and not self.banks.fits(ins_io[0])
        R = chunk_rows_of(u, ins, streamed)
        if streamed:
            return self.streamed_blocks(pc, M, N, K, kc, start, busy, cost, R)
        ready_a = self.a_rows_ready(ins_io[0], sources[0], start, busy, cost, K // u.epb)
        if R < M:  # a SCATTER into DDR: chunks of acc_old rows, the A rows in a bank
            return self.streamed_blocks(pc, M, N, K, kc, start, busy, cost, R, ready_a)
        return self.mac_blocks(pc, M, N, kc, start, ready_a, cost, drain_rows_per_beat=True)

    def streamed_blocks(self, pc, M, N, K, kc, start, busy, cost, R, ready_a=None, router=False):
        """Chunks of R rows (whole row blocks): an A operand larger than a bank (docs/UARCH.md) loads
        each into one bank; then each runs the block loop over every tile (the chunk's weight jobs).
        `ready_a`: the A rows are in a bank (a SCATTER into DDR chunked by acc_old) and nothing loads."""
        u = self.u
        if ready_a is None:
            busy.add(self.banks.stream())
        row_beats = u.beats(K)
        jobs = self.job_index.get(pc, [])
        per_chunk = len(jobs) // _cdiv(M, R) if len(jobs) > 1 else 0  # one tile stays in its slot
        t = self.ddr_stream_ready(start) if ready_a is None else start
        for c, r0 in enumerate(range(0, M, R)):
            n = min(R, M - r0)
            if ready_a is None:
                t = (t if c == 0 else t + self.L) + n * row_beats
                cost.act_read_bytes += n * row_beats * u.beat_bytes
                loaded = t
                rows_ready = lambda r, at=loaded: at  # noqa: E731
            else:
                rows_ready = lambda r, r0=r0: ready_a(r0 + r)  # noqa: E731
            chunk_jobs = jobs[c * per_chunk:(c + 1) * per_chunk] if per_chunk else jobs
            t = self.mac_blocks(pc, n, N, kc, t, rows_ready, cost, router=router, jobs=chunk_jobs)
        return t

    def mac_blocks(self, pc, M, N, kc, start, ready_a, cost, drain_rows_per_beat=True, router=False, jobs=None):
        """The weights-outer block loop of a MAC-array instruction (SCHEDULE: mac_block, drain)."""
        u = self.u
        jobs = self.job_index.get(pc, []) if jobs is None else jobs
        rb, nt = _cdiv(M, u.P), _cdiv(N, u.Q)
        end_prev, drain_prev = None, 0
        for t in range(nt):
            ready_w = self.job_ready(jobs[t])
            qt = min(u.Q, N - t * u.Q)
            for b in range(rb):
                rows_b = min(u.P, M - b * u.P)
                inputs = max(ready_w, ready_a(min(M, (b + 1) * u.P) - 1) if t == 0 else 0.0)
                if end_prev is None:
                    end = max(start, inputs) + feed_latency(u) + kc
                else:
                    end = max(end_prev + kc, end_prev + drain_prev, inputs + feed_latency(u) + kc)
                cost.weight_wait += int(max(0.0, ready_w - (end - kc)))
                end_prev = end
                drain_prev = rows_b * router_token_cycles(N) if router else rows_b * _cdiv(qt, u.epb)
            self.release[jobs[t]] = end_prev
        tail = LATENCY["router"] if router else LATENCY["drain"]
        return end_prev + drain_prev + tail

    def op_gate(self, pc, ins, rows, start, ins_io, sources, busy, cost):
        a, u = ins.args, self.u
        kc = a["dim"] * k_passes(Ctx(ins, rows, u))
        if sources[0] is None and not self.banks.fits(ins_io[0]):
            end = self.streamed_blocks(pc, a["tokens"], a["experts"], a["dim"], kc, start, busy, cost,
                                       u.chunk_rows(a["dim"]), router=True)
        else:
            ready_a = self.a_rows_ready(ins_io[0], sources[0], start, busy, cost, a["dim"] // u.epb)
            end = self.mac_blocks(pc, a["tokens"], a["experts"], kc, start, ready_a, cost, router=True)
        counts = self.gate_counts.get(pc) if hasattr(self, "gate_counts") else None
        beats = list_write_beats(counts, u.beat_bytes) if counts else loop("GATE", "list_write").trip(Ctx(ins, rows, u))
        beats += loop("GATE", "acc_clear").trip(Ctx(ins, rows, u))
        cost.act_write_bytes += beats * u.beat_bytes
        return end + beats

    def op_attn(self, pc, ins, rows, start, ins_io, sources, busy, cost):
        a, u = ins.args, self.u
        ctx = Ctx(ins, rows, u)
        mode, _ = u.attn_plan(a["tokens"], a["heads"], a["head_dim"])
        if sources[0] is not None:
            mode = "whole"
        t = start
        if mode == "whole" and sources[0] is None:  # qkv into a bank first
            t = self.ddr_stream_ready(start) + loop("ATTN", "qkv_load").trip(ctx)
            self.banks.load(ins_io[0], busy)
            cost.act_read_bytes += ins_io[0].rows * ins_io[0].row_bytes
        elif mode != "whole":
            busy.add(self.banks.stream())
            t = self.ddr_stream_ready(start) - self.L  # each load below pays the read latency
        if mode == "keys":
            t = self.attn_key_tiles(ctx, t, cost)
        else:
            t = self.attn_blocks(ctx, t, cost, per_head_load=mode == "head")
        drain = loop("ATTN", "ev_drain").trip(ctx)
        return t + LATENCY["recip"] + drain + LATENCY["drain"]

    def attn_blocks(self, ctx, t, cost, per_head_load: bool):
        """The qkv (or, per head, its q, k, v columns) in a bank: scores and e.v per query block."""
        a, u = ctx.a, self.u
        score = loop("ATTN", "score_block").trip(ctx)
        ev_fill = LATENCY["exp"] + feed_latency(u)
        q_first = loop("ATTN", "q_load").trip(ctx)
        for h in range(a["heads"]):
            if per_head_load:
                t += self.L + loop("ATTN", "head_load").trip(ctx)
                cost.act_read_bytes += loop("ATTN", "head_load").trip(ctx) * u.beat_bytes
            t += q_first  # a head's first query block: nothing to hide its qbuf load behind
            for qb in range(attn_query_blocks(ctx)):
                queries = min(u.Q, a["tokens"] - qb * u.Q)
                groups = _cdiv(queries, u.P)
                t += feed_latency(u) + attn_key_blocks(ctx) * score
                # e.v: one key a cycle, the passes of every group back to back (the pipeline fills once)
                t += groups * attn_col_passes(ctx) * a["tokens"] + ev_fill
        return t

    def attn_key_tiles(self, ctx, t, cost):
        """One head's q, k, v exceed a bank: per query block its queries, K per key tile (scores into
        sbuf), then per query group and pass pair V per key tile (docs/UARCH.md "ATTN")."""
        a, u = ctx.a, self.u
        T, dh = a["tokens"], a["head_dim"]
        dhb = u.beats(dh)
        _, kt = u.attn_plan(T, a["heads"], dh)
        tiles = [min(kt, T - k0) for k0 in range(0, T, kt)]
        passes = attn_col_passes(ctx)
        pairs = [min(2, passes - p0) for p0 in range(0, passes, 2)]
        score = loop("ATTN", "score_block").trip(ctx)
        for h in range(a["heads"]):
            for qb in range(attn_query_blocks(ctx)):
                queries = min(u.Q, T - qb * u.Q)
                t += self.L + 2 * queries * dhb  # the queries into the bank, then into qbuf
                cost.act_read_bytes += queries * dhb * u.beat_bytes
                for keys in tiles:
                    t += self.L + keys * dhb + feed_latency(u) + _cdiv(keys, u.P) * score + min(u.P, keys)
                    cost.act_read_bytes += keys * dhb * u.beat_bytes
                for _ in range(_cdiv(queries, u.P)):
                    for pp in pairs:
                        for keys in tiles:
                            t += self.L + keys * dhb + pp * keys + LATENCY["exp"] + feed_latency(u)
                            cost.act_read_bytes += keys * dhb * u.beat_bytes
        return t

    def op_layernorm(self, pc, ins, rows, start, ins_io, sources, busy, cost):
        u = self.u
        t = start if sources[0] is not None else self.ddr_stream_ready(start)
        if sources[0] is None:
            cost.act_read_bytes += ins_io[0].rows * ins_io[0].row_bytes
        for j in self.job_index.get(pc, []):
            t = max(t, self.job_ready(j))
        # + the last row's normalised beats, which leave after its input (SCHEDULE.md)
        end = t + loop("LAYERNORM", "rows").trip(Ctx(ins, rows, u)) + LATENCY["layernorm"] + u.beats(ins.args["dim"])
        for j in self.job_index.get(pc, []):
            self.release[j] = end
        return end

    def op_add(self, pc, ins, rows, start, ins_io, sources, busy, cost):
        u = self.u
        from_ddr = [r for r, s in zip(ins_io, sources) if s is None]
        t = self.ddr_stream_ready(start) if from_ddr else start
        cost.act_read_bytes += sum(r.rows * r.row_bytes for r in from_ddr)
        if ins.flags & Flag.B_WGT and u.add_streams_b(ins.args["count"]):  # b over the first weight master
            t = max(t, start + self.L)
            cost.weight_bytes += u.beats(ins.args["count"]) * u.beat_bytes
        for j in self.job_index.get(pc, []):
            t = max(t, self.job_ready(j))
        end = t + loop("ADD", "elems").trip(Ctx(ins, rows, u)) * max(1, len(from_ddr)) + LATENCY["vector"]
        for j in self.job_index.get(pc, []):
            self.release[j] = end
        return end

    def op_requant32(self, pc, ins, rows, start, ins_io, sources, busy, cost):
        u = self.u
        beats = loop("REQUANT32", "elems").trip(Ctx(ins, rows, u))
        if u.acc_words:   # the GATE's accumulator, mirrored in moe_acc (uarch.check_program)
            return start + beats + LATENCY["vector"]
        cost.act_read_bytes += beats * u.beat_bytes
        return self.ddr_stream_ready(start) + beats + LATENCY["vector"]


# ---------------------------------------------------------------- weight jobs

@dataclass(frozen=True)
class WeightJob:
    pc: int
    port_beats: tuple[int, ...]
    bytes: int
    after_gate: int | None  # a DYNM MATMUL's GATE: the job waits until it completed
    ring: str = "slot"  # "slot": the two weight slots; "pring": LayerNorm's param ring


def weight_jobs(prog: Program, u: Uarch, rows: list[int]):
    """The weight engine's slot jobs in program order (docs/UARCH.md, Weight engine)."""
    last_gate = None
    eb, W, B = prog.elem_bytes, u.weight_ports, u.beat_bytes
    for pc, ins in enumerate(prog.instrs):
        a = ins.args
        if ins.op == Op.GATE:
            last_gate = pc
            yield _tile_job(pc, a["experts"], a["dim"], u, eb, param_beats=_cdiv(4 * a["experts"], B))
        elif ins.op == Op.MATMUL and rows[pc]:
            after = last_gate if ins.flags & Flag.DYNM else None
            lut = _cdiv((1 << ins.obits) * eb, B) if ins.flags & Flag.GELU else 0
            tiles = _cdiv(a["n"], u.Q)
            gate_tokens = prog.instrs[last_gate].args["tokens"] if last_gate is not None else a["m"]
            chunks = a_chunks(u, ins, rows[pc], gate_tokens) if tiles > 1 else 1  # one tile stays in its slot
            for c in range(chunks):
                for t in range(tiles):
                    qt = min(u.Q, a["n"] - t * u.Q)
                    yield _tile_job(pc, qt, a["k"], u, eb, param_beats=2 * _cdiv(4 * qt, B),
                                    extra0=lut if t == 0 and c == 0 else 0, after_gate=after)
        elif ins.op == Op.LAYERNORM:
            yield _spread_job(pc, 2 * _cdiv(4 * a["dim"], B), W, B, ring="pring")
        elif ins.op == Op.ADD and ins.flags & Flag.B_WGT and not u.add_streams_b(a["count"]):
            beats = _cdiv(a["count"] * eb, B)
            yield WeightJob(pc, (beats,) + (0,) * (W - 1), beats * B, None)


def chunk_rows_of(u: Uarch, ins: Instr, streamed: bool) -> int:
    """Rows per MAC loop of a MATMUL: a bank's worth of a streamed A operand, at most acc_old's rows
    for a SCATTER into DDR (docs/UARCH.md); a large number when neither applies."""
    rows = u.chunk_rows(ins.args["k"]) if streamed else 1 << 30
    return min(rows, u.acc_old_rows) if ins.flags & Flag.SCATTER and u.acc_old_rows else rows


def a_chunks(u: Uarch, ins: Instr, rows: int, gate_tokens: int) -> int:
    """MAC loops of a MATMUL: 1, or its rows in chunks of chunk_rows_of when its A operand exceeds
    a bank (and is therefore in none; a GATHER's operand is its GATE's whole input) or it SCATTERs
    into DDR."""
    whole = gate_tokens if ins.flags & Flag.GATHER else rows
    R = chunk_rows_of(u, ins, not u.fits_bank(whole, ins.args["k"]))
    return _cdiv(rows, R) if R else 1


def _tile_job(pc, rows, k, u: Uarch, eb, param_beats, extra0=0, after_gate=None) -> WeightJob:
    W, B = u.weight_ports, u.beat_bytes
    beats = [0] * W
    row_beats = _cdiv(k * eb, B)
    for g in range(_cdiv(rows, u.epb)):
        beats[g % W] += min(u.epb, rows - g * u.epb) * row_beats
    for p in range(W):  # bias and multipliers, each split in W chunks
        beats[p] += _cdiv(param_beats, W)
    beats[0] += extra0
    return WeightJob(pc, tuple(beats), sum(beats) * B, after_gate)


def _spread_job(pc, beats_total, W, B, ring="slot") -> WeightJob:
    beats = [_cdiv(beats_total, W)] * W
    return WeightJob(pc, tuple(beats), sum(beats) * B, None, ring)


def instr_macs(ins: Instr, rows: int, u: Uarch) -> tuple[int, int]:
    """(all MACs, the unpacked ones) of an instruction on the array."""
    a = ins.args
    if ins.op == Op.MATMUL:
        m = rows * a["n"] * a["k"]
    elif ins.op == Op.GATE:
        m = a["tokens"] * a["experts"] * a["dim"]
    elif ins.op == Op.ATTN:
        half = a["heads"] * a["tokens"] * a["tokens"] * a["head_dim"]
        return 2 * half, half if u.packed else 2 * half
    else:
        return 0, 0
    return m, 0 if u.packed else m


def report_layer(prog: Program, ins: Instr) -> str:
    m = _MOE_PART.match(ins.layer)
    return f"{m['block']}.moe" if m and m["block"] in prog.moe_layers else ins.layer


# ---------------------------------------------------------------- the estimate

@dataclass
class Estimate:
    board: str
    clock_mhz: float
    tiling: dict
    num_tasks: int
    ddr_bytes_per_cycle: float
    read_latency_cycles: int
    weight_ports: int
    expert_counts: dict[str, list[int]]
    assumptions: list[str]
    instrs: list[InstrCost]
    layers: list[LayerCost]
    kinds: list[KindCost]
    totals: dict[str, int]
    peak_macs_per_cycle: int  # the design's array, packed
    board_peak_macs_per_cycle: int  # every DSP of the board, at the MACs per DSP the code implements
    dsp_used: int
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    tiling_summary: str = ""
    tiling_detail: dict = field(default_factory=dict)

    @property
    def cycles(self) -> int:
        return self.totals["cycles"]

    @property
    def latency_ms(self) -> float:
        """One task inference (one backbone pass)."""
        return self.cycles / (self.clock_mhz * 1e3)

    @property
    def latency_ms_per_image(self) -> float:
        """Every task of one image: M3ViT runs one backbone pass per task."""
        return self.latency_ms * self.num_tasks

    @property
    def gops(self) -> float:
        return 2 * self.totals["macs"] / (self.latency_ms * 1e6) if self.cycles else 0.0

    @property
    def macs_per_dsp_per_cycle(self) -> float:
        return self.totals["macs"] / (self.cycles * self.dsp_used) if self.cycles and self.dsp_used else 0.0

    @property
    def utilisation(self) -> float:
        return self.totals["macs"] / (self.peak_macs_per_cycle * self.cycles) if self.cycles else 0.0

    @property
    def board_peak_fraction(self) -> float:
        return self.totals["macs"] / (self.board_peak_macs_per_cycle * self.cycles) if self.cycles else 0.0

    @property
    def roofline_cycles(self) -> float:
        return sum(k.roofline for k in self.kinds)

    @property
    def roofline_ratio(self) -> float:
        return self.roofline_cycles / self.cycles if self.cycles else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        for row, ins in zip(d["instrs"], self.instrs):
            row["ddr_bytes"] = ins.ddr_bytes
        for row, layer in zip(d["layers"], self.layers):
            row["roofline_ratio"] = layer.roofline_ratio
        for row, kind in zip(d["kinds"], self.kinds):
            row.update(roofline_ratio=kind.roofline_ratio, board_ratio=kind.board_ratio)
        d.update(cycles=self.cycles, latency_ms=self.latency_ms, latency_ms_per_task=self.latency_ms,
                 latency_ms_per_image=self.latency_ms_per_image, gops=self.gops,
                 macs_per_dsp_per_cycle=self.macs_per_dsp_per_cycle, utilisation=self.utilisation,
                 board_peak_fraction=self.board_peak_fraction, roofline_cycles=self.roofline_cycles,
                 roofline_ratio=self.roofline_ratio)
        return d

    # -- text
    def kind_summary(self) -> str:
        parts = [f"{k.kind} {k.roofline_ratio:.0%} of its roofline ({k.board_ratio:.0%} of the board's)"
                 for k in self.kinds if k.layers]
        return "by kind: " + "; ".join(parts)

    def resource_table(self) -> str:
        head = f"{'resource':<10}{'used':>10}{'budget':>10}{'board':>10}{'of board':>10}"
        rows = [f"{name.upper():<10}{r['used']:>10,.0f}{r['budget']:>10,.0f}{r['board']:>10,.0f}"
                f"{_share(r['used'], r['board']):>10}" for name, r in self.resources.items()]
        return "\n".join([head, *rows])

    def summary(self) -> str:
        t, tot = self.tiling, self.totals
        return "\n".join([
            f"board {self.board} @ {self.clock_mhz:g} MHz, {t['P']}x{t['Q']} MAC array "
            f"({self.peak_macs_per_cycle} MACs/cycle on {self.dsp_used} DSPs; the board's {self.board_peak_macs_per_cycle})",
            f"estimate: {tot['cycles']:,} cycles = {self.latency_ms:.3f} ms per task inference "
            f"({self.latency_ms_per_image:.3f} ms per image, {self.num_tasks} tasks); {tot['macs']:,} MACs, "
            f"{self.gops:.0f} GOPS, {self.macs_per_dsp_per_cycle:.2f} MAC/DSP/cycle, "
            f"{self.utilisation:.0%} of the array's peak, {self.board_peak_fraction:.0%} of the board's",
            f"DDR: {tot['ddr_bytes']:,} bytes ({tot['weight_bytes']:,} weights), {self.ddr_bytes_per_cycle:.1f} B/cycle "
            f"sustained, read latency {self.read_latency_cycles} cycles, {self.weight_ports} weight port(s)",
        ] + [f"assumption: {a}" for a in self.assumptions])

    def table(self) -> str:
        w = max([len("layer")] + [len(l.name) for l in self.layers]) + 2
        head = (f"{'layer':<{w}}{'kind':>13}{'instrs':>7}{'MACs':>14}{'cycles':>11}{'DDR bytes':>13}"
                f"{'roofline':>10}{'roof/est':>9}{'bound':>8}")
        rows = [f"{l.name:<{w}}{l.kind:>13}{l.instrs:>7}{l.macs:>14,}{l.cycles:>11,}{l.ddr_bytes:>13,}"
                f"{l.roofline:>10,.0f}{l.roofline_ratio:>9.0%}{l.bound:>8}" for l in self.layers]
        tot = self.totals
        total = (f"{'TOTAL':<{w}}{'':>13}{len(self.instrs):>7}{tot['macs']:>14,}{tot['cycles']:>11,}"
                 f"{tot['ddr_bytes']:>13,}{self.roofline_cycles:>10,.0f}{self.roofline_ratio:>9.0%}{'':>8}")
        rule = "-" * len(head)
        out = [head, rule, *rows, rule, total, "", self.kind_summary(),
               "(roofline = max(MACs at the array's peak: 2 a DSP packed, 1 unpacked; DDR bytes at the sustained "
               "rate); the board's = the same with every DSP of the board)", ""]
        if self.resources:
            out += [self.tiling_summary, self.resource_table(), ""]
        return "\n".join(out + [self.summary()])


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def read_latency_cycles(board: Board) -> int:
    ns = getattr(board.memory, "read_latency_ns", None) or DEFAULT_READ_LATENCY_NS
    return int(round(ns * board.clock_mhz / 1000))


def layer_kind(cs: list[InstrCost]) -> str:
    ops = {c.op for c in cs}
    if "ATTN" in ops:
        return "attention"
    if "GATE" in ops or any(c.layer.endswith(".moe") for c in cs):
        return "moe"
    if "MATMUL" in ops:
        return "dense matmul"
    return "vector ops"


def roofline(macs: int, unpacked: int, ddr_bytes: int, dsps: int, per_dsp: int, ddr_bpc: float) -> float:
    """max(MACs at `dsps` DSPs doing `per_dsp` packed MACs (1 unpacked), bytes at the DDR rate)."""
    compute = (macs - unpacked) / (dsps * per_dsp) + unpacked / dsps if dsps else 0.0
    return max(compute, ddr_bytes / ddr_bpc if ddr_bpc else 0.0)


def group_layers(costs: list[InstrCost], u: Uarch, board: Board) -> list[LayerCost]:
    groups: dict[str, list[InstrCost]] = {}
    for c in costs:
        groups.setdefault(c.layer, []).append(c)
    per_dsp, bpc = u.macs_per_dsp, board.ddr_bytes_per_cycle
    out = []
    for name, cs in groups.items():
        macs, unp = sum(c.macs for c in cs), sum(c.unpacked_macs for c in cs)
        ddr, cycles = sum(c.ddr_bytes for c in cs), sum(c.cycles for c in cs)
        roof = roofline(macs, unp, ddr, u.dsps_array, per_dsp, bpc)
        compute = roofline(macs, unp, 0, u.dsps_array, per_dsp, 0)
        out.append(LayerCost(name, layer_kind(cs), len(cs), macs, cycles, sum(c.weight_bytes for c in cs), ddr,
                             roof, roofline(macs, unp, ddr, board.resources.dsp, per_dsp, bpc),
                             "compute" if compute >= ddr / bpc else "memory",
                             macs / (u.macs_per_cycle * cycles) if cycles else 0.0))
    return out


def kind_costs(layers: list[LayerCost]) -> list[KindCost]:
    out = []
    for kind in KINDS:
        ls = [l for l in layers if l.kind == kind]
        out.append(KindCost(kind, len(ls), sum(l.macs for l in ls), sum(l.ddr_bytes for l in ls),
                            sum(l.cycles for l in ls), sum(l.roofline for l in ls), sum(l.board_roofline for l in ls)))
    return out


def estimate(prog: Program, u: Uarch, board: Board, expert_counts: dict[str, list[int]] | None = None,
             resources: dict[str, dict[str, float]] | None = None, dsp_used: int | None = None,
             tiling: dict | None = None, summary: str = "") -> Estimate:
    """Cycles, bytes and latency of one task inference of `prog` on the compute unit `u`."""
    counts, notes = resolve_expert_counts(prog, expert_counts)
    rows = instr_rows(prog, counts)
    m = Machine(prog, u, board, rows, read_latency_cycles(board))
    m.gate_counts = {pc: counts[name] for name, g in gate_instrs(prog).items()
                     for pc, ins in enumerate(prog.instrs) if ins is g}
    costs = m.run()
    layers = group_layers(costs, u, board)
    totals = {k: int(sum(getattr(c, k) for c in costs)) for k in
              ("macs", "cycles", "weight_bytes", "act_read_bytes", "act_write_bytes")}
    totals["ddr_bytes"] = totals["weight_bytes"] + totals["act_read_bytes"] + totals["act_write_bytes"]
    return Estimate(board.name, board.clock_mhz, tiling or {"P": u.P, "Q": u.Q}, prog.num_tasks,
                    board.ddr_bytes_per_cycle, m.L, u.weight_ports, counts, notes + model_notes(u, board), costs,
                    layers, kind_costs(layers), totals, u.macs_per_cycle, board.resources.dsp * u.macs_per_dsp,
                    dsp_used or u.dsps_array, resources or {}, summary, {})


def model_notes(u: Uarch, board: Board) -> list[str]:
    return [
        f"the compute unit of docs/UARCH.md at {u.P}x{u.Q} ({'packed, 2' if u.packed else 'unpacked, 1'} MAC per "
        f"DSP; attention e.v 1), {u.weight_ports} weight port(s), {u.beat_bytes}-byte AXI beats, EPB = {u.epb}",
        f"DDR: read latency {read_latency_cycles(board)} cycles, {board.ddr_bytes_per_cycle:.1f} B/cycle sustained "
        f"for every master together; an act read from DDR waits for every earlier write to be acknowledged",
        "loops, trip counts and entry costs of docs/SCHEDULE.md; inputs forwarded from the abanks as UARCH.md says",
    ]


def estimate_design(prog: Program, tiling, board: Board, expert_counts: dict[str, list[int]] | None = None
                    ) -> Estimate:
    """The estimate of a chosen tiling (codesign.schedule.tiling.Tiling), with its resources."""
    resources = {r: {"used": tiling.used[r], "budget": tiling.budget[r], "board": getattr(board.resources, r)}
                 for r in tiling.used}
    return estimate(prog, tiling.uarch, board, expert_counts, resources=resources, dsp_used=tiling.used["dsp"],
                    tiling={"P": tiling.P, "Q": tiling.Q}, summary=tiling.summary())
