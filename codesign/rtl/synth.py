"""Logic synthesis of generated Verilog with yosys `synth_xilinx`: counts and the longest path.

Vivado is not available to CI, so yosys (Debian package `yosys`) gives a free, independent count
of what the generated RTL costs in Xilinx primitives (LUT, FF, DSP48, block RAM, URAM). The
figures are yosys's mapping, not Vivado's: expect the same order of magnitude, not the same
numbers (yosys does not pack LUTs as tightly, and infers memories by its own rules).

Three modes: `flat` (synth_xilinx -flatten: one netlist, cross-module optimisation) and
`per-module` (no -flatten: every module synthesized on its own, the counts summed over the
hierarchy by `stat -top`; faster on a large core, slightly more cells) run one yosys over the
whole core, and flatten the mapped netlist afterwards for `ltp`, the longest combinational path,
which is the clock proxy. `per-unit` (synth_units) runs one yosys per unit of the docs/UARCH.md
core, each bounded by the timeout and cached: the whole core at 1x32 does not finish in 50 min. Its
clock proxy is the longest of the units' own paths (each run cuts the paths through its ports).

This module only runs yosys and reads its output; codesign.report.synth decides the sizes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .render import RTL_RECORD, TOP_MODULE as TOP

# synth_xilinx -family per board family (codesign/boards.py PS_TYPE_BY_FAMILY keys).
YOSYS_FAMILY = {"zynquplus": "xcup", "zynq": "xc7", "versal": "xcup"}
# flat / per-module: one yosys process over the whole core (synth_script); per-unit: one per unit (synth_units)
WHOLE_CORE_MODES = ("flat", "per-module")
MODES = WHOLE_CORE_MODES + ("per-unit",)

# Primitive name patterns -> the resource class a Vivado utilisation report would put them in.
_CLASSES = (
    ("lut", re.compile(r"^LUT[1-6]$")),
    ("lutram", re.compile(r"^(RAM(16|32|64|128|256|512)[MX]\w*|SRL\w+)$")),
    ("ff", re.compile(r"^FD[CPRS]E$")),
    ("carry", re.compile(r"^CARRY[48]$")),
    ("dsp", re.compile(r"^DSP48E[12]$")),
    ("bram36", re.compile(r"^RAMB36E[12]$")),
    ("bram18", re.compile(r"^RAMB18E[12]$")),
    ("uram", re.compile(r"^URAM288\w*$")),
)
# LUTs (of a SLICEM) that one distributed-RAM or shift-register primitive occupies, as Vivado
# counts "LUT as Memory"; a primitive not listed counts as one LUT.
_LUTRAM_LUTS = {"RAM32M16": 8, "RAM64M8": 8, "RAM32M": 4, "RAM64M": 4, "RAM128X1D": 4, "RAM256X1S": 4,
                "RAM256X1D": 8, "RAM512X1S": 8, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1S": 2}
# Combinational primitives ltp follows; FFs, DSPs, block RAMs and LUTRAM reads end a path.
_COMB_CELLS = "t:LUT* t:MUXF* t:CARRY* t:INV"
PROGRESS_EVERY_S = 30.0


class SynthError(RuntimeError):
    """yosys is missing or failed; the message says what to do (a one-line CLI error)."""


@dataclass
class SynthResult:
    family: str
    seconds: float
    cells: dict[str, int]
    resources: dict[str, float] = field(default_factory=dict)
    ltp: dict = field(default_factory=dict)
    mode: str = "flat"
    cpu_seconds: float | None = None   # yosys and its ABC processes: wall time depends on the machine's load

    def to_json(self) -> dict:
        return asdict(self)


def find_yosys() -> str:
    path = shutil.which("yosys")
    if path is None:
        raise SynthError("yosys not found: install it with `apt-get install yosys` (Debian/Ubuntu)")
    return path


def classify(cells: dict[str, int]) -> dict[str, float]:
    """Vivado-style resource counts from a yosys cell histogram.

    `lut` is logic LUTs, `lutram` the LUTs of distributed RAM / shift registers, `lut_total` both
    (Vivado's "CLB LUTs", what the board's LUT figure bounds); BRAM18 count as half a BRAM36."""
    out = {name: 0 for name, _ in _CLASSES}
    for cell, count in cells.items():
        for name, pattern in _CLASSES:
            if pattern.match(cell):
                out[name] += count * (_LUTRAM_LUTS.get(cell, 1) if name == "lutram" else 1)
                break
    out["lut_total"] = out["lut"] + out["lutram"]
    out["bram36_equiv"] = out["bram36"] + out["bram18"] / 2
    return out


# ---------------------------------------------------------------- reading yosys output

_SECTION = re.compile(r"^=== (.+?) ===\s*$", re.M)
_CELL_LINE = re.compile(r"^\s+(\S+)\s+(\d+)\s*$")


def parse_stat_text(text: str, top: str = TOP) -> dict[str, int]:
    """Cell histogram of `stat` text output: the `design hierarchy` totals when present (a
    per-module run), else the `top` module's section (a flat run)."""
    sections = {m.group(1): m.end() for m in _SECTION.finditer(text)}
    start = sections.get("design hierarchy", sections.get(top))
    if start is None:
        raise SynthError(f"yosys stat output has no section for {top} or the design hierarchy")
    body = text[start:]
    nxt = _SECTION.search(body)
    body = body[:nxt.start()] if nxt else body
    cells: dict[str, int] = {}
    in_cells = False
    for line in body.splitlines():
        if "Number of cells:" in line:
            in_cells = True
        elif in_cells:
            m = _CELL_LINE.match(line)
            if not m:
                break
            cells[m.group(1).lstrip("\\")] = int(m.group(2))
    if not in_cells:
        raise SynthError("yosys stat output has no cell counts")
    return cells


