"""The vector unit cs_vec (rtl_templates/cs_vec.v.j2) on its own, against codesign.quant.arith.

One Icarus simulation (tests/cocotb_cs_vec.py driving tests/rtl/cs_vec_tb.v) runs every case of
an EPB=16 int8 unit -- the MATMUL drain's requant with and without GELU, REQUANT32, ADD with two
independently gapped input streams, LAYERNORM rows of M3ViT's widths (192, 384, 768) and of a
short row -- and the tests compare every output element bit-exactly with arith.py, then count
cycles: one beat per cycle in steady state, and the latencies the unit's header states.
Lint: slang -Weverything and verilator --lint-only -Wall on the unit, as tests/test_rtl_lint.py
does for a project's rtl/.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from codesign.quant import arith
from codesign.rtl import synth
from codesign.rtl.render import UNIT_TEMPLATES, VEC_UNIT_TOP, render_units
from codesign.sim.cosim import _verilator_pch_fix
from codesign.sim.cocotb_runner import (VERILATOR_BUILD_ARGS, SimulatorMissing, _patched_process_env,
                                        simulator_env)

import test_rtl_lint as lint

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "rtl" / "cs_vec_tb.v"
PARAMS = {"EPB": 16, "EB": 1, "ABITS": 8, "ACC_W": 32, "MULT_W": 33, "MAX_DIM": 768, "TAG_W": 16}
# The int16 container (EB=2) at the widest activations: the LayerNorm statistics' widest sums
INT16 = {"EPB": 8, "EB": 2, "ABITS": 16, "ACC_W": 42, "MULT_W": 33, "MAX_DIM": 384, "TAG_W": 16}
LATENCY = 8            # REQUANT / ADD: input handshake -> out_valid (the unit's header)
LN_ROW_LATENCY = 18    # LAYERNORM: a row's last input handshake -> its first out_valid
LN_FULL_RATE_BEATS = 10  # rows of at least this many beats stream at one beat per cycle
I32 = (-(2**31), 2**31 - 1)


# ------------------------------------------------------------------------------------ stimulus

def edge_values(rng, n: int, lo: int, hi: int) -> np.ndarray:
    """n values in [lo, hi]: a quarter at or next to the ends, the rest uniform."""
    v = rng.integers(lo, hi, n, endpoint=True)
    ends = np.array([lo, lo + 1, hi - 1, hi, 0, -1, 1])
    pick = rng.random(n) < 0.25
    v[pick] = rng.choice(ends, int(pick.sum()))
    return v


def gelu_tables(rng, p: dict) -> list[np.ndarray]:
    """Two tables of 2^ABITS elements: a real one (arith.gelu_lut) and a random one, so a lookup
    into the wrong table or at the wrong index shows."""
    q = 1 << (p["ABITS"] - 1)
    real = arith.gelu_lut(0.05, 0.04, p["ABITS"], p["ABITS"])
    return [real, rng.integers(-q, q - 1, 2 * q, endpoint=True)]


def requant_case(rng, p: dict, name: str, beats: int, shift: int, gelu: int, lut_sel: int = 0,
                 acc_bits: int = 32, **flow) -> dict:
    """Accumulators of acc_bits (+ an int32 bias) times int32 multipliers below 2^(62 - acc_bits):
    the product and its rounding fit arith's int64."""
    e = p["EPB"]
    top = 2 ** (acc_bits - 1)
    acc = edge_values(rng, beats * e, -top, top - 1)
    bias = np.clip(rng.integers(-(2**20), 2**20, beats * e), -top - acc, top - 1 - acc)  # acc + bias fits acc_bits
    mtop = 2 ** min(31, 62 - acc_bits) - 1
    mult = np.where(rng.random(beats * e) < 0.1, rng.integers(-mtop, 0, beats * e),
                    edge_values(rng, beats * e, 0, mtop))
    return {"name": name, "mode": 0, "cfg": {"shift": shift, "gelu": gelu, "lut_sel": lut_sel},
            "luts": [t.tolist() for t in gelu_tables(rng, p)] if gelu else [],
            "beats": {"acc": acc.reshape(beats, e).tolist(), "bias": bias.reshape(beats, e).tolist(),
                      "mult": mult.reshape(beats, e).tolist()}, **flow}


