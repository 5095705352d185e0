"""`codesign synth`: the project's core synthesized at the board's array, or extrapolated to it.

yosys time grows with the MAC array, so above DIRECT_MAX_MACS (or with --sizes P1xQ1,P2xQ2[,..])
the core is rendered and synthesized at two or three reduced arrays and each resource is fitted
(codesign.rtl.synth_fit) and evaluated at the board's array. The output says which it did.

The core is the docs/UARCH.md one (codesign.rtl.render.render_uarch_rtl), rendered from the
project's own Uarch (its tiling, rebuilt from the program: project_uarch) with only P and Q
changed, so every size has the board's memories, bus and weight masters. The array it got is read
back from what was rendered (rtl/rtl.json: codesign.rtl.synth.rtl_core_shape); a core whose Q
stayed fixed would be extrapolated to the board's MAC count at its own Q, and the output says so.

The figures are set next to the resource model, codesign.schedule.uarch.resource_use: at each
synthesized size for the Uarch rendered there (`model`), and at the board's array as the estimate
has it (reports/estimate.json `resources`), with their ratio, and checked against the board: a
design that does not fit is reported (the CLI exits 3, see codesign.cli).
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..rtl.synth import (GLUE, MODES, RTL_RECORD, UNIT_MODULES, YOSYS_FAMILY, SynthError, SynthResult, UnitsResult,
                         rtl_core_shape, synth_rtl, synth_units)
from ..rtl.synth_fit import FitError, fit

# A direct run up to 64 MACs: the default model's core at 8x8 took 259 s of yosys CPU (its log),
# ~5 min; yosys time vs array size in docs/SYNTH.md.
DIRECT_MAX_MACS = 64
# One yosys run per unit: a whole-core run of the docs/UARCH.md core at 1x32 (and 2x64) did not
# finish in 50 min; its units, one at a time, do (codesign.rtl.synth.synth_units).
DEFAULT_MODE = "per-unit"
PER_UNIT_WHY = ("one yosys run per unit (hierarchy kept, each bounded by --timeout, summed over the instances): "
                "a whole-core run does not finish in CI time (1x32: over 50 min)")
DEFAULT_TIMEOUT_S = 1800.0
WORK_DIR = "synth"  # PROJECT/synth/<PxQ>/: rendered RTL, yosys log and outputs per size
# Report key -> (label, SynthResult.resources key, board / estimate key)
RESOURCES = (("DSP48E2", "dsp", "dsp"), ("LUT", "lut_total", "lut"), ("FF", "ff", "ff"),
             ("BRAM36", "bram36_equiv", "bram36"), ("URAM288", "uram", "uram"))
TOLERANCE = 0.15  # the issue's +-15% between synthesized and estimated resources


@dataclass
class SizeRun:
    requested: tuple[int, int]
    shape: tuple[int, int]       # the array the core was rendered at (read back: rtl_core_shape)
    rtl_dir: Path
    result: SynthResult
    model: dict[str, float] = field(default_factory=dict)   # resource_use of the Uarch rendered here
    units: UnitsResult | None = None                          # per-unit mode: each unit's counts
    unit_model: dict[str, dict[str, float]] = field(default_factory=dict)   # unit group -> model figures
    stand_in: dict[str, dict[str, float]] = field(default_factory=dict)     # skipped unit's group -> model figures in `result`


@dataclass
class SynthReport:
    board: str
    method: str                  # "direct" | "fit" | "rtl-folder"
    statement: str               # one plain sentence: what was synthesized and what is a fit
    board_array: tuple[int, int] | None
    target: tuple[int, int] | None
    target_why: str
    runs: list[SizeRun]
    figures: dict[str, float]    # resource label -> the board-size figure (measured or fitted)
    fits: dict[str, dict] = field(default_factory=dict)
    estimate: dict[str, float] | None = None
    board_totals: dict[str, int] = field(default_factory=dict)
    over: list[tuple[str, float, int]] = field(default_factory=list)   # (resource, need, board)

    @property
    def fits_board(self) -> bool:
        return not self.over

    def over_line(self) -> str:
        parts = [f"{name} {need:,.0f} > {have:,} on {self.board}" for name, need, have in self.over]
        what = "extrapolated" if self.method == "fit" else "synthesized"
        return f"the design does not fit the board ({what}): " + "; ".join(parts)

    def ratios(self) -> dict[str, float | None]:
        out = {}
        for label, _, _ in RESOURCES:
            est = (self.estimate or {}).get(label)
            out[label] = None if not est else self.figures[label] / est
        return out

    def to_json(self) -> dict:
        ratios = self.ratios()
        return {
            "board": self.board, "method": self.method, "statement": self.statement,
            "board_array": _shape_json(self.board_array), "target_array": _shape_json(self.target),
            "target_why": self.target_why,
            "sizes": [{"requested": _shape_json(r.requested), "array": _shape_json(r.shape),
                       "rtl_dir": str(r.rtl_dir), "measured": _measured(r.result), "model": r.model,
                       "model_ratio": _ratios(_measured(r.result), r.model), **r.result.to_json(),
                       **({"units": r.units.to_json(), "unit_groups": unit_groups(r.units),
                           "unit_model": r.unit_model, "stand_in": r.stand_in} if r.units else {})}
                      for r in self.runs],
            "fit": self.fits, "board_figure": self.figures, "estimate": self.estimate,
            "ratio": ratios, "within_tolerance": {k: _within(v, self.figures[k], (self.estimate or {}).get(k))
                                                  for k, v in ratios.items()},
            "tolerance": TOLERANCE, "board_totals": self.board_totals,
            "fits_board": self.fits_board,
            "over": [{"resource": n, "need": need, "board": have} for n, need, have in self.over],
            "core": _core_record(self.runs[0].rtl_dir) if self.runs else {},
            "ltp": {_shape_key(r.shape): r.result.ltp for r in self.runs},
            "yosys_seconds": {_shape_key(r.shape): r.result.seconds for r in self.runs},
        }


# ---------------------------------------------------------------- planning

def parse_sizes(spec: str) -> list[tuple[int, int]] | str:
    """--sizes: 'auto', 'board', or 'PxQ,PxQ[,...]' (two or more distinct arrays)."""
    spec = spec.strip().lower()
    if spec in ("auto", "board"):
        return spec
    shapes = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)x(\d+)\s*", part)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise ValueError(f"--sizes: {part.strip()!r} is not an array PxQ (e.g. 2x32,8x32,4x64), 'auto' or 'board'")
        shapes.append((int(m.group(1)), int(m.group(2))))
    if len(set(shapes)) < 2:
        raise ValueError("--sizes: give two or three distinct arrays to fit (or 'board' for one run at the board's)")
    return shapes


def reduced_sizes(q_step: int) -> list[tuple[int, int]]:
    """Three small arrays whose P*Q and P+Q are independent (unless q_step == 2), the core's
    Q step apart: 1 x s, 4 x s, 2 x 2s (a core with a fixed Q gets three different P)."""
    return [(1, q_step), (4, q_step), (2, 2 * q_step)]


def plan(spec, board_array: tuple[int, int], q_step: int) -> tuple[str, list[tuple[int, int]]]:
    """('direct', [board array]) or ('fit', reduced arrays) for a --sizes value."""
    if spec == "board" or (spec == "auto" and board_array[0] * board_array[1] <= DIRECT_MAX_MACS):
        return "direct", [board_array]
    return "fit", reduced_sizes(q_step) if spec == "auto" else list(spec)


def fit_target(board_array: tuple[int, int], shapes: list[tuple[int, int]]) -> tuple[tuple[int, int], str]:
    """The array to evaluate the fit at: the board's, or for a core whose Q did not follow the
    request (every size rendered at one Q0), the board's MAC count at Q0."""
    pb, qb = board_array
    qs = {q for _, q in shapes}
    if len(qs) == 1 and qs != {qb}:
        q0 = qs.pop()
        p = pb * qb / q0
        p = int(p) if p == int(p) else p
        return (p, q0), (f"the core's Q is fixed at {q0} (every size rendered with Q={q0}): evaluated at "
                         f"{p:g}x{q0}, the board's {pb * qb:,} MACs, not at the board's {pb}x{qb}")
    return board_array, f"the board's {pb}x{qb} array (the tiling in reports/estimate.json)"