_LTP_HEAD = re.compile(r"Longest topological path in (\S+) \(length=(-?\d+)\):")
_LTP_STEP = re.compile(r"^\s*(\d+): (.+?)(?: \(via (\S+)\))?\s*$")


def parse_ltp(text: str, lut_cells: set[str] | None = None, carry_cells: set[str] | None = None) -> dict:
    """The longest path of `ltp` output: its length in cells, how many of them are LUTs and carry
    blocks (names from `select -list t:LUT*` / `t:CARRY*`; without them: None, unknown), and the
    signals it starts and ends at."""
    head = _LTP_HEAD.search(text)
    if head is None:
        raise SynthError("yosys ltp output has no longest path")
    vias, signals = [], []
    for line in text[head.end():].splitlines():
        m = _LTP_STEP.match(line)
        if m:
            signals.append(m.group(2))
            if m.group(3):
                vias.append(m.group(3))
    out = {"cells": int(head.group(2)), "lut_levels": None, "carry_cells": None,
           "from": signals[0] if signals else None, "to": signals[-1] if signals else None}
    if lut_cells is not None:
        out["lut_levels"] = sum(v in lut_cells for v in vias)
    if carry_cells is not None:
        out["carry_cells"] = sum(v in carry_cells for v in vias)
    return out


def parse_select_list(text: str) -> set[str]:
    """Cell names of `select -list` output ("module/cell" per line)."""
    return {line.split("/", 1)[1].strip() for line in text.splitlines() if "/" in line}


# ---------------------------------------------------------------- running yosys

def synth_script(sources: list[Path], family: str, out: Path, mode: str = "flat", top: str = TOP,
                 params: dict | None = None, uram: bool = False) -> str:
    """The yosys script: synth_xilinx, then stat (text), ltp and the LUT / carry cell names into out/.
    `params`: Verilog parameters of `top` (chparam), for a unit synthesized on its own; `uram`: let
    yosys map large memories to URAM288 (-uram, xcup only; without it yosys never does)."""
    if mode not in WHOLE_CORE_MODES:
        raise ValueError(f"synthesis mode must be one of {', '.join(WHOLE_CORE_MODES)}, got {mode!r}")
    files = " ".join(str(s) for s in sources)
    flatten = (" -flatten" if mode == "flat" else "") + (" -uram" if uram else "")
    chparam = f"chparam {' '.join(f'-set {k} {int(v)}' for k, v in params.items())} {top}; " if params else ""
    # SYNTHESIS drops the simulation-only trace code; the mapped netlist is flattened (cheap)
    # only after stat, so that ltp sees paths across module boundaries.
    return (f"read_verilog -DSYNTHESIS {files}; {chparam}synth_xilinx -family {family} -top {top}{flatten}; "
            f"tee -q -o {out / 'stat.txt'} stat -top {top}; " + _ltp_steps(out))


