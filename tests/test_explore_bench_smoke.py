"""benchmarks/explore_bench.py on the default config, quick sweep: the figures are there and consistent."""
from __future__ import annotations

from codesign.testing import load_benchmark

import json



def load_bench():
    return load_benchmark("explore_bench.py")


def test_quick_explore_benchmark_reports_points_per_minute():
    bench = load_bench()
    report = json.loads(json.dumps(bench.run_benchmark(["default"], workers=1, quick=True)))
    (c,) = report["configs"]
    assert c["name"] == "default" and c["precisions"] == 1
    # 2 automatic arrays per board, each costed on both boards: 2 to 4 shapes
    assert c["points"] in (4, 6, 8) and c["points_per_minute"] > 0
    assert c["resumed_evaluated"] == 0  # the second run found every point in results.jsonl
    assert c["generate_seconds"] > 0 and c["worker_seconds_per_point"] > 0
    assert c["points_per_minute"] == 60 * c["points"] / c["sweep_seconds"]
    text = bench.report_text(report)
    assert "points/min" in text and "default" in text
