"""Optional logic synthesis of the generated Verilog with yosys `synth_xilinx`.

Vivado is not available to CI, so yosys (Debian package `yosys`) gives a free, independent count
of what the generated RTL costs in Xilinx primitives (LUT, FF, DSP48, block RAM, URAM). The
figures are yosys's mapping, not Vivado's: expect the same order of magnitude, not the same
numbers (yosys does not pack LUTs as tightly, and infers memories by its own rules).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .render import TOP_MODULE as TOP

# synth_xilinx -family per board family (codesign/boards.py PS_TYPE_BY_FAMILY keys).
YOSYS_FAMILY = {"zynquplus": "xcup", "zynq": "xc7", "versal": "xcup"}

# Primitive name patterns -> the resource class a Vivado utilisation report would put them in.
_CLASSES = (
    ("lut", re.compile(r"^LUT[1-6]$")),
    ("lutram", re.compile(r"^(RAM(32|64|128|256)[MX]\w*|SRL\w+)$")),
    ("ff", re.compile(r"^FD[CPRS]E$")),
    ("carry", re.compile(r"^CARRY[48]$")),
    ("dsp", re.compile(r"^DSP48E[12]$")),
    ("bram36", re.compile(r"^RAMB36E[12]$")),
    ("bram18", re.compile(r"^RAMB18E[12]$")),
    ("uram", re.compile(r"^URAM288\w*$")),
)


class SynthError(RuntimeError):
    """yosys is missing or failed; the message says what to do (a one-line CLI error)."""


@dataclass
class SynthResult:
    family: str
    seconds: float
    cells: dict[str, int]
    resources: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def find_yosys() -> str:
    path = shutil.which("yosys")
    if path is None:
        raise SynthError("yosys not found: install it with `apt-get install yosys` (Debian/Ubuntu)")
    return path


def classify(cells: dict[str, int]) -> dict[str, float]:
    """Vivado-style resource counts from a yosys cell histogram (BRAM18 count as half a BRAM36)."""
    out = {name: 0 for name, _ in _CLASSES}
    for cell, count in cells.items():
        for name, pattern in _CLASSES:
            if pattern.match(cell):
                out[name] += count
                break
    out["bram36_equiv"] = out["bram36"] + out["bram18"] / 2
    return out


def _script(sources: list[Path], family: str, stat_json: Path, top: str = TOP, params: dict | None = None) -> str:
    files = " ".join(str(s) for s in sources)
    chparam = f"chparam {' '.join(f'-set {k} {int(v)}' for k, v in params.items())} {top}; " if params else ""
    # -flatten: count the whole hierarchy once; SYNTHESIS drops the simulation-only trace code.
    return (f"read_verilog -DSYNTHESIS {files}; {chparam}synth_xilinx -family {family} -top {top} -flatten; "
            f"tee -q -o {stat_json} stat -json")


def synth_rtl(rtl_dir: Path, family: str = "xcup", log: Path | None = None, timeout_s: int = 1800,
              top: str = TOP, params: dict | None = None) -> SynthResult:
    """Run yosys synth_xilinx on every *.v in rtl_dir; return the primitive counts.

    `top` and `params` (Verilog parameters of `top`) synthesize one unit on its own, e.g. the
    vector unit cs_vec of codesign.rtl.render.render_units."""
    yosys = find_yosys()
    rtl_dir = Path(rtl_dir)
    sources = sorted(rtl_dir.glob("*.v"))
    if not sources:
        raise SynthError(f"no Verilog (*.v) in {rtl_dir}")
    log = Path(log) if log else rtl_dir.parent / "synth_yosys.log"
    stat_json = log.with_suffix(".stat.json")
    start = time.monotonic()
    try:
        proc = subprocess.run([yosys, "-q", "-l", str(log), "-p", _script(sources, family, stat_json, top, params)],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SynthError(f"yosys did not finish in {timeout_s} s; see {log}") from exc
    if proc.returncode != 0:
        raise SynthError(f"yosys failed (exit {proc.returncode}); see {log}")
    cells = _top_cells(json.loads(stat_json.read_text()), top)
    return SynthResult(family, round(time.monotonic() - start, 1), cells, classify(cells))


def _top_cells(stat: dict, name: str = TOP) -> dict[str, int]:
    modules = stat.get("modules", {})
    top = modules.get(f"\\{name}") or modules.get(name) or next(iter(modules.values()), {})
    return {name.lstrip("\\"): int(n) for name, n in top.get("num_cells_by_type", {}).items()}


_ROWS = (("LUT (logic)", "lut"), ("LUT as memory", "lutram"), ("FF", "ff"), ("DSP", "dsp"),
         ("BRAM36 (equiv.)", "bram36_equiv"), ("URAM", "uram"))
_BOARD_KEY = {"lut": "lut", "ff": "ff", "dsp": "dsp", "bram36_equiv": "bram36", "uram": "uram"}


def synth_table(result: SynthResult, board_resources: dict, estimate: dict | None, rtl_array: str) -> str:
    """Yosys counts of the RTL core next to the board's totals and the HLS tiling estimate."""
    est_name = f"HLS estimate ({estimate['P']}x{estimate['Q']})" if estimate else "HLS estimate"
    head = f"{'resource':<18}{'yosys RTL (' + rtl_array + ')':>22}{'board':>10}{'% board':>9}{est_name:>26}"
    lines = [head, "-" * len(head)]
    for label, key in _ROWS:
        used = result.resources.get(key, 0)
        total = board_resources.get(_BOARD_KEY.get(key, ""), 0)
        share = f"{100 * used / total:.1f}%" if total else "-"
        est = (estimate or {}).get(_BOARD_KEY.get(key, ""), "-")
        lines.append(f"{label:<18}{used:>22,.0f}{total or '-':>10}{share:>9}{est:>26}")
    lines.append(f"yosys {result.family}, {result.seconds:.0f} s; yosys's mapping, not Vivado's: compare orders "
                 "of magnitude. The RTL core is sized for simulation; the estimate is the board's array.")
    return "\n".join(lines)