# ---------------------------------------------------------------- running

def synth_project(project_dir: Path, rtl_dir: Path | None = None, sizes="auto", mode: str = DEFAULT_MODE,
                  timeout_s: float = DEFAULT_TIMEOUT_S, progress: Callable[[str], None] | None = None,
                  skip_units: tuple[str, ...] = ()) -> SynthReport:
    """Synthesize a generated project's core at the board's array, or fit reduced arrays to it;
    write reports/synth.{json,txt}. `sizes`: a parse_sizes value; `skip_units` (per-unit mode):
    units not synthesized, whose group's resource-model figures stand in for them."""
    from ..boards import load_board
    from ..fsutil import write_text_atomic

    project_dir = Path(project_dir)
    meta = _read_json(project_dir / "project.json", "a codesign project (run codesign generate first)")
    board = load_board(meta["board"])
    family = YOSYS_FAMILY.get(board.family, "xcup")
    if mode not in MODES:
        raise ValueError(f"synthesis mode must be one of {', '.join(MODES)}, got {mode!r}")
    unknown = [u for u in skip_units if u not in UNIT_MODULES]
    if unknown or (skip_units and mode != "per-unit"):
        raise ValueError(f"--skip-units: {', '.join(unknown) or 'only with --mode per-unit'} "
                         f"(units: {', '.join(UNIT_MODULES)})")
    estimate = _read_json(project_dir / "reports" / "estimate.json", "the project's estimate") \
        if (project_dir / "reports" / "estimate.json").exists() else {}
    board_array = _board_array(estimate)
    totals = {label: getattr(board.resources, key) for label, _, key in RESOURCES}
    work = project_dir / WORK_DIR
    run = _runner(family, mode, timeout_s, progress, uram=board.resources.uram > 0, skip=tuple(skip_units))
    if rtl_dir is not None:
        report = _synth_folder(Path(rtl_dir), work, run, board.name, board_array)
    else:
        if board_array is None:
            raise SynthError(f"{project_dir / 'reports' / 'estimate.json'} has no tiling P x Q: regenerate the project")
        report = _synth_sized(project_dir, work, run, board, board_array, sizes)
    report.estimate = _estimate_resources(estimate)
    report.board_totals = totals
    report.over = [(label, report.figures[label], totals[label]) for label, _, _ in RESOURCES
                   if report.figures[label] > totals[label]]
    reports = project_dir / "reports"
    reports.mkdir(exist_ok=True)
    write_text_atomic(reports / "synth.json", json.dumps(report.to_json(), indent=1))
    write_text_atomic(reports / "synth.txt", synth_text(report) + "\n")
    return report


