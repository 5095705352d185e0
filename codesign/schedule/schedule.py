"""The per-op loop schedule of the compute unit (docs/UARCH.md), as one table.

Every pipelined loop the RTL core and the HLS kernel run has a row here: its II, its trip count
and how often it is entered per instruction, as functions of the instruction and the Uarch, and
the fixed latency each entry pays. The estimate (codesign.schedule.estimate) evaluates exactly
these functions; docs/SCHEDULE.md is generated from the same rows (`schedule_markdown`), and the
HLS kernel's counting build reports iterations and entries under the same loop names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .isa import Flag, Instr, Op
from .uarch import Uarch

# ---------------------------------------------------------------- latencies (cycles)
# Fixed pipeline depths of the core, charged once per loop entry. The RTL's are measured by its
# trace; the HLS kernel's come from its pipeline depths (Vitis reports them).
LATENCY = {
    "issue": 7,  # read an instruction from prog, decode, set up its loops (3 of them: cs_tags' lookups)
    "feed": 3,  # operand feed registers + DSP pipeline (on top of the first EPB-cycle window)
    "drain": 6,  # drain lane: +bias, x mult (2 stages), round, saturate, GELU table
    "exp": 4,  # e.v feed: sbuf read, subtract the max, scale, EXP ROM
    "recip": 4,  # bitlen, shift, RECIP ROM, per query / token
    "router": 8,  # GATE, after the last token's EXP sum: RECIP, qmax x r, a score per chosen expert, append
    "layernorm": 12,  # LayerNorm: last beat of a row -> var -> RSQRT -> its first normalised beat
    "vector": 4,  # ADD / REQUANT32 lane pipeline
}


# The router takes a token one expert a cycle (docs/UARCH.md "GATE"): its EXP and sum stage issues
# the token's experts, then waits for the last one through distance, product, EXP table and sum.
ROUTER_EXP_DEPTH = 4


def router_token_cycles(experts: int) -> int:
    """Cycles the router spends on one token (its slowest stage: EXP and sum)."""
    return experts + ROUTER_EXP_DEPTH


def feed_latency(u: Uarch) -> int:
    """Cycles from a block's first operand read to its first MAC: one EPB-cycle window + registers."""
    return u.epb + LATENCY["feed"]


# ---------------------------------------------------------------- loop rows

@dataclass(frozen=True)
class Ctx:
    """What a trip count depends on: the instruction, its rows (after DYNM) and the Uarch."""
    ins: Instr
    rows: int
    u: Uarch

    @property
    def a(self) -> dict:
        return self.ins.args


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def mm_dims(c: Ctx) -> tuple[int, int, int]:
    """(M, N, K) of a MAC-array instruction: MATMUL rows x n x k, GATE tokens x experts x dim."""
    a = c.a
    if c.ins.op == Op.GATE:
        return a["tokens"], a["experts"], a["dim"]
    return c.rows, a["n"], a["k"]


def row_blocks(c: Ctx) -> int:
    return _cdiv(mm_dims(c)[0], c.u.P)


def col_tiles(c: Ctx) -> int:
    return _cdiv(mm_dims(c)[1], c.u.Q)


def k_passes(c: Ctx) -> int:
    """Passes per block: 1 packed, 2 unpacked (each pass half of the Q columns)."""
    return 1 if c.u.packed else 2


def attn_query_blocks(c: Ctx) -> int:
    return _cdiv(c.a["tokens"], c.u.Q)


def attn_key_blocks(c: Ctx) -> int:
    return _cdiv(c.a["tokens"], c.u.P)


def attn_query_groups(c: Ctx) -> int:
    """e.v groups of P queries, summed over the query blocks of one head."""
    t, Q, P = c.a["tokens"], c.u.Q, c.u.P
    full, last = divmod(t, Q)
    return full * _cdiv(Q, P) + (_cdiv(last, P) if last else 0)


def attn_col_passes(c: Ctx) -> int:
    """e.v passes per query group: ev_cols output columns each (Q/2, fewer when G*EPB < Q/2)."""
    return _cdiv(c.a["head_dim"], c.u.ev_cols)


def attn_mode(c: Ctx) -> str:
    return c.u.attn_plan(c.a["tokens"], c.a["heads"], c.a["head_dim"])[0]


def attn_key_tile(c: Ctx) -> int:
    """Keys per tile (the last tile may be shorter); T without key tiles."""
    return c.u.attn_plan(c.a["tokens"], c.a["heads"], c.a["head_dim"])[1] or c.a["tokens"]


def attn_key_tiles(c: Ctx) -> int:
    return _cdiv(c.a["tokens"], attn_key_tile(c))


