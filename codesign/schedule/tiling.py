"""Size the compute unit for a program and a board: the P x Q MAC array (docs/UARCH.md).

Every candidate shape is costed by codesign.schedule.uarch (what the generated code instantiates:
DSPs, FFs, LUTs, BRAM36, URAM) and refused when any of them exceeds the board's budget; among the
shapes that fit, the one with the fewest estimated cycles wins (first ranked by the MAC-array
cycles of the program, then by the full estimate for the best few). Per shape, the abank capacity
is a tiling parameter: the largest of `bank_sizes` that fits, with the MoE accumulator on chip and,
as a second candidate, in DDR; what exceeds the bank is streamed (docs/UARCH.md).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..boards import Board
from .isa import Op
from .program import Program
from .schedule import feed_latency
from .uarch import (RESOURCES, HardwareRuleError, Memory, Uarch, bank_min_beats, bank_need_beats, check_program,
                    derive_uarch, resource_use)

# Shapes within this factor of the best MAC-array cycles get the full estimate.
FULL_ESTIMATE_SHAPES = 6
MAX_P = 128
MAX_Q = 256
# Below this many MACs an accelerator is not worth building (the PS's NEON cores are in that range).
MIN_ARRAY_MACS = 16


class ResourceError(ValueError):
    """The program does not fit the board (always a one-line message naming the resource)."""


@dataclass(frozen=True)
class Budget:
    board: Board
    dsp_fraction: float = 0.8  # DSP, FF and LUT
    mem_fraction: float = 0.8  # BRAM36 and URAM

    def limit(self, resource: str) -> int:
        fraction = self.mem_fraction if resource in ("bram36", "uram") else self.dsp_fraction
        return int(getattr(self.board.resources, resource) * fraction)

    def describe(self, resource: str) -> str:
        fraction = self.mem_fraction if resource in ("bram36", "uram") else self.dsp_fraction
        return f"{self.limit(resource):,} ({fraction:.0%} of the board's {getattr(self.board.resources, resource):,})"


@dataclass
class Tiling:
    board: str
    P: int
    Q: int
    uarch: Uarch
    used: dict[str, int]  # resource -> count (uarch.resource_use)
    budget: dict[str, int]
    memories: list[Memory] = field(default_factory=list)
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    dsp_fraction: float = 0.8
    mem_fraction: float = 0.8

    @property
    def macs_per_cycle(self) -> int:
        return self.uarch.macs_per_cycle

    @property
    def macs_per_dsp(self) -> int:
        return self.uarch.macs_per_dsp

    @property
    def acc_on_chip(self) -> bool:
        return self.uarch.acc_tokens > 0

    def __getattr__(self, name: str):  # dsp, ff, lut, bram36, uram
        if name in RESOURCES:
            return self.used[name]
        raise AttributeError(name)

    def to_json(self) -> dict:
        d = asdict(self)
        d["uarch"] = self.uarch.constants()
        return d

    def summary(self) -> str:
        used = ", ".join(f"{r.upper()} {self.used[r]:,}" for r in RESOURCES)
        return (f"{self.board}: {self.P}x{self.Q} MAC array ({self.macs_per_cycle} MACs/cycle, "
                f"{self.macs_per_dsp} MAC/DSP); {used}")


def tiling_params(t: Tiling) -> dict:
    """The sizes the (older) HLS / RTL templates are generated with."""
    u = t.uarch
    return {"P": t.P, "Q": t.Q, "max_k": u.max_k, "max_n": u.max_n, "max_tokens": u.max_tokens,
            "max_head_dim": u.max_dh, "act_banks": 2, "acc_on_chip": 1}


# ---------------------------------------------------------------- candidate shapes

def q_step(u_epb: int) -> int:
    """Q is a multiple of 2*EPB: the column pairs' halves are whole beats (UARCH.md)."""
    return 2 * u_epb