def _runner(family: str, mode: str, timeout_s: float, progress, uram: bool, skip: tuple[str, ...] = ()):
    """run(rtl, out, label) -> (the core's counts, its per-unit counts or None)."""
    def run(rtl: Path, out: Path, label: str) -> tuple[SynthResult, UnitsResult | None]:
        if progress:
            progress(f"synth {label}: yosys synth_xilinx -family {family} ({mode}), up to {timeout_s:.0f} s"
                     + (" a unit" if mode == "per-unit" else ""))
        units = None
        if mode == "per-unit":
            units = synth_units(rtl, family, out / UNITS_DIR, timeout_s, progress, uram, label,
                                **({"skip": skip} if skip else {}))
            result = units.total
        else:
            result = synth_rtl(rtl, family, log=out / "yosys.log", timeout_s=timeout_s, mode=mode,
                               progress=progress, label=label, uram=uram)
        if progress:
            progress(f"synth {label}: done in {result.seconds:.0f} s")
        return result, units
    return run


def _synth_folder(rtl: Path, work: Path, run, board_name: str, board_array) -> SynthReport:
    shape = rtl_core_shape(rtl) or (0, 0)
    result, units = run(rtl, work / "given", f"{rtl}")
    figures = {label: result.resources[key] for label, key, _ in RESOURCES}
    return SynthReport(board_name, "rtl-folder", f"yosys synthesized the RTL folder {rtl} as given "
                       f"({_array_txt(shape)}); not extrapolated to the board's array", board_array, None,
                       "the RTL folder as given", [SizeRun(shape, shape, rtl, result, units=units)], figures)


