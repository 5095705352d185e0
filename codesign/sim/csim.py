"""C simulation without Vitis: build the generated kernel + testbench with g++ and run it on data/.

The testbench (hls_templates/tb/tb_codesign.cpp.j2) prints, per test vector, one
`LAYER <id> <tensor> PASS|FAIL ...` line per traced tensor and one `PASS <id>` or
`FAIL <id> first mismatch at <tensor> (...)` line, and a final `csim: N passed, M failed`
line; this module parses them (CsimResult.layer_table() renders the per-layer view).

count_iterations() builds the same kernel with -DCODESIGN_COUNT_ITERS after inserting
CODESIGN_COUNT_ITER(); behind every `#pragma HLS PIPELINE` line (as `make iters` does): the
number of pipelined-loop iterations per instruction, a lower bound on its cycles at II=1
(tests/test_hls.py sets it against codesign.schedule.estimate).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..emit.data import ManifestError, load_data_manifest
from ..emit.hls import CSIM_CXXFLAGS
from ..fsutil import checked_output_path

TESTBENCH = Path("build") / "tb_codesign"
COUNTING_TESTBENCH = Path("build") / "count" / "tb_codesign"
COUNT_DEFINE = "-DCODESIGN_COUNT_ITERS"
COUNT_HOOK = "CODESIGN_COUNT_ITER();"
_PIPELINE_PRAGMA = re.compile(r"^\s*#pragma HLS PIPELINE\b.*$", re.M)

_PASS = re.compile(r"^PASS (\S+)$", re.M)
_FAIL = re.compile(r"^FAIL (\S+) first mismatch at (\S+)", re.M)
_SUMMARY = re.compile(r"^csim: (\d+) passed, (\d+) failed$", re.M)
_LAYER = re.compile(r"^LAYER (\S+) (\S+) (PASS|FAIL byte (\d+) got (-?\d+) expected (-?\d+))$", re.M)
_ITERS = re.compile(r"^ITERS (\S+) (\d+) (\d+)$", re.M)
_ENTRIES = re.compile(r"^ENTRIES (\S+) (\d+) (\d+)$", re.M)
_VERDICT = re.compile(r"^(PASS|FAIL) (\S+)")

# Limits. The build's is fixed: compiling the kernel does not grow with the model. The run's
# grows with the work, counted in cosim.work_cycles (the estimate on a 2x32 core). The C++ model
# ran about 50 M cycles a second of the one-MAC-unit count this replaced (a 25x margin at 0.5 us a
# cycle); the default model is 1,161,648 of those and 77,747 of these (15x), so 7.5 us keeps it.
BUILD_TIMEOUT = 600.0
RUN_TIMEOUT_BASE = 30.0
RUN_SECONDS_PER_CYCLE = 7.5e-6
Progress = Callable[[str], None]


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
    # vector id -> traced tensor (execution order) -> "PASS" or "byte <offset>: got <g>, expected <e>"
    layers: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and self.returncode == 0

    def layer_table(self) -> str:
        """One row per traced tensor, one column per vector: PASS, or the first mismatching byte of
        the first layer that differs and `(after)` for the layers behind it (which inherit it)."""
        vectors = list(self.layers)
        if not vectors:
            return "no per-layer results"
        tensors = list(next(iter(self.layers.values())))
        cells = {v: _layer_cells(self.layers[v]) for v in vectors}
        w0 = max(len("layers ok"), *(len(t) for t in tensors)) + 2
        widths = [max(len(v), *(len(cells[v].get(t, "-")) for t in tensors)) + 2 for v in vectors]
        lines = [f"{'layer':<{w0}}" + "".join(f"{v:<{w}}" for v, w in zip(vectors, widths))]
        lines.append("-" * len(lines[0]))
        for t in tensors:
            lines.append(f"{t:<{w0}}" + "".join(f"{cells[v].get(t, '-'):<{w}}" for v, w in zip(vectors, widths)))
        lines.append("-" * len(lines[0]))
        passed = [sum(1 for c in cells[v].values() if c == "PASS") for v in vectors]
        lines.append(f"{'layers ok':<{w0}}" + "".join(f"{f'{p}/{len(tensors)}':<{w}}" for p, w in zip(passed, widths)))
        return "\n".join(lines).rstrip()


def _layer_cells(results: dict[str, str]) -> dict[str, str]:
    cells, seen_failure = {}, False
    for tensor, status in results.items():
        if status == "PASS":
            cells[tensor] = "PASS"
        elif not seen_failure:
            cells[tensor], seen_failure = f"FAIL {status}", True
        else:
            cells[tensor] = "FAIL (after)"
    return cells


@dataclass
class IterationCounts:
    """Pipelined-loop iterations per instruction (index = pc; instruction 0's include the program
    load, the last entry is END, which runs none), and how many pipelined loops each entered
    (each entry costs a loop's pipeline depth on top of its iterations)."""
    per_vector: dict[str, list[int]]
    ops: list[str]  # op name per instruction, from data/manifest.json
    layers: list[str]
    entries: dict[str, list[int]] = field(default_factory=dict)  # vector -> loop entries per instruction

    def per_op(self, vector: str) -> dict[str, int]:
        return self._by_op(self.per_vector[vector])

    def entries_per_op(self, vector: str) -> dict[str, int]:
        return self._by_op(self.entries[vector])

    def _by_op(self, counts: list[int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for op, n in zip(self.ops + ["END"], counts):
            out[op] = out.get(op, 0) + n
        return out

    def total(self, vector: str) -> int:
        return sum(self.per_vector[vector])


def run_csim(project_dir: Path, jobs: int = 2, dump_dir: Path | None = None, timeout: float | None = None,
             first: int | None = None, data_dir: Path | None = None, progress: Progress | None = None
             ) -> CsimResult:
    """Build (when sources changed) and run the testbench of a project rendered by render_hls.

    With dump_dir, the final act image of each vector is written to <dump_dir>/<id>.act.bin.
    With first=N, only the first N vectors of each task run. `data_dir`: vectors of the same
    program in another folder laid out as data/ (write_data_dir), e.g. the user's own images.
    `timeout`: seconds for the testbench run (default run_timeout: grows with the program and
    the vectors); the build has BUILD_TIMEOUT. `progress` receives one line per build step and
    per finished vector.
    """
    project_dir = Path(project_dir).resolve()
    data_dir = project_dir / "data" if data_dir is None else Path(data_dir).resolve()
    if dump_dir is not None:
        dump_dir = checked_output_path(dump_dir, "folder")  # before the build, not after it
    say = progress or _silent
    find_compiler()
    man = check_data_files(project_dir, data_dir)  # bad data is reported before a build, not after it
    start = time.monotonic()
    build_log = build_testbench(project_dir, jobs, progress=say)
    build_seconds = time.monotonic() - start
    wanted = expected_vectors(man, first)
    limit = run_timeout(data_dir, man, len(wanted)) if timeout is None else _checked_timeout(timeout)

    args = [str(project_dir / TESTBENCH), *_first_args(first)]
    if data_dir != project_dir / "data":
        args += ["-d", str(data_dir)]
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        args.append(str(dump_dir))
    say(f"csim: running {len(wanted)} vector(s) (timeout {_seconds(limit)})")
    start = time.monotonic()
    run = _run_testbench(args, project_dir, limit, wanted, say)
    run_seconds = time.monotonic() - start
    log = build_log + run.stdout + run.stderr
    result = _parse(run.stdout, run.returncode, log, build_seconds, run_seconds)
    check_coverage(result, man, first)
    return result


def run_timeout(data_dir: Path, man: dict, vectors: int) -> float:
    """Default seconds for a testbench run of `vectors` vectors of the program in `data_dir`."""
    from ..rtl.project import project_program
    from .cosim import work_cycles

    cycles = work_cycles(project_program(Path(data_dir)))
    return RUN_TIMEOUT_BASE + vectors * cycles * RUN_SECONDS_PER_CYCLE


def _checked_timeout(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, got {value!r}")
    return float(value)


def _silent(_: str) -> None:
    pass


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.3g} s"


def build_testbench(project_dir: Path, jobs: int = 2, timeout: float = BUILD_TIMEOUT, counting: bool = False,
                    progress: Progress | None = None) -> str:
    """Compile firmware/*.cpp and tb/tb_codesign.cpp into build/tb_codesign; return the compiler log.

    counting: the iteration-counting build in build/count/ (instrumented copies of the firmware,
    -DCODESIGN_COUNT_ITERS). Nothing is compiled when the executable was built from the same
    compiler, flags and sources (build_key, kept beside the executable as <name>.key).
    """
    project_dir = Path(project_dir)
    compiler = find_compiler()
    firmware = sorted((project_dir / "firmware").glob("*.cpp"))
    headers = sorted((project_dir / "firmware").rglob("*.h"))
    testbench = project_dir / "tb" / "tb_codesign.cpp"
    if not firmware or not testbench.is_file():
        raise CsimError(f"no firmware/*.cpp or tb/tb_codesign.cpp in {project_dir}: render the project first")
    binary = project_dir / (COUNTING_TESTBENCH if counting else TESTBENCH)
    flags: tuple[str, ...] = (COUNT_DEFINE,) if counting else ()
    key = build_key(compiler, flags, project_dir, firmware + headers + [testbench])
    stamp = binary.with_name(binary.name + ".key")
    say = progress or _silent
    if binary.is_file() and stamp.is_file() and stamp.read_text() == key:
        say(f"csim: {_relative(binary, project_dir)} is up to date")
        return ""
    binary.parent.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    if counting:
        firmware = [_instrumented_copy(src, project_dir / "firmware", binary.parent)
                    for src in firmware + headers][:len(firmware)]
    sources = firmware + [testbench]
    deadline = _Deadline(timeout)
    say(f"csim: compiling {len(sources)} sources with g++ (timeout {_seconds(timeout)})")
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        objects_and_logs = list(pool.map(partial(_compile, compiler, project_dir, deadline, binary.parent, flags, say),
                                         sources))
    objects = [str(obj) for obj, _ in objects_and_logs]
    link = _run([compiler, *CSIM_CXXFLAGS, *flags, "-o", str(binary), *objects], project_dir, deadline,
                "g++ (link)")
    log = "".join(text for _, text in objects_and_logs) + link.stdout + link.stderr
    if link.returncode != 0:
        raise CsimError(f"linking the testbench failed: {_first_error(link.stderr)}", log)
    stamp.write_text(key)
    return log


def find_compiler() -> str:
    compiler = shutil.which("g++")
    if compiler is None:
        raise CsimError("g++ not found: apt-get install g++")
    return compiler


def build_key(compiler: str, flags: tuple[str, ...], project_dir: Path, sources: list[Path]) -> str:
    """Hash of what the testbench binary is built from: the compiler, its flags, and the name and
    content of every source and header (a deleted header changes it too, unlike a timestamp)."""
    h = hashlib.sha256()
    for text in (os.path.realpath(compiler), *CSIM_CXXFLAGS, *flags):
        h.update(text.encode() + b"\0")
    for path in sorted(sources):
        h.update(str(_relative(path, project_dir)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def count_iterations(project_dir: Path, first: int | None = None, jobs: int = 2, timeout: float = BUILD_TIMEOUT
                     ) -> IterationCounts:
    """Pipelined-loop iterations of every instruction of every vector (the counting build).

    Raises CsimError when the run is not bit-exact: counts of a wrong run mean nothing."""
    project_dir = Path(project_dir).resolve()
    deadline = _Deadline(timeout)
    log = build_testbench(project_dir, jobs, timeout, counting=True)
    man = check_data_files(project_dir)
    run = _run([str(project_dir / COUNTING_TESTBENCH), *_first_args(first)], project_dir, deadline,
               "the counting testbench")
    result = _parse(run.stdout, run.returncode, log + run.stdout + run.stderr, 0.0, 0.0)
    check_coverage(result, man, first)
    if not result.ok:
        raise CsimError(f"the counting build is not bit-exact ({result.failed or 'status ' + str(run.returncode)})",
                        result.log)
    ops = [i["op"] for i in man.get("instructions", [])]
    layers = [i["layer"] for i in man.get("instructions", [])]
    return IterationCounts(_per_pc(_ITERS, run.stdout), ops, layers, _per_pc(_ENTRIES, run.stdout))


def _per_pc(pattern: re.Pattern, stdout: str) -> dict[str, list[int]]:
    per_vector: dict[str, list[int]] = {}
    for vid, pc, n in pattern.findall(stdout):
        counts = per_vector.setdefault(vid, [])
        counts.extend([0] * (int(pc) + 1 - len(counts)))
        counts[int(pc)] = int(n)
    return per_vector


def check_data_files(project_dir: Path, data_dir: Path | None = None) -> dict:
    """The checked manifest, once the blobs and vector images have the sizes it gives (a truncated
    weights.bin would otherwise send the kernel's reads past the end of the buffer).
    `data_dir`: another folder laid out as the project's data/ (default PROJECT/data)."""
    data = Path(project_dir) / "data" if data_dir is None else Path(data_dir)
    try:
        man = load_data_manifest(data)
    except (FileNotFoundError, ManifestError) as exc:
        raise CsimError(str(exc)) from None
    expected = [(man.get("weights_file", "weights.bin"), man["wgt_bytes"]),
                (man.get("program_file", "program.bin"), man["prog_bytes"])]
    for vec in man["vectors"]:
        expected += [(vec["start"], man["act_bytes"]), (vec["expected"], man["act_bytes"])]
    for name, size in expected:
        path = data / name
        if not path.is_file():
            raise CsimError(f"{path} is missing (listed in data/manifest.json)")
        if path.stat().st_size != size:
            raise CsimError(f"{path} has {path.stat().st_size} bytes, data/manifest.json says {size}: "
                            f"the file is truncated or from another design; regenerate the project")
    return man


def check_coverage(result: CsimResult, man: dict, first: int | None = None) -> None:
    """A verdict counts only if the testbench checked every vector it was asked for (the first
    `first` of each task) and, for each, every traced tensor of the manifest in order."""
    wanted = expected_vectors(man, first)
    checked = result.passed + list(result.failed)
    if sorted(checked) != sorted(wanted):
        raise CsimError(f"the testbench checked {len(checked)} of the {len(wanted)} vectors data/manifest.json "
                        f"lists (is data/tb_vectors.txt cut?); regenerate the project", result.log)
    for vid in wanted:
        tensors = list(result.layers.get(vid, {}))
        if tensors != man["trace"]:
            raise CsimError(f"the testbench compared {len(tensors)} of the {len(man['trace'])} traced tensors "
                            f"of {vid} that data/manifest.json lists; regenerate the project", result.log)


def expected_vectors(man: dict, first: int | None = None) -> list[str]:
    """Ids of the vectors a run checks: all, or the first `first` of each task (manifest order)."""
    wanted, runs = [], {}
    for vec in man["vectors"]:
        runs[vec["task"]] = runs.get(vec["task"], 0) + 1
        if first is None or runs[vec["task"]] <= first:
            wanted.append(vec["id"])
    return wanted


# ------------------------------------------------------------------ helpers

def _first_args(first: int | None) -> list[str]:
    if first is None:
        return []
    if isinstance(first, bool) or not isinstance(first, int) or first < 1:
        raise ValueError(f"first must be a positive number of vectors per task, got {first!r}")
    return ["-n", str(first)]


def _instrumented_copy(source: Path, root: Path, out_dir: Path) -> Path:
    """source with COUNT_HOOK after every `#pragma HLS PIPELINE` line (the same as `make iters`), at
    its path below root (firmware/ops/x.h -> out_dir/ops/x.h, so relative includes find the copies)."""
    text = _PIPELINE_PRAGMA.sub(lambda m: m.group(0) + "\n" + COUNT_HOOK, source.read_text())
    target = out_dir / source.relative_to(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def _compile(compiler: str, project_dir: Path, deadline: "_Deadline", obj_dir: Path, flags: tuple[str, ...],
             say: Progress, source: Path) -> tuple[Path, str]:
    obj = obj_dir / (source.stem + ".o")
    name = _relative(source, project_dir)
    cmd = [compiler, *CSIM_CXXFLAGS, *flags, "-c", "-o", str(obj), str(name)]
    start = time.monotonic()
    result = _run(cmd, project_dir, deadline, f"g++ on {name}")
    log = " ".join(cmd[1:]) + "\n" + result.stdout + result.stderr
    if result.returncode != 0:
        raise CsimError(f"g++ failed on {name}: {_first_error(result.stderr)}", log)
    say(f"csim: compiled {name} ({time.monotonic() - start:.1f} s)")
    return obj, log


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path


class _Deadline:
    """One time limit shared by several steps; a step that overruns it names the limit."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.end = time.monotonic() + self.seconds

    def left(self) -> float:
        return max(self.end - time.monotonic(), 1.0)

    def message(self, what: str) -> str:
        return f"{what} did not finish within the csim build's {_seconds(self.seconds)} limit"


def _run(cmd: list[str], cwd: Path, deadline: _Deadline, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=deadline.left())
    except subprocess.TimeoutExpired as exc:
        raise CsimError(deadline.message(what), str(exc.stdout or "")) from None


def _run_testbench(args: list[str], cwd: Path, limit: float, wanted: list[str], say: Progress
                   ) -> subprocess.CompletedProcess:
    """Run the testbench, reporting each vector's verdict as it arrives; a run beyond `limit`
    seconds is killed and named with the vector it was on."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    err: list[str] = []
    start = time.monotonic()

    def read_stdout() -> None:
        for line in proc.stdout:
            out.append(line)
            verdict = _VERDICT.match(line)
            if verdict:
                done = sum(1 for seen in out if _VERDICT.match(seen))
                say(f"csim: [{done}/{len(wanted)}] {verdict[1]} {verdict[2]} ({time.monotonic() - start:.1f} s)")

    readers = [threading.Thread(target=read_stdout, daemon=True),
               threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        for reader in readers:
            reader.join(timeout=5)
        done = sum(1 for line in out if _VERDICT.match(line))
        running = f"on {wanted[done]}, vector {done + 1} of {len(wanted)}" if done < len(wanted) else "after the last vector"
        raise CsimError(f"the testbench did not finish within its {_seconds(limit)} timeout (killed {running}); "
                        f"give it longer with --timeout SECONDS", "".join(out + err)) from None
    for reader in readers:
        reader.join()
    return subprocess.CompletedProcess(args, proc.returncode, "".join(out), "".join(err))


def _parse(stdout: str, returncode: int, log: str, build_seconds: float, run_seconds: float) -> CsimResult:
    summary = _SUMMARY.search(stdout)
    if summary is None:
        last = stdout.strip().splitlines()[-1:] or ["no output"]
        raise CsimError(f"testbench exited with status {returncode} before its summary: {last[0]}", log)
    passed = _PASS.findall(stdout)
    failed = dict(_FAIL.findall(stdout))
    if (len(passed), len(failed)) != (int(summary[1]), int(summary[2])):
        raise CsimError(f"testbench output is inconsistent with its summary line '{summary[0]}'", log)
    layers: dict[str, dict[str, str]] = {}
    for vid, tensor, status, offset, got, expected in _LAYER.findall(stdout):
        layers.setdefault(vid, {})[tensor] = (
            "PASS" if status == "PASS" else f"byte {offset}: got {got}, expected {expected}")
    return CsimResult(passed, failed, log, build_seconds, run_seconds, returncode, layers)


def _first_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "error" in line] or stderr.strip().splitlines() or ["no output"]
    return lines[0].strip()