@dataclass(frozen=True)
class Loop:
    op: str
    name: str
    ii: int
    trip: Callable[[Ctx], int]
    entries: Callable[[Ctx], int]
    trip_text: str
    entries_text: str
    entry_cost: str  # what each entry pays besides trip * II
    note: str = ""


def _one(c: Ctx) -> int:
    return 1


SCHEDULE: tuple[Loop, ...] = (
    Loop("MATMUL", "mac_block", 1, lambda c: mm_dims(c)[2] * k_passes(c),
         lambda c: row_blocks(c) * col_tiles(c), "k (x2 unpacked)", "ceil(M/P) * ceil(n/Q)",
         "first block: feed (EPB + 3); a block waits for the shadow (previous drain)",
         "weights-outer: every tile passes over all row blocks"),
    Loop("MATMUL", "drain", 1, lambda c: min(c.u.P, max(0, mm_dims(c)[0])) * _cdiv(min(c.u.Q, mm_dims(c)[1]), c.u.epb),
         lambda c: row_blocks(c) * col_tiles(c), "rows of the block * ceil(Qt/EPB)", "ceil(M/P) * ceil(n/Q)",
         "drain (6) after the last block", "overlaps the next block; SCATTER: into moe_acc"),
    Loop("MATMUL", "a_load", 1, lambda c: mm_dims(c)[0] * mm_dims(c)[2] // c.u.epb, _one,
         "M * k/EPB", "1 unless forwarded", "write fence + DDR latency",
         "block b starts once its rows are in; A larger than a bank: in ceil(M/R) chunks of R = chunk_rows(k) "
         "rows, each loaded, then its blocks over every tile (weights read again per chunk when n > Q)"),
    Loop("GATE", "mac_block", 1, lambda c: c.a["dim"] * k_passes(c), row_blocks, "dim", "ceil(tokens/P)",
         "as MATMUL", "one tile of `experts` columns"),
    Loop("GATE", "router", 1, lambda c: min(c.u.P, c.a["tokens"]) * router_token_cycles(c.a["experts"]), row_blocks,
         "tokens of the block * (experts + 4)", "ceil(tokens/P)", "router (8) after the last block",
         "the RTL's cs_router: one expert a cycle beside the next block (longer than `dim` cycles: the "
         "next block waits); the HLS kernel's router unrolls the experts, one token a cycle"),
    Loop("GATE", "list_write", 1, lambda c: gate_list_beats(c), _one,
         "ceil(4E/B) + 2 * sum_e ceil(4 count_e / B)", "1", "-", "counts, token ids and scores to DDR"),
    Loop("GATE", "acc_clear", 1, lambda c: 0 if c.u.acc_words else _cdiv(4 * c.a["tokens"] * c.a["dim"], c.u.beat_bytes),
         _one, "ceil(4 tokens dim / B), 0 with moe_acc", "1", "-",
         "the accumulator in DDR (no moe_acc): the write-out's last segment zeroes it"),
    Loop("ATTN", "q_load", 1, lambda c: min(c.u.Q, c.a["tokens"]) * c.a["head_dim"] // c.u.epb,
         lambda c: c.a["heads"] * attn_query_blocks(c), "Qb * head_dim/EPB", "heads * ceil(T/Q)",
         "-", "qbuf from the qkv bank (port A); all but a head's first beside the previous block"),
    Loop("ATTN", "score_block", 1, lambda c: max(c.a["head_dim"], c.u.P),
         lambda c: c.a["heads"] * attn_query_blocks(c) * attn_key_blocks(c), "max(head_dim, P)",
         "heads * ceil(T/Q) * ceil(T/P)", "feed at each query block", "keys on rows, queries on columns; "
         "the drain writes a key's Q scores a cycle"),
    Loop("ATTN", "ev_pass", 1, lambda c: c.a["tokens"], lambda c: c.a["heads"] * attn_query_groups(c) * attn_col_passes(c),
         "T", "heads * (query groups of P) * ceil(head_dim/ev_cols)", "exp (4) + feed, once a query block",
         "unpacked: ev_cols = min(Q/2, G*EPB) columns a pass"),
    Loop("ATTN", "ev_drain", 1, lambda c: min(c.u.P, c.a["tokens"]) * _cdiv(min(c.u.Q, c.a["head_dim"]), c.u.epb),
         lambda c: c.a["heads"] * attn_query_groups(c) * _cdiv(c.a["head_dim"], c.u.Q),
         "P * ceil(min(Q, head_dim)/EPB)", "heads * query groups * ceil(head_dim/Q)", "recip (4) + drain (6)",
         "normalise and requantise; beside the next pass"),
    Loop("ATTN", "qkv_load", 1, lambda c: c.a["tokens"] * 3 * c.a["heads"] * c.a["head_dim"] // c.u.epb,
         lambda c: int(attn_mode(c) == "whole"),
         "T * 3D/EPB", "1 unless forwarded (qkv fits a bank)", "write fence + DDR latency", "into a bank"),
    Loop("ATTN", "head_load", 1, lambda c: c.a["tokens"] * 3 * c.a["head_dim"] // c.u.epb,
         lambda c: c.a["heads"] if attn_mode(c) == "head" else 0, "T * 3 head_dim/EPB",
         "heads when qkv exceeds a bank and one head's q, k, v do not", "DDR latency",
         "a head's q, k, v columns into a bank; its first queries into qbuf after it"),
    Loop("ATTN", "k_load", 1, lambda c: attn_key_tile(c) * c.a["head_dim"] // c.u.epb,
         lambda c: c.a["heads"] * attn_query_blocks(c) * attn_key_tiles(c) if attn_mode(c) == "keys" else 0,
         "KT * head_dim/EPB", "heads * ceil(T/Q) * ceil(T/KT) with key tiles", "DDR latency",
         "one head's q, k, v exceed a bank: per query block its queries (Qb * head_dim/EPB, twice: bank, "
         "qbuf), then K per tile of KT = attn_plan keys; scores of all keys into sbuf"),
    Loop("ATTN", "v_load", 1, lambda c: attn_key_tile(c) * c.a["head_dim"] // c.u.epb,
         lambda c: (c.a["heads"] * attn_query_groups(c) * _cdiv(attn_col_passes(c), 2) * attn_key_tiles(c)
                    if attn_mode(c) == "keys" else 0),
         "KT * head_dim/EPB", "heads * query groups * ceil(passes/2) * ceil(T/KT) with key tiles", "DDR latency",
         "V per key tile for each query group and pass pair; e.v sums carried across the tiles"),
    Loop("LAYERNORM", "rows", 1, lambda c: c.a["rows"] * c.a["dim"] // c.u.epb, _one, "rows * dim/EPB", "1",
         "layernorm (12) + dim/EPB", "stats while a row streams in, normalise it while the next does; "
         "the last row's beats go out after its input"),
    Loop("ADD", "elems", 1, lambda c: c.a["count"] // c.u.epb, _one, "count/EPB (x2 with both operands in DDR)",
         "1", "vector (4); + fence + DDR latency for a DDR operand", ""),
    Loop("REQUANT32", "elems", 1, lambda c: c.a["count"] // c.u.epb if c.u.acc_words else _cdiv(4 * c.a["count"], c.u.beat_bytes),
         _one, "count/EPB from moe_acc, else 4 count/B", "1", "vector (4); from DDR + fence + DDR latency",
         "from moe_acc a word of EPB int32 a cycle; from DDR at its int32 rate, B/4 a cycle"),
)