def _synth_sized(project_dir: Path, work: Path, run, board, board_array, sizes) -> SynthReport:
    from ..schedule.tiling import Budget, q_step

    man = _read_json(project_dir / "data" / "manifest.json", "the project's data manifest")
    u = project_uarch(project_dir, man, board, board_array)
    step = q_step(u.epb)
    method, wanted = plan(sizes, board_array, step)
    runs = []
    for i, req in enumerate(wanted, 1):
        out = work / _shape_key(req)
        at = dataclasses.replace(u, P=req[0], Q=req[1])
        rtl = _rendered_at(out, at, Budget(board).limit("uram"))
        shape = rtl_core_shape(rtl)
        if shape is None:
            raise SynthError(f"cannot read the MAC array of the core rendered in {rtl} (rtl.json, or the "
                             "parameters P and Q or EB of its core file)")
        if method == "direct" and shape != board_array:
            raise SynthError(f"the core rendered {_array_txt(shape)} when asked for the board's "
                             f"{_array_txt(board_array)}: give the reduced arrays to fit (--sizes PxQ,PxQ,PxQ)")
        label = f"{_array_txt(shape)} ({i}/{len(wanted)})"
        result, units = run(rtl, out, label)
        groups = unit_model(at, board) if units else {}
        stand_in = _stand_in(units, groups)
        runs.append(SizeRun(req, shape, rtl, _with_stand_in(result, stand_in), model_resources(at, board), units,
                            groups, stand_in))
    if method == "direct":
        res = runs[0].result
        figures = {label: res.resources[key] for label, key, _ in RESOURCES}
        return SynthReport(board.name, "direct", f"yosys synthesized the core at the board's "
                           f"{_array_txt(board_array)} array: the figures are measured, not extrapolated",
                           board_array, board_array, "the board's array", runs, figures)
    return _fitted(board, board_array, runs)


def _fitted(board, board_array, runs: list[SizeRun]) -> SynthReport:
    shapes = [r.shape for r in runs]
    target, why = fit_target(board_array, shapes)
    fits, figures = {}, {}
    try:
        for label, key, _ in RESOURCES:
            f = fit([(p, q, r.result.resources[key]) for (p, q), r in zip(shapes, runs)])
            fits[label] = {**f.to_json(), "formula": f.formula()}
            figures[label] = round(float(f.at(*target)), 1)
    except FitError as exc:
        raise SynthError(f"{exc} (the core rendered {', '.join(_array_txt(s) for s in shapes)})") from exc
    model = next(iter(fits.values()))
    statement = (f"EXTRAPOLATED, not synthesized at the board's size: yosys synthesized the core at "
                 f"{', '.join(_array_txt(s) for s in sorted(shapes, key=lambda s: s[0] * s[1]))}, and the "
                 f"figures at {_array_txt(target)} are a least-squares fit per resource, {model['model']} "
                 f"({model['why']})")
    return SynthReport(board.name, "fit", statement, board_array, target, why, runs, figures, fits)


def project_uarch(project_dir: Path, man: dict, board, board_array: tuple[int, int]):
    """The project's Uarch: its program decoded, the tiling the estimate picked at its array
    (codesign.schedule.tiling.fixed_tiling: the same bank and MoE accumulator placement)."""
    from types import SimpleNamespace

    from ..schedule.isa import decode_program
    from ..schedule.tiling import fixed_tiling

    code = (project_dir / "data" / man.get("program_file", "program.bin")).read_bytes()
    prog = SimpleNamespace(instrs=decode_program(code), elem_bytes=int(man["elem_bytes"]),
                           wbits=int(man["wbits"]), abits=int(man["abits"]))
    try:
        return fixed_tiling(prog, board, *board_array).uarch
    except ValueError as exc:
        raise SynthError(f"the project's {_array_txt(board_array)} tiling cannot be rebuilt: {exc}") from exc


def model_resources(u, board) -> dict[str, float]:
    """codesign.schedule.uarch.resource_use of `u` on `board`, by report label."""
    from ..schedule.tiling import Budget
    from ..schedule.uarch import resource_use

    used = resource_use(u, Budget(board).limit("uram")).used
    return {label: used[key] for label, _, key in RESOURCES}


