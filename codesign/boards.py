"""Target board descriptions: loading and validating boards/<name>.yaml.

A board file is small and hand-written, so every problem is reported as a
one-line BoardError naming the file and the offending field; downstream code
(resource models, Tcl templates) can then trust every field it reads.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import brief, brief_list
from .resources import resource_dir
from .yamlio import read_yaml

BOARDS_DIR = resource_dir("boards")

# The PS IP the block design instantiates is fixed by the device family.
PS_TYPE_BY_FAMILY = {"zynquplus": "zynq_ultra_ps_e", "zynq": "processing_system7"}

# Device families a part name may belong to: (description, pattern, `family` field it needs).
# The pattern is the AMD ordering code prefix: device (and, for full part names, package,
# speed grade, temperature) follow it, e.g. xczu7ev-ffvc1156-2-e, xc7z020clg400-1.
PART_FAMILIES = (
    ("Zynq UltraScale+", re.compile(r"xczu\d+[a-z]*(-[a-z0-9]+)*", re.I), "zynquplus"),
    ("Zynq-7000", re.compile(r"xc7z\d+[a-z0-9]*(-[a-z0-9]+)*", re.I), "zynq"),
    ("Kria", re.compile(r"xck26(-[a-z0-9]+)*", re.I), "zynquplus"),
    ("Versal", re.compile(r"xcv[a-z]*\d+(-[a-z0-9]+)*", re.I), "versal"),
)
READ_LATENCY_NS = (20, 2000)  # accepted range of memory.read_latency_ns

PART_PATTERNS_TEXT = "Zynq UltraScale+ (xczu*), Zynq-7000 (xc7z*), Kria (xck26*), Versal (xcv*)"


class BoardError(ValueError):
    """A board name or board file that cannot be used (always a one-line message)."""


@dataclass(frozen=True)
class Resources:
    dsp: int
    bram36: int
    uram: int
    lut: int
    ff: int


@dataclass(frozen=True)
class Memory:
    ddr_gbps: float  # peak DDR bandwidth, 1e9 bytes/s
    ddr_efficiency: float  # sustained fraction of peak, in (0, 1]
    read_latency_ns: float  # PL-to-PS DDR read latency: AR accepted -> first R beat (cosim memory model)
    axi_data_bits: int  # width of one PS high-performance slave port
    hp_ports: int
    # m_axi masters that stream weight tiles (the kernel's wgt, wgt1, ...), one PS HP port each;
    # the activation/program master gmem takes HPC0 (Zynq UltraScale+) or HP0 (Zynq-7000).
    weight_ports: int


@dataclass(frozen=True)
class ProcessingSystem:
    type: str
    ip_vlnv: str


@dataclass(frozen=True)
class Board:
    name: str
    vendor: str
    part: str
    board_part: str | None  # None: the board files are not needed (bare part)
    family: str
    clock_mhz: float
    resources: Resources
    memory: Memory
    ps: ProcessingSystem
    pynq: bool

    @property
    def clock_hz(self) -> float:
        return self.clock_mhz * 1e6

    @property
    def ddr_bytes_per_cycle(self) -> float:
        """Sustained DDR bytes per kernel clock cycle."""
        sustained_bytes_per_s = self.memory.ddr_gbps * 1e9 * self.memory.ddr_efficiency
        return sustained_bytes_per_s / self.clock_hz


# Upper bounds that no real board reaches: a value past them is a typo (or 1e12, .inf) that would
# otherwise turn every estimate into nonsense.
MAX_CLOCK_MHZ = 1000  # programmable logic clocks stay well below 1 GHz
MAX_DDR_GBPS = 1000  # HBM parts have about 820 GB/s
MAX_COUNT = 100_000_000  # the largest devices have about 20 million flip-flops

# Field schemas: name -> expected kind. Nested sections map to their own schema.
_RESOURCE_FIELDS = {"dsp": "count", "bram36": "count", "uram": "count0", "lut": "count", "ff": "count"}
_MEMORY_FIELDS = {
    "ddr_gbps": "bandwidth",
    "ddr_efficiency": "fraction",
    "read_latency_ns": "latency_ns",
    "axi_data_bits": "axi_width",
    "hp_ports": "count",
    "weight_ports": "count",
}
_PS_FIELDS = {"type": "text", "ip_vlnv": "text"}
_BOARD_FIELDS: dict[str, Any] = {
    "name": "text",
    "vendor": "text",
    "part": "text",
    "board_part": "optional_text",
    "family": "family",
    "clock_mhz": "clock",
    "resources": _RESOURCE_FIELDS,
    "memory": _MEMORY_FIELDS,
    "ps": _PS_FIELDS,
    "pynq": "bool",
}


def known_boards() -> list[str]:
    return sorted(path.stem for path in BOARDS_DIR.glob("*.yaml"))


def load_board(name_or_path: str | Path) -> Board:
    """Load a board by name (boards/<name>.yaml) or by path to a .yaml file."""
    path = _resolve_board_file(str(name_or_path))
    raw = _read_yaml_mapping(path)
    _check_fields(path, raw, _BOARD_FIELDS, prefix="")
    board = _build_board(raw)
    _check_part(path, board)
    _check_ps_matches_family(path, board)
    _check_weight_ports(path, board)
    return board


def free_hp_ports(board: Board) -> int:
    """HP ports left for weight masters: Zynq-7000 has no HPC port, so gmem takes HP0 there."""
    return board.memory.hp_ports - (1 if board.family == "zynq" else 0)


def board_variant(board: Board, weight_ports: int | None = None, clock_mhz: float | None = None) -> Board:
    """`board` with another number of weight masters or another kernel clock (None: the board's),
    checked like the board file's own fields (codesign explore sweeps both; generate takes them)."""
    if weight_ports is not None:
        limit = free_hp_ports(board)
        if not _is_int(weight_ports) or not 1 <= weight_ports <= limit:
            raise BoardError(f"{board.name}: weight ports must be an integer in 1..{limit} (one PS HP port per "
                             f"weight master, {board.memory.hp_ports} HP ports), got {brief(weight_ports)}")
        board = dataclasses.replace(board, memory=dataclasses.replace(board.memory, weight_ports=weight_ports))
    if clock_mhz is not None:
        if not _VALIDATORS["clock"](clock_mhz):
            raise BoardError(f"{board.name}: the clock must be {_KIND_DESCRIPTIONS['clock']}, got {brief(clock_mhz)}")
        board = dataclasses.replace(board, clock_mhz=float(clock_mhz))
    return board


def _check_weight_ports(path: Path, board: Board) -> None:
    limit = free_hp_ports(board)
    if board.memory.weight_ports > limit:
        raise BoardError(f"{path}: field memory.weight_ports must be at most {limit} (one PS HP port per weight "
                         f"master, {board.memory.hp_ports} HP ports), got {board.memory.weight_ports}")


def part_family(part: str) -> tuple[str, str] | None:
    """(family description, `family` field it needs) of an AMD part name, or None if unknown."""
    for description, pattern, family in PART_FAMILIES:
        if pattern.fullmatch(part.strip()):
            return description, family
    return None


def _check_part(path: Path, board: Board) -> None:
    known = part_family(board.part)
    if known is None:
        raise BoardError(f"{path}: field part {brief(board.part)} is not a part of a supported device family; "
                         f"expected {PART_PATTERNS_TEXT}")
    description, family = known
    if family not in PS_TYPE_BY_FAMILY:
        raise BoardError(f"{path}: field part {brief(board.part)} is a {description} part, whose PS the generated block "
                         f"design does not support yet (family must be one of {', '.join(PS_TYPE_BY_FAMILY)})")
    if family != board.family:
        raise BoardError(f"{path}: field part {brief(board.part)} is a {description} part: family must be {family!r}, "
                         f"got {board.family!r}")


def _resolve_board_file(name_or_path: str) -> Path:
    looks_like_path = name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path
    if looks_like_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise BoardError(f"board file not found: {path}")
        return path
    if name_or_path not in known_boards():
        known = ", ".join(known_boards())
        raise BoardError(f"unknown board {brief(name_or_path)}; known boards: {known}")
    return BOARDS_DIR / f"{name_or_path}.yaml"


def _read_yaml_mapping(path: Path) -> dict:
    raw = read_yaml(path, BoardError)
    if not isinstance(raw, dict):
        raise BoardError(f"{path}: expected a mapping of board fields at top level")
    return raw


def _check_fields(path: Path, raw: Mapping, schema: Mapping[str, Any], prefix: str) -> None:
    """Check presence, absence of extras, and type of every field, recursively."""
    missing = [prefix + key for key in schema if key not in raw]
    if missing:
        raise BoardError(f"{path}: missing field(s): {', '.join(missing)}")
    # Unknown keys are most likely typos of optional fields, which would otherwise be ignored.
    unknown = [prefix + (key if isinstance(key, str) else brief(key)) for key in raw if key not in schema]
    if unknown:
        raise BoardError(f"{path}: unknown field(s): {brief_list(unknown)}")
    for key, kind in schema.items():
        field = prefix + key
        if isinstance(kind, Mapping):
            if not isinstance(raw[key], Mapping):
                raise BoardError(f"{path}: field {field} must be a mapping")
            _check_fields(path, raw[key], kind, prefix=field + ".")
        elif not _VALIDATORS[kind](raw[key]):
            raise BoardError(f"{path}: field {field} must be {_KIND_DESCRIPTIONS[kind]}, got {brief(raw[key])}")


def _is_number(value: Any) -> bool:
    # bool is an int subclass; `dsp: yes` must not count as 1.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_VALIDATORS = {
    "text": lambda v: isinstance(v, str) and v.strip() != "",
    "optional_text": lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
    "family": lambda v: v in PS_TYPE_BY_FAMILY,
    "clock": lambda v: _is_number(v) and 0 < v <= MAX_CLOCK_MHZ,  # NaN and inf fail both comparisons
    "bandwidth": lambda v: _is_number(v) and 0 < v <= MAX_DDR_GBPS,
    "fraction": lambda v: _is_number(v) and 0 < v <= 1,
    "count": lambda v: _is_int(v) and 0 < v <= MAX_COUNT,
    "count0": lambda v: _is_int(v) and 0 <= v <= MAX_COUNT,  # e.g. URAM: absent on many parts
    "axi_width": lambda v: _is_int(v) and v in (32, 64, 128, 256, 512, 1024),
    # DDR behind an interconnect: tens of ns is too fast to be real, microseconds a unit mix-up
    "latency_ns": lambda v: _is_number(v) and READ_LATENCY_NS[0] <= v <= READ_LATENCY_NS[1],
    "bool": lambda v: isinstance(v, bool),
}