def _ltp_steps(out: Path) -> str:
    """After stat: flatten the mapped netlist, its longest path and its LUT / carry cell names into out/."""
    return (f"flatten; tee -q -o {out / 'ltp.txt'} ltp -noff {_COMB_CELLS} w:*; "
            f"tee -q -o {out / 'luts.txt'} select -list t:LUT*; tee -q -o {out / 'carry.txt'} select -list t:CARRY*")


def _read_ltp(out: Path) -> dict:
    return parse_ltp((out / "ltp.txt").read_text(), parse_select_list((out / "luts.txt").read_text()),
                     parse_select_list((out / "carry.txt").read_text()))


def _verilog_sources(rtl_dir: Path) -> list[Path]:
    sources = sorted(rtl_dir.glob("*.v"))
    if not sources:
        raise SynthError(f"no Verilog (*.v) in {rtl_dir}")
    return sources


def synth_rtl(rtl_dir: Path, family: str = "xcup", log: Path | None = None, timeout_s: float = 1800,
              mode: str = "flat", progress: Callable[[str], None] | None = None, label: str = "",
              top: str = TOP, params: dict | None = None, uram: bool | None = None) -> SynthResult:
    """Run yosys synth_xilinx on every *.v in rtl_dir; return the primitive counts and longest path.

    `top` and `params` (Verilog parameters of `top`) synthesize one unit on its own, e.g. the
    vector unit cs_vec of codesign.rtl.render.render_units. `uram` (default: on for xcup) lets
    yosys infer URAM288 for large memories, as the resource model binds them.
    `log`: yosys's log file (its folder also gets stat.txt, ltp.txt, luts.txt, carry.txt); `progress`
    gets a line every PROGRESS_EVERY_S seconds (elapsed, `label`, the pass yosys is in)."""
    yosys = find_yosys()
    rtl_dir = Path(rtl_dir)
    sources = _verilog_sources(rtl_dir)
    log = Path(log) if log else rtl_dir.parent / "synth_yosys.log"
    out = log.parent
    out.mkdir(parents=True, exist_ok=True)
    uram = family == "xcup" if uram is None else uram and family == "xcup"
    key = _cache_key(sources, family, mode, top, params, uram)
    cached = _cached(out / CACHE_FILE, key)
    if cached is not None:
        return cached
    cpu_before = _children_cpu()
    seconds = run_yosys([yosys, "-q", "-l", str(log), "-p", synth_script(sources, family, out, mode, top, params, uram)],
                        log, timeout_s, progress, label or rtl_dir.name)
    cpu = round(_children_cpu() - cpu_before, 1)
    cells = parse_stat_text((out / "stat.txt").read_text(), top)
    result = SynthResult(family, round(seconds, 1), cells, classify(cells), _read_ltp(out), mode, cpu)
    (out / CACHE_FILE).write_text(json.dumps({"key": key, "result": result.to_json()}, indent=1))
    return result


# Beside yosys's outputs: the result and what it was computed from (a later run of the same
# Verilog, family, mode, top and parameters reuses it: yosys takes minutes per size).
CACHE_FILE = "result.json"


def _cache_key(sources: list[Path], family: str, mode: str, top: str, params: dict | None, uram: bool) -> str:
    h = hashlib.sha256(json.dumps([family, mode, top, params or {}, uram], sort_keys=True).encode())
    for src in sources:
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return h.hexdigest()


def _cached(path: Path, key: str) -> SynthResult | None:
    try:
        rec = json.loads(path.read_text())
        return SynthResult(**rec["result"]) if rec.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (and theirs that they waited for)."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def run_yosys(cmd: list[str], log: Path, timeout_s: float, progress: Callable[[str], None] | None,
              label: str) -> float:
    """Run yosys, report progress, kill it (and its ABC children) on timeout; return seconds."""
    start = time.monotonic()
    # its own process group, so that a timeout also ends the yosys-abc processes it started
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        err = _wait(proc, start, timeout_s, log, progress, label)
    except BaseException:   # the timeout, and Ctrl-C, which its own session does not pass on to yosys
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        detail = (err or "").strip().splitlines()
        raise SynthError(f"yosys failed on {label} (exit {proc.returncode}): "
                         f"{detail[-1] if detail else 'no message'}; see {log}")
    return time.monotonic() - start