def candidate_shapes(prog: Program, board: Board) -> list[tuple[int, int]]:
    eb = prog.elem_bytes
    epb = board.memory.axi_data_bits // 8 // eb
    step = q_step(epb)
    tokens = max([i.args.get("m", 0) for i in prog.instrs] + [i.args.get("tokens", 0) for i in prog.instrs] + [1])
    widest = max([i.args.get("n", 0) for i in prog.instrs] + [1])
    p_cap = min(MAX_P, max(4, math.ceil(tokens / 4) * 4))
    q_cap = min(MAX_Q, max(step, math.ceil(widest / step) * step))
    # Multiples of 4, and the row counts that split the tokens into equal blocks (65 -> 33, 22, 17, 13).
    exact = {-(-tokens // blocks) for blocks in range(1, tokens + 1)}
    ps = sorted({p for p in range(4, p_cap + 1, 4)} | {p for p in exact if 2 <= p <= p_cap} | {1, 2})
    return [(p, q) for p in ps for q in range(step, q_cap + 1, step) if p * q >= MIN_ARRAY_MACS]


def array_cycles(prog: Program, shapes: list[tuple[int, int]], epb: int) -> np.ndarray:
    """MAC-array cycles of the program under uniform routing per shape: the ranking proxy."""
    from .estimate import instr_rows, resolve_expert_counts

    counts, _ = resolve_expert_counts(prog, None)
    rows = instr_rows(prog, counts)
    P = np.array([s[0] for s in shapes], np.int64)
    Q = np.array([s[1] for s in shapes], np.int64)
    total = np.zeros(len(shapes), np.int64)
    for ins, r in zip(prog.instrs, rows):
        a = ins.args
        if ins.op == Op.MATMUL and r:
            total += -(-r // P) * -(-a["n"] // Q) * np.maximum(a["k"], np.minimum(P, r) * -(-np.minimum(Q, a["n"]) // epb))
        elif ins.op == Op.GATE:
            total += -(-a["tokens"] // P) * a["dim"]
        elif ins.op == Op.ATTN:
            t, dh, h = a["tokens"], a["head_dim"], a["heads"]
            qb, kb = -(-t // Q), -(-t // P)
            ev_cols = np.minimum(Q // 2, -(-P // epb) * epb)
            total += h * qb * (kb * np.maximum(dh, P) + -(-np.minimum(Q, t) // P) * -(-dh // ev_cols) * t)
    return total


# ---------------------------------------------------------------- choosing the array

def rule_violation(prog: Program, u: Uarch) -> HardwareRuleError | None:
    """The hardware rule `prog` breaks on `u`, or None."""
    try:
        check_program(prog, u)
    except HardwareRuleError as exc:
        return exc
    return None


def first_overrun(used: dict[str, int], budget: Budget) -> str | None:
    return next((r for r in RESOURCES if used[r] > budget.limit(r)), None)


def overrun_message(board: Board, P: int, Q: int, used: dict[str, int], budget: Budget, resource: str) -> str:
    return (f"design does not fit {board.name}: a {P}x{Q} MAC array needs {used[resource]:,} "
            f"{resource.upper()}, the budget is {budget.describe(resource)}")


def board_uarch(prog: Program, board: Board, P: int, Q: int, acc_on_chip: bool = True,
                bank_beats: int | None = None) -> Uarch:
    """The compute unit of `prog` on a P x Q array of `board`: its beat width, weight masters and DSP
    (two int8 products per DSP48E2 on Zynq UltraScale+; the 7-series DSP48E1 holds one); bank_beats:
    the abank capacity (default: the largest tensor)."""
    return derive_uarch(prog, P, Q, board.memory.axi_data_bits // 8, board.memory.weight_ports,
                        dsp_packing=board.family == "zynquplus", acc_on_chip=acc_on_chip, bank_beats=bank_beats)


def build_tiling(prog: Program, board: Board, P: int, Q: int, budget: Budget, acc_on_chip: bool = True,
                 bank_beats: int | None = None) -> Tiling:
    u = board_uarch(prog, board, P, Q, acc_on_chip, bank_beats)
    use = resource_use(u, budget.limit("uram"))
    return Tiling(board.name, P, Q, u, use.used, {r: budget.limit(r) for r in RESOURCES}, use.memories,
                  use.breakdown(), budget.dsp_fraction, budget.mem_fraction)


def bank_sizes(prog: Program, board: Board, P: int, Q: int) -> list[int]:
    """Bank capacities to try, largest first: the largest tensor, then powers of two down to the
    smallest bank the program runs with (uarch.bank_min_beats)."""
    beat = board.memory.axi_data_bits // 8
    need, least = bank_need_beats(prog, beat), bank_min_beats(prog, P, Q, beat)
    step = 4096  # a URAM's depth: a bank between two multiples wastes the rest of its URAMs
    sizes = [need] + [s for s in range(need // step * step, 0, -step) if least <= s < need]
    sizes += [1 << b for b in range(step.bit_length() - 2, 0, -1) if least <= 1 << b < min(need, step)]
    return sizes if least >= need else sizes + [least]


def shape_tilings(prog: Program, board: Board, P: int, Q: int, budget: Budget) -> list[Tiling]:
    """The tilings of one array shape: per MoE accumulator placement (on chip, then in DDR), the
    largest bank that fits the budget; the unfitting smallest one when none does."""
    acc_options = (True, False) if any(i.op == Op.GATE for i in prog.instrs) else (True,)
    sizes = bank_sizes(prog, board, P, Q)
    fitting, smallest = [], None
    for acc in acc_options:
        smallest = build_tiling(prog, board, P, Q, budget, acc, sizes[-1])
        if first_overrun(smallest.used, budget) is not None:
            continue
        lo, hi = 0, len(sizes) - 1  # sizes[hi] fits; resources grow with the bank
        best = smallest
        while lo < hi:
            mid = (lo + hi) // 2
            t = build_tiling(prog, board, P, Q, budget, acc, sizes[mid])
            if first_overrun(t.used, budget) is None:
                best, hi = t, mid
            else:
                lo = mid + 1
        fitting.append(best)
    return fitting or [smallest]


def fixed_tiling(prog: Program, board: Board, P: int, Q: int, dsp_fraction: float = 0.8,
                 mem_fraction: float = 0.8) -> Tiling:
    """The tiling at a given shape (its largest fitting bank), refused with a ResourceError when it does not fit."""
    budget = Budget(board, dsp_fraction, mem_fraction)
    t = shape_tilings(prog, board, P, Q, budget)[0]
    check_program(prog, t.uarch)
    over = first_overrun(t.used, budget)
    if over:
        raise ResourceError(overrun_message(board, P, Q, t.used, budget, over))
    return t


def choose_tiling(prog: Program, board: Board, dsp_fraction: float = 0.8, mem_fraction: float = 0.8) -> Tiling:
    """The fitting shape with the fewest estimated cycles; a ResourceError when none fits."""
    from .estimate import estimate

    budget = Budget(board, dsp_fraction, mem_fraction)
    shapes = candidate_shapes(prog, board)
    tilings = {s: shape_tilings(prog, board, *s, budget) for s in shapes}
    fitting = [s for s in shapes if first_overrun(tilings[s][0].used, budget) is None]
    if not fitting:
        smallest = min(shapes, key=lambda s: s[0] * s[1])
        t = tilings[smallest][0]
        raise ResourceError(overrun_message(board, *smallest, t.used, budget, first_overrun(t.used, budget)))
    for s in fitting:
        tilings[s] = [t for t in tilings[s] if rule_violation(prog, t.uarch) is None]
    legal = [s for s in fitting if tilings[s]]
    if not legal:
        raise rule_violation(prog, shape_tilings(prog, board, *fitting[0], budget)[0].uarch)
    fitting = legal
    epb = tilings[fitting[0]][0].uarch.epb
    proxy = array_cycles(prog, fitting, epb)
    best = [fitting[i] for i in np.argsort(proxy, kind="stable")[:FULL_ESTIMATE_SHAPES]]
    scored = [(estimate(prog, t.uarch, board).cycles, t.used["dsp"], s, n) for s in best
              for n, t in enumerate(tilings[s])]
    _, _, s, n = min(scored)
    return tilings[s][n]