def rtl_core_shape(rtl_dir: Path) -> tuple[int, int] | None:
    """(P, Q) of a generated core, from its localparams; None for foreign (e.g. Vitis) RTL."""
    core = Path(rtl_dir) / "codesign_core.v"
    text = core.read_text() if core.exists() else ""
    p = re.search(r"localparam\s+P\s*=\s*(\d+)\s*;", text)
    eb = re.search(r"localparam\s+EB\s*=\s*(\d+)\s*;", text)
    return (int(p.group(1)), 8 // int(eb.group(1))) if p and eb else None


def rtl_array(rtl_dir: Path) -> str:
    """'PxQ' of a generated core, or 'RTL' for foreign RTL."""
    shape = rtl_core_shape(rtl_dir)
    return f"{shape[0]}x{shape[1]}" if shape else "RTL"


def synth_project(project_dir: Path, rtl_dir: Path | None = None) -> tuple[SynthResult, str]:
    """Synthesize a generated project's RTL for its board's family; write reports/synth.{json,txt}."""
    from ..boards import load_board

    project_dir = Path(project_dir)
    meta = json.loads((project_dir / "project.json").read_text())
    board = load_board(meta["board"])
    rtl_dir = Path(rtl_dir) if rtl_dir else project_dir / "rtl"
    reports = project_dir / "reports"
    reports.mkdir(exist_ok=True)
    result = synth_rtl(rtl_dir, YOSYS_FAMILY.get(board.family, "xcup"), log=reports / "synth_yosys.log")
    estimate = _estimate_resources(reports / "estimate.json")
    array = rtl_array(rtl_dir)
    table = synth_table(result, asdict(board.resources), estimate, array)
    (reports / "synth.json").write_text(json.dumps({"board": board.name, "rtl_array": array,
                                                    **result.to_json(), "estimate": estimate}, indent=1))
    (reports / "synth.txt").write_text(table + "\n")
    return result, table


def _estimate_resources(path: Path) -> dict | None:
    if not path.exists():
        return None
    tiling = json.loads(path.read_text()).get("tiling", {})
    keys = ("P", "Q", "dsp", "bram36", "uram", "lut")
    return {k: tiling[k] for k in keys if k in tiling} if "P" in tiling else None
