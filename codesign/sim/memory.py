"""The memory behind the co-simulation's AXI slaves: a board's DDR (read latency, sustained
bandwidth) or the ideal memory of the functional tests (no latency, unlimited bandwidth).

The Verilog model (sim/tb_axi_mem_port.v in sim/tb_top.v.j2) counts in kernel clock cycles, so the
board's figures are converted at the board's clock: latency ceil(read_latency_ns * clock_mhz /
1000) cycles, bandwidth Board.ddr_bytes_per_cycle (ddr_gbps * ddr_efficiency) shared by every
master's reads and writes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..boards import Board, board_variant, load_board


@dataclass(frozen=True)
class MemoryModel:
    name: str                             # "ideal" or the board's name
    latency_ns: float = 0.0               # AR accepted -> first R beat (and last W beat -> B)
    clock_mhz: float | None = None        # the clock the cycles count (None: ideal)
    bytes_per_cycle: float | None = None  # shared bandwidth; None: unlimited

    @property
    def latency_cycles(self) -> int:
        if not self.clock_mhz:
            return 0
        return math.ceil(self.latency_ns * self.clock_mhz / 1000 - 1e-9)

    def job_entry(self) -> dict:
        """The "memory" entry of the testbench's job.json (sim/tb_codesign.py)."""
        return {"latency_cycles": self.latency_cycles, "bytes_per_cycle": self.bytes_per_cycle}

    def to_json(self) -> dict:
        return {"model": self.name, "read_latency_cycles": self.latency_cycles,
                "read_latency_ns": self.latency_ns, "clock_mhz": self.clock_mhz,
                "bytes_per_cycle": None if self.bytes_per_cycle is None else round(self.bytes_per_cycle, 3)}

    def describe(self) -> str:
        if self.bytes_per_cycle is None and not self.latency_cycles:
            return "ideal memory (no latency, unlimited bandwidth)"
        bandwidth = "unlimited" if self.bytes_per_cycle is None else f"{self.bytes_per_cycle:.1f} B/cycle"
        return (f"{self.name} DDR: read latency {self.latency_cycles} cycles ({self.latency_ns:g} ns at "
                f"{self.clock_mhz:g} MHz), {bandwidth} shared by all masters")


IDEAL = MemoryModel("ideal")


def board_memory(board: Board) -> MemoryModel:
    return MemoryModel(board.name, float(board.memory.read_latency_ns), float(board.clock_mhz),
                       float(board.ddr_bytes_per_cycle))


def project_memory(project_dir: Path, memory: "str | Board | MemoryModel | None" = None) -> MemoryModel:
    """The memory model of a co-simulation: `memory` None -> the board of project.json (the ideal
    memory when the project names none, e.g. test projects); "ideal"; a board name, board file or
    Board; or a MemoryModel."""
    if isinstance(memory, MemoryModel):
        return memory
    if isinstance(memory, Board):
        return board_memory(memory)
    if memory == "ideal":
        return IDEAL
    if memory is not None:
        return board_memory(load_board(memory))
    try:
        info = json.loads((Path(project_dir) / "project.json").read_text())
    except (OSError, ValueError):
        info = {}
    name = info.get("board") if isinstance(info, dict) else None
    if not name:
        return IDEAL
    # A project generated at another clock than its board file's (generate --clock) keeps it there.
    return board_memory(board_variant(load_board(name), clock_mhz=info.get("clock_mhz")))