# Units of the core -> the resource model's parts and memories that stand for them
# (codesign.schedule.uarch.resource_use's breakdown); what no group names is "control".
UNIT_GROUPS = (
    ("array", ("cs_mac",), ("mac_pair",)),
    ("feed", ("cs_feed",), ("operand_row", "weight_row_select", "feed_control")),
    ("drain", ("cs_drain",), ("drain_lane", "drain_control", "column_select", "acc_old")),
    # the core's one shadow row select, which the drain, cs_attn and cs_router share
    ("row_select", ("cs_rowsel",), ("row_select",)),
    ("vector", ("cs_vecop",), ("vector_lane", "vector_control", "pring", "rsqrt_rom")),
    ("banks", ("cs_ram",), ("abank", "bank_port")),
    ("masters", ("axi_master",), ("axi_master",)),
    ("sequencer", ("cs_seq",), ("sequencer", "prog")),
    ("weights", ("cs_wgt",), ("weight_engine", "wslot", "params", "lut")),
    ("attention", ("cs_attn",), ("attention", "qbuf", "sbuf", "exp_rom", "recip_rom")),
    # the token lists are cs_seq's idx / score memories and cs_router's
    ("router", ("cs_router",), ("router", "lists", "router_exp")),
    # moe_acc's memory and clear sweep (the model's acc_written is the HLS kernel's written bits; the
    # RTL clears by a sweep instead, so the RTL has no such memory)
    ("moe_acc", ("cs_moeacc",), ("moe_acc", "acc_written", "moe_acc_control")),
    ("control", ("cs_rdarb", "axi_lite_control", GLUE), ()),
)
UNITS_DIR = "units"


def unit_model(u, board) -> dict[str, dict[str, float]]:
    """resource_use of `u` by unit group: group -> {label: figure}."""
    from ..schedule.tiling import Budget
    from ..schedule.uarch import resource_use

    breakdown = resource_use(u, Budget(board).limit("uram")).breakdown()
    named = {n for _, _, names in UNIT_GROUPS for n in names}
    out = {}
    for group, _, names in UNIT_GROUPS:
        out[group] = {label: sum(v for n, v in breakdown[key].items() if (n in names if names else n not in named))
                      for label, _, key in RESOURCES}
    return out


def unit_groups(units: UnitsResult) -> dict[str, dict[str, float]]:
    """The measured counts (every instance) by unit group."""
    out = {}
    for group, members, _ in UNIT_GROUPS:
        keys = [k for k in units.units if k.split(".")[0] in members]
        out[group] = {label: sum(units.units[k].resources[key] * units.instances[k] for k in keys)
                      for label, key, _ in RESOURCES}
    return out


def _stand_in(units: UnitsResult | None, groups: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The model's figures of every unit group a skipped unit belongs to (group -> figures)."""
    if not units or not units.skipped:
        return {}
    skipped = {k.split(".")[0] for k in units.skipped}
    return {g: groups[g] for g, members, _ in UNIT_GROUPS if skipped & set(members)}


def _with_stand_in(result: SynthResult, stand_in: dict[str, dict[str, float]]) -> SynthResult:
    """`result` with the stand-in figures added to its resources (the cells stay yosys's)."""
    if not stand_in:
        return result
    res = dict(result.resources)
    for figures in stand_in.values():
        for label, key, _ in RESOURCES:
            res[key] = res.get(key, 0) + figures.get(label, 0)
    return dataclasses.replace(result, resources=res)


def _rendered_at(out: Path, u, uram_budget: int) -> Path:
    """Render the docs/UARCH.md core of `u` into out/rtl; a previous size's yosys results stay
    (synth_rtl's cache) when the Verilog is the same."""
    from ..rtl.render import render_uarch_rtl

    out.mkdir(parents=True, exist_ok=True)
    _clear_scratch(out, keep_results=True)
    try:
        render_uarch_rtl(out / "rtl", u, uram_budget=uram_budget)
    except ValueError as exc:
        raise SynthError(f"the core cannot be rendered at {u.P}x{u.Q}: {exc}") from exc
    return out / "rtl"


# What a size's folder holds (synth_rtl's outputs and the rendered RTL): nothing else is removed.
_RESULTS = {"yosys.log", "stat.txt", "ltp.txt", "luts.txt", "carry.txt", "result.json", UNITS_DIR}
_SCRATCH = {"rtl", "stage"} | _RESULTS


def _clear_scratch(out: Path, keep_results: bool = False) -> None:
    """Empty PROJECT/synth/<PxQ> of a previous run (but yosys's results with keep_results),
    refusing when it holds anything codesign did not write."""
    if not out.exists():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _SCRATCH)
    if foreign or not out.is_dir():
        raise SynthError(f"{out} holds files codesign synth did not write ({', '.join(foreign) or out.name}): "
                         "move them away")
    for p in out.iterdir():
        if not (keep_results and p.name in _RESULTS):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


