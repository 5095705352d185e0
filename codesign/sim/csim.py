"""C simulation without Vitis: build the generated kernel + testbench with g++ and run it on data/.

The testbench (hls_templates/tb/tb_codesign.cpp.j2) prints one `PASS <id>` or
`FAIL <id> first mismatch at <tensor> (...)` line per test vector and a final
`csim: N passed, M failed` line; this module parses them.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..emit.hls import CSIM_CXXFLAGS

TESTBENCH = Path("build") / "tb_codesign"

_PASS = re.compile(r"^PASS (\S+)$", re.M)
_FAIL = re.compile(r"^FAIL (\S+) first mismatch at (\S+)", re.M)
_SUMMARY = re.compile(r"^csim: (\d+) passed, (\d+) failed$", re.M)


class CsimError(RuntimeError):
    """csim could not produce a verdict (no compiler, compile error, crash, timeout). One-line message;
    the full compiler / testbench output is in `log`."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


@dataclass
class CsimResult:
    passed: list[str]
    failed: dict[str, str]  # vector id -> first traced tensor that differs
    log: str
    build_seconds: float
    run_seconds: float
    returncode: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and self.returncode == 0


def run_csim(project_dir: Path, jobs: int = 2, dump_dir: Path | None = None, timeout: float = 600) -> CsimResult:
    """Build (when sources changed) and run the testbench of a project rendered by render_hls.

    With dump_dir, the final act image of each vector is written to <dump_dir>/<id>.act.bin.
    """
    project_dir = Path(project_dir).resolve()
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    build_log = build_testbench(project_dir, jobs, timeout)
    build_seconds = time.monotonic() - start

    args = [str(project_dir / TESTBENCH)]
    if dump_dir is not None:
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
        args.append(str(Path(dump_dir).resolve()))
    start = time.monotonic()
    run = _run(args, project_dir, deadline - time.monotonic(), "the testbench")
    run_seconds = time.monotonic() - start
    log = build_log + run.stdout + run.stderr
    return _parse(run.stdout, run.returncode, log, build_seconds, run_seconds)


def build_testbench(project_dir: Path, jobs: int = 2, timeout: float = 600) -> str:
    """Compile firmware/*.cpp and tb/tb_codesign.cpp into build/tb_codesign; return the compiler log.

    Nothing is compiled when the executable is newer than every source and header.
    """
    project_dir = Path(project_dir)
    compiler = shutil.which("g++")
    if compiler is None:
        raise CsimError("g++ not found: apt-get install g++")
    firmware = sorted((project_dir / "firmware").glob("*.cpp"))
    testbench = project_dir / "tb" / "tb_codesign.cpp"
    if not firmware or not testbench.is_file():
        raise CsimError(f"no firmware/*.cpp or tb/tb_codesign.cpp in {project_dir}: render the project first")
    sources = firmware + [testbench]
    binary = project_dir / TESTBENCH
    if _up_to_date(binary, sources + sorted((project_dir / "firmware").glob("*.h"))):
        return ""
    binary.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        objects_and_logs = list(pool.map(partial(_compile, compiler, project_dir, deadline), sources))
    objects = [str(obj) for obj, _ in objects_and_logs]
    link = _run([compiler, *CSIM_CXXFLAGS, "-o", str(binary), *objects], project_dir,
                deadline - time.monotonic(), "g++ (link)")
    log = "".join(text for _, text in objects_and_logs) + link.stdout + link.stderr
    if link.returncode != 0:
        raise CsimError(f"linking the testbench failed: {_first_error(link.stderr)}", log)
    return log


# ------------------------------------------------------------------ helpers

def _compile(compiler: str, project_dir: Path, deadline: float, source: Path) -> tuple[Path, str]:
    obj = project_dir / "build" / (source.stem + ".o")
    cmd = [compiler, *CSIM_CXXFLAGS, "-c", "-o", str(obj), str(source.relative_to(project_dir))]
    result = _run(cmd, project_dir, deadline - time.monotonic(), "g++")
    log = " ".join(cmd[1:]) + "\n" + result.stdout + result.stderr
    if result.returncode != 0:
        raise CsimError(f"g++ failed on {source.relative_to(project_dir)}: {_first_error(result.stderr)}", log)
    return obj, log


def _run(cmd: list[str], cwd: Path, timeout: float, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired as exc:
        raise CsimError(f"{what} did not finish within the csim timeout", str(exc.stdout or "")) from None


def _parse(stdout: str, returncode: int, log: str, build_seconds: float, run_seconds: float) -> CsimResult:
    summary = _SUMMARY.search(stdout)
    if summary is None:
        last = stdout.strip().splitlines()[-1:] or ["no output"]
        raise CsimError(f"testbench exited with status {returncode} before its summary: {last[0]}", log)
    passed = _PASS.findall(stdout)
    failed = dict(_FAIL.findall(stdout))
    if (len(passed), len(failed)) != (int(summary[1]), int(summary[2])):
        raise CsimError(f"testbench output is inconsistent with its summary line '{summary[0]}'", log)
    return CsimResult(passed, failed, log, build_seconds, run_seconds, returncode)


def _up_to_date(target: Path, inputs: list[Path]) -> bool:
    if not target.is_file():
        return False
    built = target.stat().st_mtime_ns
    return all(p.stat().st_mtime_ns < built for p in inputs)


def _first_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "error" in line] or stderr.strip().splitlines() or ["no output"]
    return lines[0].strip()
