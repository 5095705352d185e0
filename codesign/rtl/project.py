"""The RTL a project gets: the docs/UARCH.md core, at which array, and the estimate at the core's
own microarchitecture.

The core is rendered at the tiling's P x Q with its bank, MoE accumulator placement, bus and
weight masters (derive_uarch on the program); `array` gives a smaller twin with the same
microarchitecture (its own derive_uarch at that P x Q). What was rendered is rtl/rtl.json
(codesign.rtl.render.RTL_RECORD): cosim, compare, the cycles report and the bench read the core
from there.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

from . import render
from .render import RTL_RECORD

RECORD_KEYS = ("P", "Q", "weight_ports", "axi_bits")  # data/manifest.json `rtl`
IDEAL_NS = 1e-9      # a read latency the estimate rounds to 0 cycles (0 would mean "the default")
IDEAL_GBPS = 1e9     # bandwidth no DDR reaches: the ideal memory's "unlimited"


# ---------------------------------------------------------------- the uarch core's size

def rtl_uarch(prog, board_u, array: tuple[int, int] | None = None):
    """The Uarch the uarch core is built at: the tiling's (`board_u`) at its P x Q, or at `array`."""
    from ..schedule.uarch import derive_uarch

    P, Q = array or (board_u.P, board_u.Q)
    return derive_uarch(prog, P, Q, board_u.beat_bytes, board_u.weight_ports, dsp_packing=board_u.dsp_packing,
                        acc_on_chip=board_u.acc_tokens > 0, bank_beats=board_u.bank_beats)


def checked_rtl_uarch(prog, board_u, array: tuple[int, int] | None = None):
    """rtl_uarch, or a one-line ValueError naming what the core cannot build at that array."""
    from ..schedule.uarch import check_program

    u = rtl_uarch(prog, board_u, array)
    try:
        check_program(prog, u)
        render.uarch_core_params(u)
    except ValueError as exc:
        where = "" if f"{u.P}x{u.Q}" in str(exc) else f" at {u.P}x{u.Q}"
        raise ValueError(f"the uarch RTL core{where}: {exc}") from None
    return u


def check_rtl_array(design, array: tuple[int, int] | None) -> None:
    """Refuse (ValueError, one line) an `--rtl-array` the core cannot build, before anything is written."""
    if array is not None:
        checked_rtl_uarch(design.prog, design.tiling.uarch, array)


def render_design_rtl(project_dir: Path, design, array: tuple[int, int] | None = None) -> dict:
    """Render PROJECT/rtl for `design`; the record it wrote (rtl/rtl.json).
    ValueError (one line) when the core cannot build the program at that array."""
    from ..schedule.tiling import Budget

    project_dir = Path(project_dir)
    render.render_uarch_rtl(project_dir / "rtl", checked_rtl_uarch(design.prog, design.tiling.uarch, array),
                            trace=True, uram_budget=Budget(design.board).limit("uram"))
    return read_record(project_dir / "rtl")


# ---------------------------------------------------------------- what was rendered

def read_record(rtl_dir: Path) -> dict | None:
    """rtl/rtl.json, or None (foreign RTL, e.g. a Vitis export, or an unreadable record)."""
    try:
        rec = json.loads((Path(rtl_dir) / RTL_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def record_uarch(rec: dict | None):
    """The Uarch a uarch core was rendered at (its record's `uarch`), else None."""
    from ..schedule.uarch import Uarch

    if not rec or rec.get("core") != "uarch" or not isinstance(rec.get("uarch"), dict):
        return None
    fields = {f.name for f in dataclasses.fields(Uarch)}
    return Uarch(**{k: v for k, v in rec["uarch"].items() if k in fields})


def manifest_entry(rec: dict | None) -> dict | None:
    """data/manifest.json's `rtl`: the array, weight masters and bus of the RTL (None: not generated)."""
    return {k: rec[k] for k in RECORD_KEYS} if rec else None


def tiling_entry(rec: dict | None) -> dict | None:
    """reports/estimate.json's `rtl_tiling`: the tiling the RTL was built at."""
    if not rec:
        return None
    out = {"core": rec["core"], **manifest_entry(rec)}
    u = record_uarch(rec)
    if u is not None:
        out.update(bank_beats=u.bank_beats, acc_on_chip=u.acc_tokens > 0, dsp_packing=u.dsp_packing)
    return out


def write_records(project_dir: Path, rec: dict | None) -> None:
    """The RTL's size into data/manifest.json (`rtl`) and reports/estimate.json (`rtl_tiling`)."""
    for path, key, value in ((Path(project_dir) / "data" / "manifest.json", "rtl", manifest_entry(rec)),
                             (Path(project_dir) / "reports" / "estimate.json", "rtl_tiling", tiling_entry(rec))):
        doc = json.loads(path.read_text())
        doc[key] = value
        path.write_text(json.dumps(doc, indent=1))


# ---------------------------------------------------------------- the estimate at the RTL's Uarch

def project_program(data_dir: Path):
    """The program of a data/ folder as the estimate reads it (decoded, layer names from the manifest)."""
    from ..emit.data import load_data_manifest
    from ..schedule.isa import decode_program

    man = load_data_manifest(Path(data_dir))
    code = (Path(data_dir) / man.get("program_file", "program.bin")).read_bytes()
    instrs = decode_program(code)
    for ins, info in zip(instrs, man.get("instructions", [])):
        ins.layer = info.get("layer", "")
    return SimpleNamespace(instrs=instrs, code=code, elem_bytes=man["elem_bytes"], abits=man["abits"],
                           wbits=man["wbits"], num_tasks=man["num_tasks"], moe_layers=man.get("moe_layers", {}))


def memory_board(board, memory):
    """`board` with the read latency and bandwidth of a cosim memory model (codesign.sim.memory),
    so that the estimate sees the memory the RTL ran with."""
    if memory is None:
        return board
    ns = memory.latency_cycles * 1000 / board.clock_mhz or IDEAL_NS
    bpc = memory.bytes_per_cycle
    gbps = IDEAL_GBPS if bpc is None else bpc * board.clock_hz / 1e9 / board.memory.ddr_efficiency
    return dataclasses.replace(board, memory=dataclasses.replace(board.memory, read_latency_ns=ns, ddr_gbps=gbps))


def project_board(project_dir: Path):
    """The board of project.json at the project's clock, or None (a project without one)."""
    from ..boards import board_variant, load_board

    try:
        info = json.loads((Path(project_dir) / "project.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not info.get("board"):
        return None
    return board_variant(load_board(info["board"]), clock_mhz=info.get("clock_mhz"))


def rtl_estimate(project_dir: Path, rtl_dir: Path, memory=None, expert_counts=None, data_dir: Path | None = None):
    """codesign.schedule.estimate at the uarch core's own Uarch (rtl/rtl.json) and `memory`, or
    None when the RTL is not that core or the project names no board."""
    from ..schedule.estimate import estimate

    u = record_uarch(read_record(rtl_dir))
    board = project_board(project_dir) if u is not None else None
    if board is None:
        return None
    prog = project_program(Path(data_dir) if data_dir else Path(project_dir) / "data")
    return estimate(prog, u, memory_board(board, memory), expert_counts)