# ---------------------------------------------------------------- the table

def synth_text(rep: SynthReport) -> str:
    """The resources per size, the board-size figure, the estimate, the ratio and the board check."""
    runs = sorted(rep.runs, key=lambda r: (r.shape[0] * r.shape[1], r.shape))   # smallest array first
    sizes = [_array_txt(r.shape) for r in runs]
    fig_head = {"fit": f"fit at {_array_txt(rep.target)}", "direct": "board (measured)"}.get(rep.method, "as given")
    est_head = f"estimate {_array_txt(rep.board_array)}" if rep.board_array else "estimate"
    head = [f"{'resource':<9}"] + [f"{s:>10}" for s in sizes] + [f"{fig_head:>18}", f"{est_head:>17}",
                                                                    f"{'yosys/est':>10}", f"{'+-15%':>6}",
                                                                    f"{'board':>9}", f"{'fits':>5}"]
    lines = [rep.statement + ".", "".join(head), "-" * len("".join(head))]
    ratios = rep.ratios()
    for label, key, _ in RESOURCES:
        est = (rep.estimate or {}).get(label)
        ratio = ratios[label]
        ok = _within(ratio, rep.figures[label], est)
        row = [f"{label:<9}"] + [f"{r.result.resources[key]:>10,.1f}".replace(".0", "  ") for r in runs]
        row += [f"{rep.figures[label]:>18,.0f}", f"{est:>17,}" if est is not None else f"{'-':>17}",
                f"{ratio:>10.2f}" if ratio is not None else f"{'-':>10}",
                f"{('yes' if ok else 'NO') if ok is not None else '-':>6}",
                f"{rep.board_totals.get(label, 0):>9,}",
                f"{'yes' if rep.figures[label] <= rep.board_totals.get(label, 0) else 'NO':>5}"]
        lines.append("".join(row))
    if rep.fits:
        lines += [f"fit {k}: {v['formula']} (largest residual at the sizes: {v['max_abs_residual']:.1f})"
                  for k, v in rep.fits.items()]
        lines.append(f"target: {rep.target_why}")
    for r in runs:
        if r.units:
            lines += _units_txt(r)
    if any(r.model for r in runs):
        lines.append("yosys / resource model at each size (codesign.schedule.uarch.resource_use of the Uarch "
                     "rendered there): " + "; ".join(_model_txt(r) for r in runs if r.model))
    lines.append("longest combinational path (yosys ltp on the mapped netlist, LUT/MUXF/CARRY cells; FFs, DSPs, "
                 "block and LUT RAMs end a path): " + "; ".join(_ltp_txt(r) for r in runs))
    lines.append(f"yosys ({runs[0].result.mode}), wall / CPU seconds: " + ", ".join(
        f"{_array_txt(r.shape)} {r.result.seconds:.0f} / {r.result.cpu_seconds or 0:.0f} s" for r in runs))
    core = _core_record(runs[0].rtl_dir)
    if core.get("microarchitecture"):
        lines.append(f"core: {core.get('core', '?')} ({core['microarchitecture']}), rtl/rtl.json")
    lines.append("yosys's mapping, not Vivado's (LUT = logic + LUT-as-memory, BRAM36 = RAMB36 + RAMB18/2); "
                 "the estimate is codesign.schedule.uarch.resource_use of the board's array (docs/UARCH.md).")
    if rep.over:
        lines.append(rep.over_line())
    return "\n".join(lines)


