"""Cycles per layer next to the estimate, and the CLI end to end on the embedded model.

`codesign generate default` + `codesign cosim --rtl DIR` (the RTL copied to another folder, as a
Vitis export would be) under Verilator: every task bit-exact, the per-layer table printed.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from codesign.cli import main
from codesign.report import cycles
from codesign.sim.cocotb_runner import SimulatorMissing, find_verilator
from codesign.testing import RTL_TWIN_ARG


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
    rows = cycles.layer_rows(estimate, {"a": 200}, rtl_mpc=16, rtl_bpc=8)
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
    assert main(["generate", "default", "-o", str(proj), "--images", "1", "--calib", str(root / "calib.npy"),
                 "--rtl-array", RTL_TWIN_ARG]) == 0
    return proj


def test_embedded_model_cosim_of_foreign_rtl_dir_is_bit_exact_with_layer_table(project, capsys):
    vitis_like = project.parent / "export" / "verilog"
    shutil.copytree(project / "rtl", vitis_like)
    assert main(["cosim", str(project), "--rtl", str(vitis_like)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "PASS img0_task0 (task 0)" in out and "PASS img0_task1 (task 1)" in out
    assert "2 passed, 0 failed" in out
    assert "cycles per layer of img0_task0" in out
    # progress on stderr: the build, then every vector with its cycles
    assert "cosim: building the verilator model of" in captured.err and "cosim: verilator build done in" in captured.err
    assert re.search(r"cosim: vector img0_task1 ok: [\d,]+ cycles, [\d.]+ s, [\d,]+ cycles/s", captured.err)
    report = json.loads((project / "reports" / "cycles.json").read_text())
    # the project's board (zcu104): 250 ns at 200 MHz, 19.2 GB/s * 0.7 / 200 MHz
    assert report["memory"] == {"model": "zcu104", "read_latency_cycles": 50, "read_latency_ns": 250.0,
                                "clock_mhz": 200.0, "bytes_per_cycle": 67.2}
    assert report["sim"]["cycles"] == sum(int(c) for c in re.findall(r"PASS \S+ \(task \d\): (\d+) cycles", out))
    assert report["sim"]["cycles_per_second"] > 1000
    assert "memory model: zcu104 DDR: read latency 50 cycles (250 ns at 200 MHz), 67.2 B/cycle" in \
        (project / "reports" / "cycles.txt").read_text()
    rows = {r["layer"]: r for r in report["rows"]}
    for layer in ("b0.attn", "b1.moe", "b0.qkv"):
        assert rows[layer]["rtl_cycles"] >= rows[layer]["rtl_roofline"] > 0
    # the dense MATMULs run the 2x32 twin near its peak
    assert rows["b0.qkv"]["rtl_ratio"] > 0.85


def test_kind_summary_sums_rooflines_and_cycles_per_kind():
    rows = [{"kind": "attention", "rtl_cycles": 200, "rtl_roofline": 150},
            {"kind": "attention", "rtl_cycles": 200, "rtl_roofline": 130},
            {"kind": "moe", "rtl_cycles": 100, "rtl_roofline": 80},
            {"kind": "vector ops", "rtl_cycles": None, "rtl_roofline": 5}]
    assert cycles.kind_summary(rows) == "RTL cycles vs the core's own roofline: attention 70%, moe 80%"


def test_report_states_the_memory_model_and_the_simulation_speed():
    from codesign.boards import load_board
    from codesign.sim.cosim import CosimResult, VectorResult
    from codesign.sim.memory import IDEAL, board_memory

    vectors = [VectorResult("a", 0, True, None, 300_000), VectorResult("b", 1, True, None, 100_000)]
    res = CosimResult("verilator", 12.0, vectors, memory=board_memory(load_board("pynq-z2")), sim_seconds=8.0)
    assert cycles.conditions(res) == {
        "memory": {"model": "pynq-z2", "read_latency_cycles": 30, "read_latency_ns": 300.0, "clock_mhz": 100.0,
                   "bytes_per_cycle": 14.7},
        "sim": {"cycles": 400_000, "seconds": 8.0, "cycles_per_second": 50_000}}
    assert cycles.conditions_text(res) == ("memory model: pynq-z2 DDR: read latency 30 cycles (300 ns at 100 MHz), "
                                           "14.7 B/cycle shared by all masters; simulated 400,000 cycles in 8.0 s "
                                           "(50,000 cycles/s)")
    assert board_memory(load_board("ultra96v2")).latency_cycles == 38     # 250 ns at 150 MHz, rounded up
    res = CosimResult("icarus", 1.0, vectors, memory=IDEAL)
    assert cycles.conditions(res)["memory"]["read_latency_cycles"] == 0 and res.cycles_per_second is None
    assert cycles.conditions_text(res) == ("memory model: ideal memory (no latency, unlimited bandwidth); "
                                           "simulated 400,000 cycles in 0.0 s")
