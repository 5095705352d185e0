"""benchmarks/bench.py on the default config, estimate only (no project, csim or cosim): keys and ratios."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"

ACCELERATOR_KEYS = {"board", "clock_mhz", "P", "Q", "macs_per_cycle", "tasks", "macs_per_image", "cycles_per_image",
                    "latency_ms_per_image", "latency_ms_per_task", "mac_utilisation", "ddr_bytes_per_image",
                    "roofline_compute_cycles", "roofline_bandwidth_cycles", "roofline_cycles", "roofline_ratio"}
TOOL_KEYS = {"convert_seconds", "generate", "csim", "cosim", "peak_rss_mib"}
RATIO_KEYS = {"convert_s_per_mparam", "generate_s_per_mparam", "csim_run_s_per_gmac", "rss_growth_mib_per_mparam"}


def load_bench():
    spec = importlib.util.spec_from_file_location("codesign_bench", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def report(bench):
    return bench.run_benchmark(["default"], board="zcu104", generate=False)


def test_report_is_json_with_the_expected_keys(report):
    report = json.loads(json.dumps(report))
    assert set(report) == {"meta", "configs", "reference"}
    (config,) = report["configs"]
    assert config["name"] == "default"
    assert ACCELERATOR_KEYS <= set(config["accelerator"])
    assert TOOL_KEYS <= set(config["tools"])
    assert set(config["ratios"]) == RATIO_KEYS
    assert config["tools"]["generate"] is None and config["tools"]["cosim"] is None  # estimate only
    assert {"name", "ms_per_image", "board", "clock_mhz", "source"} <= set(report["reference"])
    assert "published" in report["reference"]["name"]


def test_ratios_are_in_unit_interval_and_bounds_consistent(report):
    acc = report["configs"][0]["accelerator"]
    assert 0 < acc["roofline_ratio"] <= 1
    assert 0 < acc["mac_utilisation"] <= 1
    compute, bandwidth = acc["roofline_compute_cycles"], acc["roofline_bandwidth_cycles"]
    assert max(compute, bandwidth) <= acc["roofline_cycles"] + 1e-6 <= compute + bandwidth + 1e-6
    assert acc["cycles_per_image"] == sum(acc["cycles_per_task"])
    assert report["configs"][0]["ratios"]["convert_s_per_mparam"] > 0
    kinds = acc["kinds"]  # the default model has every kind of layer
    assert set(kinds) == {"attention", "moe", "dense matmul", "vector ops"}
    assert all(0 < k["ratio"] <= 1 and k["ratio"] == k["board_roofline"] / k["cycles"] for k in kinds.values())
    assert sum(k["cycles"] for k in kinds.values()) == acc["cycles_per_image"]


def test_tables_and_plot_render(bench, report, tmp_path):
    text = bench.report_text(report)
    assert "default" in text and "Edge-MoE" in text and "not simulated" in text
    bench.plot(report, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_cosim_cycles_are_read_from_dict_or_records(bench):
    as_dict = SimpleNamespace(cycles={"img0_task0": 10, "img0_task1": 12})
    as_records = SimpleNamespace(vectors=[{"id": "img0_task0", "cycles": 10}, SimpleNamespace(id="img0_task1",
                                                                                              cycles=12)])
    for result in (as_dict, as_records):
        assert bench.cycles_per_image(bench.cosim_vector_cycles(result)) == {0: 22}
    assert bench.cosim_vector_cycles(SimpleNamespace()) == {}
    timed_out = SimpleNamespace(runs=[{"name": "img0_task0", "cycles": 99, "status": "timeout"}])
    assert bench.cosim_vector_cycles(timed_out) == {}
