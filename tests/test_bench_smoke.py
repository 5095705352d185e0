"""benchmarks/bench.py on the default config, estimate only (no project, csim or cosim): keys and ratios."""
from __future__ import annotations

from codesign.testing import load_benchmark

import json
from types import SimpleNamespace

import pytest


ACCELERATOR_KEYS = {"board", "clock_mhz", "P", "Q", "macs_per_cycle", "board_peak_macs_per_cycle", "resources", "tasks",
                    "macs_per_image", "cycles_per_image", "cycles_per_task", "latency_ms_per_image",
                    "latency_ms_per_task", "gops", "macs_per_dsp_per_cycle", "array_utilisation",
                    "board_peak_fraction", "ddr_bytes_per_image", "roofline_cycles", "roofline_ratio"}
TOOL_KEYS = {"convert_seconds", "generate", "csim", "cosim", "peak_rss_mib"}
RATIO_KEYS = {"convert_s_per_mparam", "generate_s_per_mparam", "csim_run_s_per_gmac", "rss_growth_mib_per_mparam"}


def load_bench():
    return load_benchmark("bench.py")


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def report(bench):
    return bench.run_benchmark(["default"], board="zcu104", generate=False)


def test_report_is_json_with_the_expected_keys(report):
    report = json.loads(json.dumps(report))
    assert set(report) == {"meta", "configs", "references"}
    (config,) = report["configs"]
    assert config["name"] == "default"
    assert ACCELERATOR_KEYS <= set(config["accelerator"])
    assert TOOL_KEYS <= set(config["tools"])
    assert set(config["ratios"]) == RATIO_KEYS
    assert config["tools"]["generate"] is None and config["tools"]["cosim"] is None  # estimate only
    refs = report["references"]
    assert refs["setup"]["board"] == "zcu102" and refs["setup"]["clock_mhz"] == 300
    assert {r["name"]: r["ms_per_image"] for r in refs["rows"]} == {"Edge-MoE": 34.64, "UbiMoE": 25.76, "CoQMoE": 6.47}
    assert all(r["source"] for r in refs["rows"])


def test_ratios_are_in_unit_interval_and_bounds_consistent(report):
    acc = report["configs"][0]["accelerator"]
    assert 0 < acc["roofline_ratio"] <= 1
    assert 0 < acc["board_peak_fraction"] < acc["array_utilisation"] <= 1
    assert acc["cycles_per_image"] == sum(acc["cycles_per_task"])
    assert acc["macs_per_dsp_per_cycle"] == pytest.approx(
        acc["macs_per_image"] / (acc["cycles_per_image"] * acc["resources"]["dsp"]["used"]))
    assert report["configs"][0]["ratios"]["convert_s_per_mparam"] > 0
    kinds = acc["kinds"]  # the default model has every kind of layer
    assert set(kinds) == {"attention", "moe", "dense matmul", "vector ops"}
    assert all(0 < k["board_ratio"] <= k["ratio"] <= 1 and k["ratio"] == k["roofline"] / k["cycles"]
               for k in kinds.values())
    assert sum(k["cycles"] for k in kinds.values()) == acc["cycles_per_image"]


def test_tables_and_plot_render(bench, report, tmp_path):
    text = bench.report_text(report)
    assert "default" in text and "Edge-MoE" in text and "CoQMoE" in text and "not simulated" in text
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


def test_configs_and_cosim_configs_are_parsed_and_checked(bench):
    args = bench.parse_args(["--configs", "default", "--cosim", "--cosim-configs", "edge-moe-tiny"])
    assert args.configs == ("default",) and args.cosim_configs == ("edge-moe-tiny",)
    assert bench.parse_args([]).cosim_configs == ("default",)
    with pytest.raises(SystemExit):
        bench.parse_args(["--cosim-configs", "edge-moe-huge"])