def _wait(proc: subprocess.Popen, start: float, timeout_s: float, log: Path, progress, label: str) -> str:
    """yosys's stderr once it ends; a progress line every PROGRESS_EVERY_S; SynthError on timeout."""
    next_report = start + PROGRESS_EVERY_S
    last_pass = "reading the sources"
    while True:
        try:
            return proc.communicate(timeout=max(0.1, min(next_report, start + timeout_s) - time.monotonic()))[1]
        except subprocess.TimeoutExpired:
            now = time.monotonic()
            if now - start >= timeout_s:
                raise SynthError(f"yosys did not finish {label} in {timeout_s:.0f} s (--timeout); see {log}") from None
            if progress and now >= next_report:
                last_pass = current_pass(log) or last_pass   # ABC's output can fill the log's tail
                progress(f"synth {label}: {now - start:.0f} s, {last_pass}")
                next_report = now + PROGRESS_EVERY_S


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


_PASS = re.compile(r"^[\d.]+ Executing (.+?)\.?$", re.M)


def current_pass(log: Path) -> str | None:
    """The last pass yosys logged ("ABC pass (technology mapping using ABC)") in the log's tail;
    None when the tail has none."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    found = _PASS.findall(tail)
    return found[-1] if found else None


# ---------------------------------------------------------------- the array of generated RTL

def rtl_core_shape(rtl_dir: Path) -> tuple[int, int] | None:
    """(P, Q) of a generated core's MAC array from its rtl.json record (codesign.rtl.render.
    uarch_record); None for foreign (e.g. Vitis) RTL, which has none."""
    record = Path(rtl_dir) / RTL_RECORD
    if not record.is_file():
        return None
    try:
        rec = json.loads(record.read_text())
        return int(rec["P"]), int(rec["Q"])
    except (ValueError, KeyError, TypeError):
        raise SynthError(f"{record} is not a codesign RTL record (P, Q): regenerate the RTL") from None


def rtl_array(rtl_dir: Path) -> str:
    """'PxQ' of a generated core, or 'RTL' for foreign RTL."""
    shape = rtl_core_shape(rtl_dir)
    return f"{shape[0]}x{shape[1]}" if shape else "RTL"


# ---------------------------------------------------------------- one yosys run per unit

# The docs/UARCH.md core's units (rtl_templates/uarch/, the modules cs_core and codesign_top
# instantiate), each synthesized on its own as the hierarchy derives it (its parameters, its
# submodules); the rest -- codesign_top and cs_core themselves, their glue -- is one more run with
# the units as black boxes, whose cell list also says how many instances of each unit there are.
# A whole-core run at 1x32 did not finish in 50 minutes; the units of it do, one at a time.
UNIT_MODULES = ("cs_seq", "cs_wgt", "cs_feed", "cs_mac", "cs_rowsel", "cs_drain", "cs_router", "cs_vecop", "cs_rdarb",
                "cs_ram", "cs_attn", "cs_moeacc", "axi_master", "axi_lite_control")
GLUE = "glue"
_MODULE_LINE = re.compile(r"^\s+(\S+)\s*$", re.M)


@dataclass
class UnitsResult:
    """Per-unit synthesis: each unit's result (one instance), its instance count, and the sum."""
    family: str
    units: dict[str, SynthResult]        # unit name ('cs_drain', ..., 'glue') -> one instance's result
    instances: dict[str, int]            # unit name -> instances in the core
    total: SynthResult                   # the counts summed over every instance (ltp: the longest unit's)
    skipped: dict[str, int] = field(default_factory=dict)   # unit -> instances not synthesized (`skip`)

    def to_json(self) -> dict:
        return {"family": self.family, "instances": self.instances, "skipped": self.skipped,
                "units": {k: v.to_json() for k, v in self.units.items()}, "total": self.total.to_json()}


