"""`codesign report`: Vitis HLS's own reports next to codesign's estimate and schedule table.

With Vitis HLS on the user's machine, `vitis_hls -f run_hls.tcl` leaves, in the project:
  <hls project>/solution*/syn/report/csynth.xml      top module: overall latency, resources
  <hls project>/solution*/syn/report/*_csynth.xml    one per module: its loops
  <hls project>/solution*/sim/report/*_cosim.rpt     after C/RTL co-simulation: latency min/avg/max
csynth.xml is Vitis HLS's <profile> schema: PerformanceEstimates/SummaryOfOverallLatency,
PerformanceEstimates/SummaryOfLoopLatency (one element per loop, nested loops inside, each with
Name, TripCount, Latency, PipelineII), AreaEstimates/Resources (BRAM_18K, DSP, FF, LUT, URAM).
Loop labels in the kernel follow docs/SCHEDULE.md's rows, which give each loop's expected II.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import brief

CSYNTH_GLOB = "*/solution*/syn/report/csynth.xml"
COSIM_GLOB = "*/solution*/sim/report/*_cosim.rpt"
RESOURCES = ("DSP", "FF", "LUT", "BRAM_18K", "URAM")
# reports/estimate.json names its resources in lower case, BRAM in 36 Kb blocks (two 18K each).
ESTIMATE_RESOURCES = {"DSP": ("dsp", 1), "FF": ("ff", 1), "LUT": ("lut", 1), "BRAM_18K": ("bram36", 2),
                      "URAM": ("uram", 1)}


class ReportError(ValueError):
    """No Vitis reports where they should be, or one that cannot be read (one line)."""


@dataclass
class HlsLoop:
    module: str
    name: str
    path: str  # outer/inner for nested loops
    ii: str
    trip_count: str
    latency: str


@dataclass
class Csynth:
    file: Path
    top: str
    version: str
    part: str
    target_ns: str
    estimated_ns: str
    latency: dict[str, str]  # best / average / worst (clock cycles)
    resources: dict[str, str]
    available: dict[str, str]
    loops: list[HlsLoop] = field(default_factory=list)


@dataclass
class CosimLatency:
    file: Path
    status: str
    latency: dict[str, str]  # min / avg / max


# ---------------------------------------------------------------- finding and reading


def find_reports(project_dir: Path) -> tuple[Path, Path | None]:
    """(csynth.xml, *_cosim.rpt or None) of the project's Vitis HLS run; ReportError naming the
    files looked for when there is no csynth.xml."""
    project_dir = Path(project_dir)
    if not project_dir.is_dir():
        raise ReportError(f"{project_dir} is not a folder: give the generated project, where run_hls.tcl ran")
    csynth = sorted(project_dir.glob(CSYNTH_GLOB))
    if not csynth:
        raise ReportError(f"no Vitis HLS reports: looked for {project_dir / CSYNTH_GLOB} (and "
                          f"{project_dir / COSIM_GLOB}); run `vitis_hls -f run_hls.tcl` (make hls) in the project first")
    cosim = sorted(project_dir.glob(COSIM_GLOB))
    return csynth[-1], (cosim[-1] if cosim else None)


def read_csynth(path: Path) -> Csynth:
    """The top module's csynth.xml and, for its loops, every *_csynth.xml beside it."""
    root = _parse(path)
    top = _text(root, "UserAssignments/TopModelName")
    report = Csynth(path, top, _text(root, "ReportVersion/Version"), _text(root, "UserAssignments/Part"),
                    _text(root, "UserAssignments/TargetClockPeriod"),
                    _text(root, "PerformanceEstimates/SummaryOfTimingAnalysis/EstimatedClockPeriod"),
                    {k: _text(root, f"PerformanceEstimates/SummaryOfOverallLatency/{k.capitalize()}-caseLatency")
                     for k in ("best", "average", "worst")},
                    _resources(root, "AreaEstimates/Resources"), _resources(root, "AreaEstimates/AvailableResources"))
    modules = {top: root}
    for other in sorted(path.parent.glob("*_csynth.xml")):
        module_root = _parse(other)
        modules.setdefault(_text(module_root, "UserAssignments/TopModelName") or other.stem[:-len("_csynth")],
                           module_root)
    for module, module_root in modules.items():
        summary = module_root.find("PerformanceEstimates/SummaryOfLoopLatency")
        if summary is not None:
            report.loops += _loops(module, summary, "")
    return report


def _parse(path: Path) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ReportError(f"{path} is not a readable Vitis HLS report ({type(exc).__name__}: {brief(str(exc))})") from None
    if root.tag != "profile":
        raise ReportError(f"{path}: expected a Vitis HLS <profile> report, found <{brief(root.tag)}>")
    return root


def _text(root: ET.Element, path: str) -> str:
    node = root.find(path)
    return _value(node)


def _value(node: ET.Element | None) -> str:
    """An element's value: its text, or min..max of a <range> (variable trip counts)."""
    if node is None:
        return "-"
    rng = node.find("range")
    if rng is not None:
        low, high = _value(rng.find("min")), _value(rng.find("max"))
        return low if low == high else f"{low}..{high}"
    return (node.text or "").strip() or "-"


def _resources(root: ET.Element, path: str) -> dict[str, str]:
    node = root.find(path)
    if node is None:
        return {}
    values = {child.tag: _value(child) for child in node}
    if "DSP" not in values and "DSP48E" in values:  # the name before Vitis HLS 2020.2
        values["DSP"] = values["DSP48E"]
    return values