def loop(op: str, name: str) -> Loop:
    return next(l for l in SCHEDULE if (l.op, l.name) == (op, name))


def gate_list_beats(c: Ctx) -> int:
    """Beats of a GATE's write-out under uniform routing (the estimate passes real counts)."""
    a, B = c.a, c.u.beat_bytes
    e, k, t = a["experts"], a["top_k"], a["tokens"]
    base, extra = divmod(t * k, e)
    counts = [base + 1] * extra + [base] * (e - extra)
    return list_write_beats(counts, B)


def list_write_beats(counts: list[int], beat_bytes: int) -> int:
    return _cdiv(4 * len(counts), beat_bytes) + 2 * sum(_cdiv(4 * n, beat_bytes) for n in counts)


# ---------------------------------------------------------------- docs/SCHEDULE.md

def schedule_markdown() -> str:
    head = ["# Schedule table", "",
            "Generated by `codesign.schedule.schedule.schedule_markdown()` from the rows the estimate "
            "evaluates; do not edit by hand (`tests/test_schedule.py` checks it is current). "
            "The microarchitecture is [UARCH.md](UARCH.md).", "",
            "| op | loop | II | trip count | entries per instruction | entry cost | note |",
            "|---|---|---|---|---|---|---|"]
    rows = [f"| {l.op} | `{l.name}` | {l.ii} | {l.trip_text} | {l.entries_text} | {l.entry_cost} | {l.note} |"
            for l in SCHEDULE]
    lat = ["", "Latencies (cycles, once per entry where the table says so):", "",
           "| name | cycles |", "|---|---|"] + [f"| {k} | {v} |" for k, v in LATENCY.items()]
    lat += ["| feed | EPB + 3 (one round-robin window + registers) |",
            "| DDR read | `memory.read_latency_ns` of the board file at its clock |"]
    return "\n".join(head + rows + lat) + "\n"