_KIND_DESCRIPTIONS = {
    "text": "a non-empty string",
    "optional_text": "a non-empty string or null",
    "family": "one of " + ", ".join(PS_TYPE_BY_FAMILY),
    "clock": f"a clock in MHz in (0, {MAX_CLOCK_MHZ}]",
    "bandwidth": f"a bandwidth in GB/s in (0, {MAX_DDR_GBPS}]",
    "fraction": "a number in (0, 1]",
    "count": f"an integer in 1..{MAX_COUNT:,}",
    "count0": f"an integer in 0..{MAX_COUNT:,}",
    "axi_width": "a power-of-two AXI width between 32 and 1024",
    "latency_ns": f"a number of ns in [{READ_LATENCY_NS[0]}, {READ_LATENCY_NS[1]}]",
    "bool": "true or false",
}


def _build_board(raw: Mapping) -> Board:
    return Board(
        name=raw["name"],
        vendor=raw["vendor"],
        part=raw["part"],
        board_part=raw["board_part"],
        family=raw["family"],
        clock_mhz=raw["clock_mhz"],
        resources=Resources(**raw["resources"]),
        memory=Memory(**raw["memory"]),
        ps=ProcessingSystem(**raw["ps"]),
        pynq=raw["pynq"],
    )


def _check_ps_matches_family(path: Path, board: Board) -> None:
    expected = PS_TYPE_BY_FAMILY[board.family]
    if board.ps.type != expected:
        raise BoardError(f"{path}: field ps.type must be {expected!r} for family {board.family!r}, got {brief(board.ps.type)}")