def requant32_case(rng, p: dict, name: str, beats: int, mult: int, shift: int, **flow) -> dict:
    e = p["EPB"]
    acc = edge_values(rng, beats * e, *I32)
    return {"name": name, "mode": 0, "cfg": {"shift": shift},
            "beats": {"acc": acc.reshape(beats, e).tolist(), "bias": [[0] * e] * beats,
                      "mult": [[mult] * e] * beats}, **flow}


def add_case(rng, p: dict, name: str, beats: int, ma: int, mb: int, shift: int, **flow) -> dict:
    e, q = p["EPB"], 1 << (p["ABITS"] - 1)
    a, b = (edge_values(rng, beats * e, -q, q - 1).reshape(beats, e) for _ in range(2))
    return {"name": name, "mode": 1, "cfg": {"ma": ma, "mb": mb, "shift": shift},
            "beats": {"x": a.tolist(), "y": b.tolist()}, **flow}


def ln_case(rng, p: dict, name: str, rows: int, dim: int, eps: int, ln_shift: int, gamma_bits: int = 20,
            **flow) -> dict:
    q = 1 << (p["ABITS"] - 1)
    x = rng.integers(-q, q - 1, (rows, dim), endpoint=True)
    spread = rng.integers(1, q, rows)[:, None]        # narrow and wide rows: small and large var
    x = np.clip((x * spread) // q + rng.integers(-q // 2, q // 2, (rows, 1)), -q, q - 1)
    x[0, :] = rng.choice([-q, q - 1], dim)               # extremes only: the largest var of a row
    if rows > 2:
        x[1, :] = 5                                      # a constant row: var = eps
    # y ~ t*gamma / 2^shift with t ~ 2^24 z / sqrt(D) (z: the element's distance from the row mean in
    # standard deviations): gammas at this scale give |y| ~ 0.4 QP at z = 1, so most outputs are not
    # saturated and a wrong scale shows; 5% of them at the int32 ends of gamma_bits
    typical = 0.4 * q * np.sqrt(dim) * 2.0 ** (ln_shift - 24)
    gamma = np.round(rng.uniform(-2, 2, dim) * typical).astype(np.int64)
    ends = rng.random(dim) < 0.05
    gamma[ends] = rng.choice([-(2**gamma_bits), 2**gamma_bits - 1], int(ends.sum()))
    beta = edge_values(rng, dim, -(q + q // 2), q + q // 2)   # pushes outputs past the ends
    return {"name": name, "mode": 2, "cfg": {"dim": dim, "eps": eps, "ln_shift": ln_shift},
            "gamma": gamma.tolist(), "beta": beta.tolist(), "x_rows": x.tolist(),
            "beats": {"x": x.reshape(-1, p["EPB"]).tolist()}, **flow}


def cases() -> list[dict]:
    """The int8 unit's cases (EPB=16: a 128-bit beat)."""
    rng, p = np.random.default_rng(12), PARAMS
    steady = {"p_gap": 0.0, "p_stall": 0.0}
    shaky = {"p_gap": 0.3, "p_bgap": 0.3, "p_stall": 0.3}
    found = [
        requant_case(rng, p, "drain", 48, 38, 0, **steady),
        requant_case(rng, p, "drain_gelu", 40, 40, 1, lut_sel=1, seed=1, **shaky),
        requant_case(rng, p, "drain_gelu_real", 16, 36, 1, **steady),
        requant_case(rng, p, "drain_shift0", 8, 0, 0, **steady),
        # a multiplier above int32 (the field is a uint32); int32 x 3e9 and its rounding fit int64
        requant32_case(rng, p, "requant32", 48, 3_000_000_000, 40, **steady),
        requant32_case(rng, p, "requant32_small", 24, 21_000, 22, seed=2, **shaky),
        add_case(rng, p, "add", 48, 2**32 - 1, 3, 31, **steady),
        add_case(rng, p, "add_shaky", 40, 23_000, 17_000, 15, seed=3, **shaky),
        add_case(rng, p, "add_shift0", 8, 1, 1, 0, **steady),
        ln_case(rng, p, "ln768", 4, 768, 2**20, 22, **steady),
        ln_case(rng, p, "ln384", 5, 384, 0, 40, gamma_bits=31, **steady),
        ln_case(rng, p, "ln192", 6, 192, 2**32 - 1, 20, **steady),
        ln_case(rng, p, "ln192_shaky", 4, 192, 1234, 21, seed=4, **shaky),
        ln_case(rng, p, "ln32", 6, 32, 7, 23, **steady),
        # narrower output widths OB than the unit's ABITS (per-layer precision)
        with_obits(requant_case(rng, p, "drain_ob6_gelu", 16, 41, 1, **steady), 6),
        with_obits(requant32_case(rng, p, "requant32_ob3", 8, 21_000, 26, **steady), 3),
        with_obits(add_case(rng, p, "add_ob4", 16, 23_000, 17_000, 17, **steady), 4),
        with_obits(ln_case(rng, p, "ln384_ob5", 3, 384, 99, 26, **steady), 5),
    ]
    for case in found:
        case["seed"] = case.get("seed", 0)
    return found


def with_obits(case: dict, obits: int) -> dict:
    case["cfg"]["obits"] = obits
    return case


def int16_cases() -> list[dict]:
    """The int16 container (EPB=8 of a 128-bit beat), every mode once, LayerNorm at its max dim."""
    rng, p = np.random.default_rng(16), INT16
    shaky = {"p_gap": 0.2, "p_bgap": 0.2, "p_stall": 0.2}
    return [requant_case(rng, p, "drain", 24, 36, 0, acc_bits=42, seed=5, **shaky),
            requant32_case(rng, p, "requant32", 16, 3_000_000_000, 33, seed=6),
            add_case(rng, p, "add", 24, 2**32 - 1, 70_000, 33, seed=7, **shaky),
            ln_case(rng, p, "ln384", 4, 384, 2**31, 30, seed=8),
            ln_case(rng, p, "ln192", 3, 192, 0, 31, gamma_bits=31, seed=9, **shaky),
            with_obits(ln_case(rng, p, "ln192_ob12", 3, 192, 5, 30, seed=10), 12),
            with_obits(requant_case(rng, p, "drain_ob9", 8, 36, 0, acc_bits=40, seed=11), 9)]


# ------------------------------------------------------------------------------------- golden

def expected(case: dict, p: dict = PARAMS) -> np.ndarray:
    """[beats, EPB] output elements by arith.py (isa.py's handlers call exactly these)."""
    cfg = case["cfg"]
    ab = cfg.get("obits", p["ABITS"])   # the instruction's output width OB
    b = {k: np.asarray(v, np.int64) for k, v in case["beats"].items()}
    if case["mode"] == 0:
        y = arith.requant(b["acc"] + b["bias"], b["mult"], cfg["shift"], ab)
        if cfg.get("gelu"):
            y = arith.lut_lookup(y, case["luts"][cfg["lut_sel"]], ab)
        return y
    if case["mode"] == 1:
        return arith.add(b["x"], b["y"], cfg["ma"], cfg["mb"], cfg["shift"], ab)
    y = arith.layernorm(np.asarray(case["x_rows"]), case["gamma"], case["beta"], cfg["eps"], cfg["ln_shift"], ab)
    return y.reshape(-1, p["EPB"])


def lanes(words: list[str], p: dict = PARAMS) -> np.ndarray:
    """out_y words -> [beats, EPB] signed elements."""
    e, bits = p["EPB"], 8 * p["EB"]
    raw = np.array([[(int(w) >> (bits * l)) & ((1 << bits) - 1) for l in range(e)] for w in words], np.int64)
    return np.where(raw >= 1 << (bits - 1), raw - (1 << bits), raw)


# ----------------------------------------------------------------------------------- simulate

def simulate(rtl_dir: Path, work: Path, job_cases: list[dict], p: dict = PARAMS, simulator: str = "icarus") -> dict:
    from cocotb_tools.runner import get_runner

    try:
        env = simulator_env(simulator)
    except SimulatorMissing as exc:
        pytest.skip(str(exc))
    work.mkdir(parents=True, exist_ok=True)
    (work / "job.json").write_text(json.dumps({"params": p, "cases": job_cases}))
    runner = get_runner(simulator)
    sources = [rtl_dir / f"{name[:-3]}" for name in UNIT_TEMPLATES] + [HARNESS]
    with _patched_process_env({**env, "CS_VEC_JOB": str(work)}, HERE), _verilator_pch_fix(simulator):
        runner.build(sources=sources, hdl_toplevel="cs_vec_tb", build_dir=work / "build",
                     parameters=p, timescale=("1ns", "1ps"), always=True,
                     build_args=VERILATOR_BUILD_ARGS if simulator == "verilator" else [],
                     log_file=work / "build.log")
        try:
            runner.test(test_module="cocotb_cs_vec", hdl_toplevel="cs_vec_tb", build_dir=work / "build",
                        test_dir=work, extra_env={"CS_VEC_JOB": str(work)}, log_file=work / "sim.log")
        except SystemExit:   # cocotb's verdict on a testbench exception
            errors = [line for line in (work / "sim.log").read_text().splitlines() if "Error" in line]
            pytest.fail(f"the cs_vec testbench failed: {errors[-1:] or 'see ' + str(work / 'sim.log')}")
    return {r["name"]: r for r in json.loads((work / "result.json").read_text())["cases"]}


@pytest.fixture(scope="module")
def unit_rtl(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cs_vec") / "rtl"
    render_units(out)
    return out


@pytest.fixture(scope="module")
def run(unit_rtl, tmp_path_factory):
    job_cases = cases()
    results = simulate(unit_rtl, tmp_path_factory.mktemp("cs_vec_sim"), job_cases)
    return {c["name"]: c for c in job_cases}, results


def check_bit_exact(run, name: str, p: dict = PARAMS) -> None:
    job, results = run
    case, result = job[name], results[name]
    want = expected(case, p)
    got = lanes(result["out"], p)
    assert got.shape == want.shape
    wrong = np.argwhere(got != want)
    assert wrong.size == 0, (f"{name}: {len(wrong)} of {want.size} elements differ; first (beat, lane) "
                             f"{wrong[0].tolist()}: rtl {got[tuple(wrong[0])]} arith {want[tuple(wrong[0])]}")
    assert result["tags"] == list(range(len(want))), f"{name}: beats out of order"


# --------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", ["drain", "drain_gelu", "drain_gelu_real", "drain_shift0"])
def test_drain_requant_and_gelu_are_bit_exact(run, name):
    check_bit_exact(run, name)


@pytest.mark.parametrize("name", ["requant32", "requant32_small"])
def test_requant32_is_bit_exact(run, name):
    check_bit_exact(run, name)


@pytest.mark.parametrize("name", ["add", "add_shaky", "add_shift0"])
def test_add_of_two_streams_is_bit_exact(run, name):
    check_bit_exact(run, name)


@pytest.mark.parametrize("name", ["ln768", "ln384", "ln192", "ln192_shaky", "ln32"])
def test_layernorm_rows_are_bit_exact(run, name):
    check_bit_exact(run, name)


def test_the_cases_reach_saturation_and_both_signs(run):
    job, _ = run
    q = 1 << (PARAMS["ABITS"] - 1)
    for name in ("drain", "requant32", "add", "ln768", "ln384"):
        y = expected(job[name])
        assert (y == -q).any() and (y == q - 1).any() and ((y > -q) & (y < q - 1)).any(), name


@pytest.mark.parametrize("name", ["drain_ob6_gelu", "requant32_ob3", "add_ob4", "ln384_ob5"])
def test_narrower_output_widths_are_bit_exact(run, name):
    """cfg_obits = OB < ABITS (ISA word 0 bits 20:16): saturation at OB bits, GELU at y + 2^(OB-1)."""
    check_bit_exact(run, name)
    job, _ = run
    ob = job[name]["cfg"]["obits"]
    y = expected(job[name])
    if not job[name]["cfg"].get("gelu"):
        assert y.min() == -(1 << (ob - 1)) and y.max() == (1 << (ob - 1)) - 1


@pytest.mark.parametrize("name", ["ln768", "ln384", "ln192"])
def test_most_layernorm_outputs_are_inside_the_range(run, name):
    """A wrong rsqrt scale must not hide behind saturation."""
    job, _ = run
    q = 1 << (PARAMS["ABITS"] - 1)
    y = expected(job[name])
    assert ((y > -q) & (y < q - 1)).mean() > 0.5


@pytest.mark.parametrize("name", ["drain", "requant32", "add"])
def test_elementwise_modes_take_one_beat_per_cycle(run, name):
    _, results = run
    r = results[name]
    n = len(r["out"])
    assert r["refused"] == 0
    assert r["in_cycles"] == list(range(r["in_cycles"][0], r["in_cycles"][0] + n))
    assert r["out_cycles"] == list(range(r["out_cycles"][0], r["out_cycles"][0] + n))
    assert r["out_cycles"][0] - r["in_cycles"][0] == LATENCY


@pytest.mark.parametrize("name", ["ln768", "ln384", "ln192"])
def test_layernorm_streams_one_beat_per_cycle(run, name):
    job, results = run
    r = results[name]
    beats = job[name]["cfg"]["dim"] // PARAMS["EPB"]
    n = len(r["out"])
    assert beats >= LN_FULL_RATE_BEATS
    assert r["refused"] == 0, "the next row streams in while the previous one streams out"
    assert r["in_cycles"] == list(range(r["in_cycles"][0], r["in_cycles"][0] + n))
    assert r["out_cycles"] == list(range(r["out_cycles"][0], r["out_cycles"][0] + n))
    assert r["out_cycles"][0] - r["in_cycles"][beats - 1] == LN_ROW_LATENCY
    # rows * dim/EPB cycles plus the row latency, from the first beat in to the last beat out
    assert r["out_cycles"][-1] + 1 - r["in_cycles"][0] == n + beats - 1 + LN_ROW_LATENCY


def test_short_layernorm_rows_wait_for_their_scale(run):
    """dim/EPB = 2 < LN_FULL_RATE_BEATS: a row cannot leave before its statistics are in."""
    _, results = run
    r = results["ln32"]
    assert r["refused"] > 0
    assert r["out_cycles"][0] - r["in_cycles"][1] == LN_ROW_LATENCY


def test_int16_unit_is_bit_exact(unit_rtl, tmp_path):
    job_cases = int16_cases()
    results = simulate(unit_rtl, tmp_path, job_cases, INT16)
    for case in job_cases:
        check_bit_exact(({c["name"]: c for c in job_cases}, results), case["name"], INT16)
    q = 1 << (INT16["ABITS"] - 1)
    y = expected(job_cases[3], INT16)
    assert (y == -q).any() and (y == q - 1).any() and ((y > -q) & (y < q - 1)).mean() > 0.5


@pytest.mark.slow
def test_the_int8_unit_is_bit_exact_under_verilator(unit_rtl, tmp_path):
    """The same cases under the suite's other simulator (its C++ build is what makes this slow)."""
    job_cases = cases()
    results = simulate(unit_rtl, tmp_path, job_cases, PARAMS, "verilator")
    for case in job_cases:
        check_bit_exact(({c["name"]: c for c in job_cases}, results), case["name"])
    assert results["ln768"]["out_cycles"][0] - results["ln768"]["in_cycles"][47] == LN_ROW_LATENCY


# ---------------------------------------------------------------------------------- cs_mul alone

MUL_SHAPES = [(26, 33), (33, 26), (21, 52), (27, 35), (33, 33), (8, 8), (26, 18), (18, 26)]   # split a / b / b, plain


def test_dsp_shaped_products_are_exact(unit_rtl, tmp_path):
    """cs_mul's chunked products (either operand the narrow one) and its plain one, on random and
    extreme operands, against Python's integers."""
    try:
        env = {**os.environ, **simulator_env("icarus")}
    except SimulatorMissing as exc:
        pytest.skip(str(exc))
    rng = np.random.default_rng(27)
    n = 400
    cases, lines = [], []
    for k, (aw, bw) in enumerate(MUL_SHAPES):
        a = [int(v) for v in rng.integers(-(2 ** (aw - 1)), 2 ** (aw - 1), n)]
        b = [int(v) for v in rng.integers(-(2 ** (bw - 1)), 2 ** (bw - 1), n)]
        a[:4], b[:4] = [-(2 ** (aw - 1)), 2 ** (aw - 1) - 1, -1, 0], [-(2 ** (bw - 1)), -(2 ** (bw - 1)), 2 ** (bw - 1) - 1, 1]
        for name, values, w in (("a", a, aw), ("b", b, bw)):
            (tmp_path / f"{name}{k}.hex").write_text("".join(f"{v & ((1 << w) - 1):x}\n" for v in values))
        cases.append((a, b))
        lines.append(f"""
    reg  [{aw - 1}:0] a{k} [0:{n - 1}];  reg [{bw - 1}:0] b{k} [0:{n - 1}];
    reg  signed [{aw - 1}:0] x{k};  reg signed [{bw - 1}:0] y{k};  wire signed [{aw + bw - 1}:0] p{k};
    cs_mul #(.AW({aw}), .BW({bw})) u{k} (.a(x{k}), .b(y{k}), .p(p{k}));
    initial begin $readmemh("a{k}.hex", a{k}); $readmemh("b{k}.hex", b{k}); end""")
    runs = "\n".join(f"        for (i = 0; i < {n}; i = i + 1) begin x{k} = a{k}[i]; y{k} = b{k}[i]; #1 "
                      f"$display(\"{k} %0d\", p{k}); end" for k in range(len(MUL_SHAPES)))
    (tmp_path / "tb.v").write_text(f"""`timescale 1ns/1ps
module tb;
{"".join(lines)}
    integer i;
    initial begin
        #1;
{runs}
        $finish;
    end
endmodule
""")
    for cmd in (["iverilog", "-g2005", "-o", "tb.vvp", "tb.v", str(unit_rtl / "cs_mul.v")], ["vvp", "-n", "tb.vvp"]):
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    got = [[] for _ in MUL_SHAPES]
    for line in proc.stdout.split("\n"):
        if line[:1].isdigit():
            k, v = line.split()
            got[int(k)].append(int(v))
    for k, (a, b) in enumerate(cases):
        assert got[k] == [x * y for x, y in zip(a, b)], f"cs_mul {MUL_SHAPES[k]}"


# ------------------------------------------------------------------------------------- synthesis

@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed (apt-get install yosys)")
def test_unit_synthesizes_to_its_measured_size(unit_rtl, tmp_path):
    """yosys 0.23 synth_xilinx -family xcup of cs_vec at EPB=16 int8, MULT_W=33 (~20 min on one
    core). Measured: 132 DSP48E2 = 16 lanes x (4 for (acc+bias)*mult, 33x33; 2 for t*gamma / b*mb
    through cs_mul; 1 for x^2; 1 for D*x) + 4 for var, 29,902 LUT, 1,345 LUTRAM (the GELU table
    copies, delay lines), 10,109 FF, 5 RAMB36 (RSQRT ROM, row buffers)."""
    res = synth.synth_rtl(unit_rtl, "xcup", log=tmp_path / "synth.log", timeout_s=3600, top=VEC_UNIT_TOP,
                          params={"EPB": 16, "EB": 1, "ABITS": 8, "ACC_W": 32, "MULT_W": 33, "MAX_DIM": 768})
    assert res.resources["dsp"] == 132
    assert 0.8 * 29_902 < res.resources["lut"] < 1.2 * 29_902
    assert 0.8 * 10_109 < res.resources["ff"] < 1.2 * 10_109
    assert res.resources["bram36_equiv"] <= 6


# ------------------------------------------------------------------------------------------ lint

def test_unit_is_clean_under_slang(unit_rtl):
    tops, report = lint.slang(sorted(unit_rtl.glob("*.v")))
    assert report == [], "\n".join(report)
    assert tops == [VEC_UNIT_TOP]


@pytest.mark.parametrize("overrides", [{}, {"EPB": 8, "EB": 2, "ABITS": 12, "ACC_W": 41, "MULT_W": 17,
                                             "MAX_DIM": 384}])
def test_unit_is_clean_under_verilator_wall(unit_rtl, overrides):
    files = sorted(unit_rtl.glob("*.v"))
    args = [f"-G{k}={v}" for k, v in overrides.items()]
    proc = subprocess.run(["verilator", "--lint-only", "-Wall", "--top-module", VEC_UNIT_TOP, *args, *map(str, files)],
                          env={**os.environ, **lint.verilator_env()}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "%Warning" not in proc.stdout + proc.stderr
