"""Cycles per layer next to the estimate, and the CLI end to end on the embedded model.

`codesign generate default` + `codesign cosim --rtl DIR` (the RTL copied to another folder, as a
Vitis export would be) under Verilator: every task bit-exact, the per-layer table printed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from codesign.cli import main
from codesign.report import cycles
from codesign.sim.cocotb_runner import SimulatorMissing, find_verilator


def test_moe_parts_group_into_the_estimates_moe_layer():
    names = {"b1.moe", "b1.attn", "b0.mlp"}
    got = cycles.grouped_cycles({"b1.gate": 10, "b1.e0.fc1": 2, "b1.e7.fc2": 3, "b1.mlp": 5, "b1.attn": 7,
                                 "b0.mlp": 11}, names)
    assert got == {"b1.moe": 20, "b1.attn": 7, "b0.mlp": 11}


def test_rooflines_use_macs_and_bytes_of_each_layer():
    estimate = {"layers": [{"name": "a", "kind": "dense matmul", "macs": 1600, "ddr_bytes": 80, "cycles": 70,
                            "board_roofline": 50.0},
                           {"name": "b", "kind": "vector ops", "macs": 0, "ddr_bytes": 800, "cycles": 90,
                            "board_roofline": 80.0}]}
    rows = cycles.layer_rows(estimate, {"a": 200}, rtl_mpc=16)
    assert rows[0] == {"layer": "a", "kind": "dense matmul", "rtl_cycles": 200, "rtl_roofline": 100,
                       "rtl_ratio": 0.5, "est_cycles": 70, "board_roofline": 50}
    assert rows[1]["rtl_cycles"] is None and rows[1]["rtl_roofline"] == 100 and rows[1]["board_roofline"] == 80


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    try:
        find_verilator()
    except SimulatorMissing as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("e2e")
    rng = np.random.default_rng(0)
    np.save(root / "calib.npy", rng.standard_normal((4, 3, 32, 32)).astype(np.float32))
    proj = root / "proj"
    assert main(["generate", "default", "-o", str(proj), "--images", "1", "--calib", str(root / "calib.npy")]) == 0
    return proj


def test_embedded_model_cosim_of_foreign_rtl_dir_is_bit_exact_with_layer_table(project, capsys):
    vitis_like = project.parent / "export" / "verilog"
    shutil.copytree(project / "rtl", vitis_like)
    assert main(["cosim", str(project), "--rtl", str(vitis_like)]) == 0
    out = capsys.readouterr().out
    assert "PASS img0_task0 (task 0)" in out and "PASS img0_task1 (task 1)" in out
    assert "2 passed, 0 failed" in out
    assert "cycles per layer of img0_task0" in out
    rows = {r["layer"]: r for r in json.loads((project / "reports" / "cycles.json").read_text())["rows"]}
    for layer in ("b0.attn", "b1.moe", "b0.qkv"):
        assert rows[layer]["rtl_cycles"] >= rows[layer]["rtl_roofline"] > 0
    # the dense MATMULs run the 2x8 array near its peak
    assert rows["b0.qkv"]["rtl_ratio"] > 0.85


def test_kind_summary_sums_rooflines_and_cycles_per_kind():
    rows = [{"kind": "attention", "rtl_cycles": 200, "rtl_roofline": 150},
            {"kind": "attention", "rtl_cycles": 200, "rtl_roofline": 130},
            {"kind": "moe", "rtl_cycles": 100, "rtl_roofline": 80},
            {"kind": "vector ops", "rtl_cycles": None, "rtl_roofline": 5}]
    assert cycles.kind_summary(rows) == "RTL cycles vs the core's own roofline: attention 70%, moe 80%"