def unit_modules(module_list: str) -> dict[str, list[str]]:
    """Unit name -> the hierarchy's derived module names of it (yosys `ls` after `hierarchy`:
    '$paramod$<hash>\\cs_ram', or the plain name of a module without parameters)."""
    out: dict[str, list[str]] = {}
    for name in _MODULE_LINE.findall(module_list):
        base = name.rsplit("\\", 1)[-1]
        if base in UNIT_MODULES:
            out.setdefault(base, []).append(name)
    return out


def synth_units(rtl_dir: Path, family: str = "xcup", out: Path | None = None, timeout_s: float = 1800,
                progress: Callable[[str], None] | None = None, uram: bool | None = None,
                label: str = "", skip: tuple[str, ...] = ()) -> UnitsResult:
    """Synthesize the core in rtl_dir one unit at a time (UNIT_MODULES, then the glue with the
    units as black boxes); each run is bounded by timeout_s and cached in out/<unit>/. Units named
    in `skip` are not synthesized: they are left out of the total and listed in `skipped`."""
    yosys = find_yosys()
    rtl_dir = Path(rtl_dir)
    sources = _verilog_sources(rtl_dir)
    out = Path(out) if out else rtl_dir.parent / "units"
    out.mkdir(parents=True, exist_ok=True)
    uram = family == "xcup" if uram is None else uram and family == "xcup"
    design, modules = _prepare(yosys, sources, out, timeout_s, progress, label or rtl_dir.name)
    units = unit_modules(modules)
    flag = " -uram" if uram else ""
    boxes = " ".join(n for names in units.values() for n in names)
    keys = _unit_keys(units)
    # every unit's own netlist (and the glue's, the units black boxes), so that a run is redone only
    # when its unit changed (the cache key is that netlist)
    _split(yosys, design, out, keys, boxes, timeout_s, progress, label)
    # the glue first: its black boxes say which units the core instantiates directly, and how often
    # (a unit inside another unit, e.g. a cs_ram in cs_vecop, is part of that unit's run)
    glue = _unit_run(yosys, out / GLUE / "unit.il", f"synth_xilinx -family {family} -top {TOP} -flatten{flag}",
                     TOP, out / GLUE, family, timeout_s, progress, f"{label} glue".strip(), own_section=True)
    counts = _instance_counts(glue.cells, units)
    glue.cells = {c: n for c, n in glue.cells.items() if c.rsplit("\\", 1)[-1] not in UNIT_MODULES}
    glue.resources = classify(glue.cells)
    results: dict[str, SynthResult] = {GLUE: glue}
    skipped = {k: counts[k] for k, _ in keys if counts.get(k) and k.split(".")[0] in skip}
    for key, name in ((k, n) for k, n in keys if counts.get(k) and k not in skipped):
        results[key] = _unit_run(yosys, out / key / "unit.il", f"synth_xilinx -family {family} -top {name}{flag}",
                                 name, out / key, family, timeout_s, progress, f"{label} {key}".strip())
    instances = {k: counts.get(k, 1) for k in results}
    return UnitsResult(family, results, instances, _summed(family, results, instances), skipped)