def _loops(module: str, parent: ET.Element, prefix: str) -> list[HlsLoop]:
    out = []
    for node in parent:
        if node.find("Name") is None:
            continue
        name = _value(node.find("Name"))
        path = f"{prefix}/{name}" if prefix else name
        out.append(HlsLoop(module, name, path, _value(node.find("PipelineII")), _value(node.find("TripCount")),
                           _value(node.find("Latency"))))
        out += _loops(module, node, path)
    return out


_COSIM_ROW = re.compile(r"^\|\s*(Verilog|VHDL)\s*\|\s*(\w+)\s*\|\s*([^|]+)\|\s*([^|]+)\|\s*([^|]+)\|", re.M)


def read_cosim(path: Path) -> CosimLatency:
    """The latency row of a Vitis HLS C/RTL co-simulation report (the RTL that ran, not the NA one)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}") from None
    rows = [m for m in _COSIM_ROW.finditer(text) if m[2].strip().upper() != "NA"]
    if not rows:
        raise ReportError(f"{path}: no Verilog or VHDL latency row (min | avg | max) in the co-simulation report")
    row = rows[0]
    return CosimLatency(path, row[2].strip(), {k: row[i].strip() for k, i in (("min", 3), ("avg", 4), ("max", 5))})


# ---------------------------------------------------------------- next to the estimate and the schedule


def schedule_rows() -> list[tuple[str, str, int]]:
    """(op, loop, expected II) of docs/SCHEDULE.md."""
    from ..schedule.schedule import SCHEDULE

    return [(row.op, row.name, row.ii) for row in SCHEDULE]


def loop_rows(loops: list[HlsLoop], schedule: list[tuple[str, str, int]]) -> tuple[list[list[str]], list[HlsLoop]]:
    """One row per schedule loop and HLS loop of its name; the HLS loops no schedule row names."""
    rows, matched = [], set()
    for op, name, ii in schedule:
        found = [lp for lp in loops if lp.name == name]
        # A name several ops use (mac_block) goes to the op whose function holds it, if one does.
        own = [lp for lp in found if op.lower() in lp.module.lower()] or found
        for lp in own:
            matched.add(id(lp))
            flag = "" if lp.ii == str(ii) else "  <- differs"
            rows.append([op, name, str(ii), lp.ii + flag, _num(lp.trip_count), _num(lp.latency), lp.module])
        if not own:
            rows.append([op, name, str(ii), "not in the report", "-", "-", "-"])
    return rows, [lp for lp in loops if id(lp) not in matched]


def read_estimate(project_dir: Path) -> dict | None:
    path = Path(project_dir) / "reports" / "estimate.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def report_text(project_dir: Path) -> str:
    csynth_path, cosim_path = find_reports(project_dir)
    syn = read_csynth(csynth_path)
    est = read_estimate(project_dir)
    lines = [f"Vitis HLS {syn.version} synthesis of {syn.top} for {syn.part} ({csynth_path})",
             f"clock: target {syn.target_ns} ns, estimated {syn.estimated_ns} ns", ""]
    lines += _latency_lines(syn, est, cosim_path) + [""] + _resource_lines(syn, est) + [""]
    rows, others = loop_rows(syn.loops, schedule_rows())
    lines += _table("loops against docs/SCHEDULE.md",
                    ["op", "loop", "expected II", "HLS II", "trip count", "latency", "module"], rows)
    if others:
        lines.append("loops of the report that no schedule row names: "
                     + ", ".join(f"{lp.path} ({lp.module}, II {lp.ii})" for lp in others))
    return "\n".join(lines)


def _latency_lines(syn: Csynth, est: dict | None, cosim_path: Path | None) -> list[str]:
    estimate = "-" if est is None else f"{est['cycles']:,} per task ({est['latency_ms']:.3f} ms at {est['clock_mhz']:g} MHz)"
    rows = [["codesign estimate", estimate],
            ["csynth", f"best {_num(syn.latency['best'])}, average {_num(syn.latency['average'])}, worst "
                       f"{_num(syn.latency['worst'])} (data-dependent loops make it undef)"]]
    if cosim_path is None:
        rows.append(["cosim", "no *_cosim.rpt (CODESIGN_COSIM=1 vitis_hls -f run_hls.tcl runs it)"])
    else:
        co = read_cosim(cosim_path)
        ratio = ""
        if est and co.latency["avg"].isdigit() and est.get("cycles"):
            ratio = f"; avg / estimate {int(co.latency['avg']) / est['cycles']:.2f}x"
        rows.append(["cosim", f"{co.status}: min {_num(co.latency['min'])}, avg {_num(co.latency['avg'])}, max "
                              f"{_num(co.latency['max'])} per run ({cosim_path.name}){ratio}"])
    return _table("latency (clock cycles)", ["source", "latency"], rows)


def _resource_lines(syn: Csynth, est: dict | None) -> list[str]:
    rows = []
    for name in RESOURCES:
        key, factor = ESTIMATE_RESOURCES[name]
        used = (est or {}).get("resources", {}).get(key)
        estimate = "-" if used is None else f"{used['used'] * factor:,.0f}"
        rows.append([name, _num(syn.resources.get(name, "-")), estimate, _num(syn.available.get(name, "-"))])
    return _table("resources", ["resource", "csynth", "estimate", "available"], rows)


def _num(value: str) -> str:
    """Integers with thousands separators, also either end of a min..max range; other text as is."""
    return "..".join(f"{int(part):,}" if part.isdigit() else part for part in value.split(".."))


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda row: "  ".join(f"{str(c):<{w}}" for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return [title, fmt(header), "-" * len(fmt(header)), *map(fmt, rows)]