def _units_txt(run: SizeRun) -> list[str]:
    """Per unit group at one size: yosys (every instance) / the resource model's parts."""
    labels = [label for label, _, _ in RESOURCES]
    measured = unit_groups(run.units)
    lines = [f"{_array_txt(run.shape)} by unit, yosys / model ({PER_UNIT_WHY}):",
             f"  {'unit':<9}" + "".join(f"{lab:>20}" for lab in labels)]
    for group, members, _ in UNIT_GROUPS:
        cells = [f"{measured[group][lab]:>9,.0f} / {run.unit_model.get(group, {}).get(lab, 0):<8,.0f}" for lab in labels]
        lines.append(f"  {group:<9}" + "".join(f"{c:>20}" for c in cells))
    lines.append("  units: " + ", ".join(f"{k} x{n} {v.seconds:.0f} s" for k, (v, n) in
                                       ((k, (v, run.units.instances[k])) for k, v in run.units.units.items())))
    if run.units.skipped:
        lines.append("  NOT synthesized (--skip-units): " + ", ".join(f"{k} x{n}" for k, n in run.units.skipped.items())
                     + "; in the total, the resource model's figures stand in for their group ("
                     + "; ".join(f"{g}: " + ", ".join(f"{lab} {v:,.0f}" for lab, v in fig.items() if v)
                                 for g, fig in run.stand_in.items()) + ")")
    return lines


def _ltp_txt(run: SizeRun) -> str:
    lt = run.result.ltp
    if not lt:
        return f"{_array_txt(run.shape)}: not measured (per-unit runs)"
    unit = f" in {lt['unit']} (the longest unit's own path: paths through a unit's ports are cut)" if lt.get("unit") else ""
    return (f"{_array_txt(run.shape)}: {lt.get('cells')} cells ({lt.get('lut_levels')} LUT levels, "
            f"{lt.get('carry_cells')} carry blocks){unit} from {lt.get('from')}")


# ---------------------------------------------------------------- helpers

def _within(ratio, figure, est) -> bool | None:
    if est is None:
        return None
    if est == 0:
        return figure == 0
    return abs(ratio - 1) <= TOLERANCE


def _core_record(rtl_dir: Path) -> dict:
    """What the renderer says the core is (rtl/rtl.json), or {} for RTL without the record."""
    try:
        rec = json.loads((Path(rtl_dir) / RTL_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _ratios(measured: dict, model: dict) -> dict[str, float | None]:
    return {k: (measured[k] / model[k] if model.get(k) else None) for k in measured if k in model}


def _model_txt(run: SizeRun) -> str:
    measured = _measured(run.result)
    parts = [f"{k} {measured[k]:,.1f} / {run.model[k]:,}" + (f" ({measured[k] / run.model[k]:.2f})" if run.model[k] else "")
             for k in measured if k in run.model]
    return f"{_array_txt(run.shape)}: " + ", ".join(p.replace(".0 ", " ") for p in parts)


def _measured(res: SynthResult) -> dict:
    return {label: res.resources[key] for label, key, _ in RESOURCES}


def _board_array(estimate: dict) -> tuple[int, int] | None:
    tiling = estimate.get("tiling") or {}
    return (int(tiling["P"]), int(tiling["Q"])) if "P" in tiling and "Q" in tiling else None


def _estimate_resources(estimate: dict) -> dict[str, float] | None:
    res = estimate.get("resources") or {}
    out = {label: res[key]["used"] for label, _, key in RESOURCES if isinstance(res.get(key), dict)}
    return out or None


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SynthError(f"{path} not found: {what}") from None
    except json.JSONDecodeError as exc:
        raise SynthError(f"{path} is not valid JSON ({exc.msg}): {what}") from None


def _array_txt(shape) -> str:
    if not shape or not shape[0]:
        return "RTL"
    return f"{shape[0]:g}x{shape[1]:g}"


def _shape_key(shape) -> str:
    return _array_txt(shape)


def _shape_json(shape) -> dict | None:
    return {"P": shape[0], "Q": shape[1]} if shape and shape[0] else None