def _split(yosys: str, design: Path, out: Path, keys: list[tuple[str, str]], boxes: str, timeout_s: float,
           progress, label: str) -> None:
    """out/<unit>/unit.il: each unit's subtree of the hierarchy; out/glue/unit.il: the rest."""
    stamp = out / "split.key"
    key = hashlib.sha256(design.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == key:
        return
    steps = [f"read_rtlil {design}", "design -save all"]
    for k, name in keys:
        (out / k).mkdir(parents=True, exist_ok=True)
        steps += ["design -load all", f"hierarchy -top {name}", f"write_rtlil {out / k / 'unit.il'}"]
    (out / GLUE).mkdir(parents=True, exist_ok=True)
    steps += ["design -load all", f"blackbox {boxes}", f"hierarchy -top {TOP}", f"write_rtlil {out / GLUE / 'unit.il'}"]
    run_yosys([yosys, "-q", "-l", str(out / "split.log"), "-p", "; ".join(steps)], out / "split.log", timeout_s,
              progress, f"{label} units".strip())
    stamp.write_text(key)


def _unit_keys(units: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(key, derived module name) per derived module: the unit's name, numbered when it has several."""
    return [(base if len(names) == 1 else f"{base}.{i}", name)
            for base, names in units.items() for i, name in enumerate(names)]


def _prepare(yosys: str, sources: list[Path], out: Path, timeout_s: float, progress, label: str) -> tuple[Path, str]:
    """The elaborated hierarchy as RTLIL (every unit run reads it) and its module list."""
    design, listing = out / "design.il", out / "modules.txt"
    key = _cache_key(sources, "prepare", "", TOP, None, False)
    stamp = out / "prepare.key"
    if not (design.exists() and listing.exists() and stamp.exists() and stamp.read_text() == key):
        files = " ".join(str(s) for s in sources)
        run_yosys([yosys, "-q", "-l", str(out / "prepare.log"), "-p",
                   f"read_verilog -DSYNTHESIS {files}; hierarchy -top {TOP}; tee -q -o {listing} ls; "
                   f"write_rtlil {design}"], out / "prepare.log", timeout_s, progress, f"{label} hierarchy")
        stamp.write_text(key)
    return design, listing.read_text()


def _unit_run(yosys: str, design: Path, script: str, top: str, out: Path, family: str, timeout_s: float,
              progress, label: str, own_section: bool = False) -> SynthResult:
    """One unit: yosys on the RTLIL hierarchy, cached by the design and the script."""
    out.mkdir(parents=True, exist_ok=True)
    # the netlist's own name in it is its path: hash the text without the paths of `src` attributes
    # (+ "ltp": a result from before the units' paths were measured is redone)
    h = hashlib.sha256((script + "\0ltp\0").encode() + re.sub(rb'attribute \\src "[^"]*"', b"", design.read_bytes())).hexdigest()
    cached = _cached(out / CACHE_FILE, h)
    if cached is not None:
        return cached
    cpu_before = _children_cpu()
    stat = out / "stat.txt"
    full = f"read_rtlil {design}; {script}; tee -q -o {stat} stat{'' if own_section else f' -top {top}'}; " + _ltp_steps(out)
    seconds = run_yosys([yosys, "-q", "-l", str(out / "yosys.log"), "-p", full], out / "yosys.log", timeout_s,
                        progress, label)
    text = stat.read_text()
    cells = _own_cells(text, top) if own_section else parse_stat_text(text, top)
    result = SynthResult(family, round(seconds, 1), cells, classify(cells), _read_ltp(out), "per-unit",
                         round(_children_cpu() - cpu_before, 1))
    (out / CACHE_FILE).write_text(json.dumps({"key": h, "result": result.to_json()}, indent=1))
    return result


def _own_cells(text: str, top: str) -> dict[str, int]:
    """The cell list of module `top`'s own section of `stat` (black boxes listed as cells)."""
    for m in _SECTION.finditer(text):
        if m.group(1).strip() == top:
            body = text[m.end():]
            nxt = _SECTION.search(body)
            return parse_stat_text(f"=== {top} ===\n" + (body[:nxt.start()] if nxt else body), top)
    raise SynthError(f"yosys stat output has no section for {top}")


def _instance_counts(glue_cells: dict[str, int], units: dict[str, list[str]]) -> dict[str, int]:
    """Instances of each unit in the glue (its black-box cells)."""
    return {key: glue_cells.get(name, 0) for key, name in _unit_keys(units)}


def _summed(family: str, results: dict[str, SynthResult], instances: dict[str, int]) -> SynthResult:
    cells: dict[str, int] = {}
    for key, res in results.items():
        for c, n in res.cells.items():
            cells[c] = cells.get(c, 0) + n * instances[key]
    seconds = sum(r.seconds for r in results.values())
    cpu = sum(r.cpu_seconds or 0 for r in results.values())
    return SynthResult(family, round(seconds, 1), cells, classify(cells), _longest(results), "per-unit", round(cpu, 1))


def _longest(results: dict[str, SynthResult]) -> dict:
    """The longest of the units' own paths, with its unit (a path through a unit's port goes on in
    its neighbour, which each run cuts: a lower bound on the core's)."""
    key = max((k for k in results if results[k].ltp), key=lambda k: results[k].ltp["cells"], default=None)
    return {**results[key].ltp, "unit": key} if key else {}
