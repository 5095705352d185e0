"""Cycles and latency for compare's report: per vector from a cosim run, and the HLS estimate.

A cosim run leaves cosim.json beside its results/ folder (codesign.sim.cosim.run_cosim); its cycles
are the simulated RTL core's, which is sized for simulation (docs/UARCH.md), not the board's
array, so they are labelled as such. The estimate (PROJECT/reports/estimate.json) is the board
design's, for one task inference.
"""
from __future__ import annotations

import json
from pathlib import Path

TIMING_HEADER = ["source", "vector", "task", "cycles", "latency (ms)", "clock (MHz)"]


def result_timing(project_dir: Path, results_dir: Path, task_names: list[str]) -> list[dict]:
    """Rows of {source, vector, task, cycles, latency_ms, clock_mhz}; empty when neither is there."""
    estimate = _read_json(Path(project_dir) / "reports" / "estimate.json")
    clock = estimate.get("clock_mhz") if estimate else None
    rows = _cosim_rows(Path(results_dir), clock, task_names)
    if estimate and isinstance(estimate.get("cycles"), int):
        routing = estimate.get("routing", "")
        rows.append({"source": "HLS estimate, board design" + (f" ({routing})" if routing else ""), "vector": "-",
                     "task": "each", "cycles": estimate["cycles"], "latency_ms": estimate.get("latency_ms"),
                     "clock_mhz": clock})
    return rows


def _cosim_rows(results_dir: Path, clock: float | None, task_names: list[str]) -> list[dict]:
    run = _read_json(results_dir.parent / "cosim.json") if results_dir.name == "results" else None
    if not run or not isinstance(run.get("vectors"), list):
        return []
    source = f"cosim ({run.get('simulator', '?')}), RTL core"
    name = lambda t: task_names[t] if isinstance(t, int) and 0 <= t < len(task_names) else "-"  # noqa: E731
    return [{"source": source, "vector": v["id"], "task": name(v.get("task")), "cycles": v["cycles"],
             "latency_ms": v["cycles"] / (clock * 1e3) if clock else None, "clock_mhz": clock}
            for v in run["vectors"] if v.get("status") == "ok" and isinstance(v.get("cycles"), int)]


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def timing_rows(timing: list[dict]) -> list[list[str]]:
    def ms(value) -> str:
        return "—" if value is None else f"{value:.4f}"

    return [[r["source"], r["vector"], r["task"], f"{r['cycles']:,}", ms(r["latency_ms"]),
             "—" if r["clock_mhz"] is None else f"{r['clock_mhz']:g}"] for r in timing]
