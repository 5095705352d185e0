"""Lint gate of the generated Verilog, and the rounding shifts against codesign.quant.arith.

* slang (pyslang, the dev extra) with -Weverything on every .v of a generated project's rtl/:
  no error, no warning outside WAIVERS below, and the project's top is the only top module
  (so every file is elaborated under it);
* `verilator --lint-only -Wall` on the same files: no warning, and every `lint_off` in them
  names one rule, is closed by its `lint_on` and says why;
* the core's rounding shift (cs_rshift_round, cs_attn's and cs_drain's), cut out of the rendered
  RTL into a small testbench at 64 bits, gives the exact floor((x + 2^(s-1)) / 2^s) (arith.rshift_round
  where its int64 sum does not wrap) for negative and positive inputs and every 7-bit shift, under
  Icarus and Verilator.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pyslang  # a dev extra (pyproject.toml); not skipped when missing: the gate must run
import pytest
from pyslang.driver import Driver

from codesign.cli import main
from codesign.quant import arith
from codesign.rtl.render import TOP_MODULE
from codesign.sim.cocotb_runner import SimulatorMissing, find_verilator, simulator_env


# -Weverything: slang's whole warning set (signedness, widths, unused, ...); WAIVERS says what passes.
SLANG_ARGS = ["-Weverything"]


@lru_cache(maxsize=None)
def file_lines(path: Path) -> tuple[str, ...]:
    return tuple(path.read_text().splitlines())


@lru_cache(maxsize=None)
def lint_off_regions(path: Path) -> dict[str, tuple[range, ...]]:
    """Verilator rule -> the line ranges (1-based) from its lint_off to its lint_on in path."""
    regions: dict[str, list[range]] = {}
    open_at: dict[str, int] = {}
    for number, line in enumerate(file_lines(path), 1):
        for switch, rule in re.findall(r"verilator\s+lint_(off|on)\s+(\w+)", line):
            if switch == "off":
                open_at[rule] = number
            elif rule in open_at:
                regions.setdefault(rule, []).append(range(open_at.pop(rule), number + 1))
    return {rule: tuple(found) for rule, found in regions.items()}


def inside_lint_off(rule: str) -> Callable[[Path, int], bool]:
    return lambda path, line: any(line in r for r in lint_off_regions(path).get(rule, ()))


def line_matches(pattern: str) -> Callable[[Path, int], bool]:
    return lambda path, line: re.search(pattern, file_lines(path)[line - 1]) is not None


@dataclass(frozen=True)
class Waiver:
    options: tuple[str, ...]             # slang warning options (the names after -W)
    where: Callable[[Path, int], bool]   # (file, line) -> the waiver applies there
    reason: str


# The slang warnings the gate accepts, and why. Keep it short: where the RTL can say what it
# means (explicit $signed / $unsigned, widths), fix the RTL instead.
WAIVERS = (
    Waiver(("unused-net", "unused-but-set-net", "unused-argument"), inside_lint_off("UNUSEDSIGNAL"),
           "signals a module ignores on purpose (the `wire unused = &{1'b0, ...}` sink, a read-only "
           "master's write side, a task argument only some configurations use): the template waives "
           "them for Verilator with a lint_off UNUSEDSIGNAL region that says why; the gate takes that"),
    Waiver(("arith-op-mismatch",), line_matches(r"\*\s*(\w+)\s*\+:\s*\1\s*\]"),
           "a lane select v[i*W +: W]: a narrow lane index times the lane width is evaluated as a "
           "32-bit unsigned index, exactly; Verilator checks the select's range"),
)


def waived(option: str, path: Path, line: int) -> bool:
    return any(option in w.options and w.where(path, line) for w in WAIVERS)


@pytest.fixture(scope="module")
def generated_rtl(tmp_path_factory) -> Path:
    """rtl/ of `codesign generate default` (zcu104: 4 weight masters)."""
    out = tmp_path_factory.mktemp("lint") / "proj"
    assert main(["generate", "default", "-o", str(out), "--images", "1"]) == 0
    return out / "rtl"


def _uarch_rtl(tmp_path_factory, P: int, Q: int, W: int) -> Path:
    """The docs/UARCH.md core (rtl_templates/uarch/) on a 128-bit bus, sized for a MATMUL program
    with every flag."""
    from test_rtl_uarch import build, matmul_program

    _, rtl = build(tmp_path_factory.mktemp(f"lint_uarch_{P}x{Q}"), matmul_program(np.random.default_rng(0)).instrs,
                   P, Q, W)
    return rtl


@pytest.fixture(scope="module")
def uarch_rtl_2x32(tmp_path_factory) -> Path:
    return _uarch_rtl(tmp_path_factory, 2, 32, 1)


@pytest.fixture(scope="module")
def uarch_rtl_8x32_w3(tmp_path_factory) -> Path:
    """Three weight masters: the other branches of the top and the weight engine."""
    return _uarch_rtl(tmp_path_factory, 8, 32, 3)


@pytest.fixture(scope="module")
def uarch_rtl_attn_3x32(tmp_path_factory) -> Path:
    """Sized for attention (M3ViT-tiny's 129 tokens x 3 heads of 64 and the default model's), on an
    odd P: the EXP ROM copy with one idle port."""
    from test_rtl_uarch import build
    from test_rtl_uarch_attn import default_attention, tiny_attention

    rng = np.random.default_rng(0)
    instrs = tiny_attention(rng).instrs + default_attention(rng).instrs
    _, rtl = build(tmp_path_factory.mktemp("lint_uarch_attn"), instrs, 3, 32, 2)
    return rtl


@pytest.fixture(params=["generated_rtl", "uarch_rtl_2x32", "uarch_rtl_8x32_w3", "uarch_rtl_attn_3x32"])
def rtl_dir(request) -> Path:
    return request.getfixturevalue(request.param)


def sources(rtl_dir: Path) -> list[Path]:
    found = sorted(rtl_dir.glob("*.v"))
    assert found, f"no .v files in {rtl_dir}"
    return found


# ---------------------------------------------------------------------------------------- slang

def slang(files: list[Path]) -> tuple[list[str], list[str]]:
    """(top module names, unwaived diagnostics as `file:line: severity [-Woption]: message`)."""
    driver = Driver()
    driver.addStandardArgs()
    assert driver.parseCommandLine(" ".join(["slang", *SLANG_ARGS, *map(str, files)]))
    assert driver.processOptions()
    driver.parseAllSources()   # False on a syntax error, which is among the diagnostics below
    compilation = driver.createCompilation()
    diags = [*compilation.getAllDiagnostics(), *driver.runAnalysis(compilation).getDiagnostics()]
    engine, sm = driver.diagEngine, driver.sourceManager
    report = []
    for diag in diags:
        severity = engine.getSeverity(diag.code, diag.location)
        if severity in (pyslang.DiagnosticSeverity.Ignored, pyslang.DiagnosticSeverity.Note):
            continue
        path, line, option = Path(sm.getFileName(diag.location)), sm.getLineNumber(diag.location), \
            engine.getOptionName(diag.code)
        if severity == pyslang.DiagnosticSeverity.Warning and waived(option, path, line):
            continue
        tag = f" [-W{option}]" if option else ""
        report.append(f"{path.name}:{line}: {severity.name.lower()}{tag}: {engine.formatMessage(diag)}")
    return [inst.name for inst in compilation.getRoot().topInstances], report


def test_slang_finds_no_error_and_no_unwaived_warning(rtl_dir):
    tops, report = slang(sources(rtl_dir))
    assert report == [], "\n".join(report)
    assert tops == [TOP_MODULE], "every module in rtl/ must be instantiated under the project's top"


# ------------------------------------------------------------------------------------ verilator

def verilator_env() -> dict[str, str]:
    try:
        return {**os.environ, **find_verilator()}
    except SimulatorMissing as exc:
        pytest.skip(str(exc))


def test_verilator_wall_is_clean_with_named_waivers_only(rtl_dir):
    files = sources(rtl_dir)
    proc = subprocess.run(["verilator", "--lint-only", "-Wall", "--top-module", TOP_MODULE, *map(str, files)],
                          env=verilator_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "%Warning" not in proc.stdout + proc.stderr
    for path in files:
        lines = file_lines(path)
        for number, line in enumerate(lines, 1):
            if "lint_off" not in line:
                continue
            rule = re.search(r"verilator\s+lint_off\s+([A-Z]\w*)", line)
            assert rule, f"{path.name}:{number}: lint_off without a rule name: {line.strip()}"
            closed = any(number in r for r in lint_off_regions(path).get(rule[1], ()))
            assert closed, f"{path.name}:{number}: lint_off {rule[1]} is never closed by lint_on"
            said_why = "//" in line or any("//" in above for above in lines[max(0, number - 4):number - 1])
            assert said_why, f"{path.name}:{number}: lint_off {rule[1]} without a comment saying why"


# ------------------------------------------------------------------------------- rounding shifts

# The core's rounding shifts are cs_rshift_round instances (cs_attn's score index is a product plus
# its rounding half, cs_router's likewise, both checked bit-exact by their cocotb tests); the module
# is cut out of the rendered RTL at 64 bits into a small testbench.
SHIFT_MODULE = "cs_rshift_round"


def module_text(rtl_dir: Path, name: str) -> str:
    """The Verilog module `name` of rendered `name`.v."""
    pattern = re.compile(rf"^module\s+{name}\b.*?^endmodule\b", re.M | re.S)
    found = pattern.findall((rtl_dir / f"{name}.v").read_text())
    assert len(found) == 1, f"module {name} defined {len(found)} times in {name}.v"
    return found[0]


def shift_cases() -> tuple[np.ndarray, np.ndarray]:
    """Negative and positive int64 inputs (extremes included) against every 7-bit shift."""
    rng = np.random.default_rng(16)
    xs = np.concatenate([np.array([-1000, -62, -1, 0, 1, 1000, -(2**63), 2**63 - 1], np.int64),
                         rng.integers(-(2**63), 2**63 - 1, 8, dtype=np.int64, endpoint=True),
                         rng.integers(-(2**20), 2**20, 8, dtype=np.int64)])
    x, s = np.meshgrid(xs, np.arange(128, dtype=np.int64))
    return x.ravel(), s.ravel()


def exact_rounding(x: np.ndarray, s: np.ndarray) -> list[int]:
    """floor((x + 2^(s-1)) / 2^s) on Python integers: arith.rshift_round without the int64 wrap."""
    return [(int(a) + ((1 << (int(b) - 1)) if b else 0)) >> int(b) for a, b in zip(x, s)]


def shift_testbench(module: str, n: int) -> str:
    """The module at 64 bits; prints its value of every case, one case a line."""
    return f"""`timescale 1ns/1ps
{module}
module tb;
    reg  [63:0] xs [0:{n - 1}];
    reg  [6:0]  ss [0:{n - 1}];
    reg  signed [63:0] x;
    reg  [6:0]  s;
    wire signed [63:0] y;
    integer i;
    {SHIFT_MODULE} #(.W(64), .SW(7)) u (.x(x), .s(s), .y(y));
    initial begin
        $readmemh("x.hex", xs);
        $readmemh("s.hex", ss);
        for (i = 0; i < {n}; i = i + 1) begin
            x = xs[i];
            s = ss[i];
            #1 $display("%0d", y);
        end
        $finish;
    end
endmodule
"""


def simulate(simulator: str, work: Path) -> str:
    try:
        env = {**os.environ, **simulator_env(simulator)}
    except SimulatorMissing as exc:
        pytest.skip(str(exc))
    if simulator == "icarus":
        steps = [["iverilog", "-g2005", "-o", "tb.vvp", "tb.v"], ["vvp", "-n", "tb.vvp"]]
    else:
        # -CFLAGS -O0: the C++ build is most of the time, and 3,000 calls need no optimiser
        # -fcoroutines: the testbench's #1 steps need Verilator's timing (C++20 coroutines)
        steps = [["verilator", "--binary", "-Wno-fatal", "--build-jobs", "2", "-CFLAGS", "-O0 -fcoroutines",
                  "--top-module", "tb", "tb.v"], ["obj_dir/Vtb"]]
    for cmd in steps:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_rounding_shifts_match_arith(uarch_rtl_attn_3x32, simulator, tmp_path):
    x, s = shift_cases()
    (tmp_path / "x.hex").write_text("".join(f"{int(v) & (2**64 - 1):016x}\n" for v in x))
    (tmp_path / "s.hex").write_text("".join(f"{int(v):02x}\n" for v in s))
    (tmp_path / "tb.v").write_text(shift_testbench(module_text(uarch_rtl_attn_3x32, SHIFT_MODULE), len(x)))
    rows = [int(v) for v in re.findall(r"^(-?\d+)$", simulate(simulator, tmp_path), re.M)]
    assert len(rows) == len(x)
    expected = exact_rounding(x, s)
    assert expected[int(np.flatnonzero((x == -1000) & (s == 4))[0])] == -62
    # arith.rshift_round's own values wherever its int64 sum does not wrap (every shift <= MAX_SHIFT
    # of an accumulator-sized value)
    small = (np.abs(x) < 2**40) & (s <= arith.MAX_SHIFT)
    assert np.array_equal(np.array(expected)[small], arith.rshift_round(x[small], s[small]))
    wrong = [(int(a), int(b), r, e) for a, b, r, e in zip(x, s, rows, expected) if r != e]
    assert wrong == [], f"{SHIFT_MODULE}: {len(wrong)} of {len(x)} differ; (x, s, rtl, exact): {wrong[:4]}"
