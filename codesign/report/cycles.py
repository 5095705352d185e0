"""Simulated RTL cycles per layer next to the HLS estimate and both rooflines.

The estimate (reports/estimate.json) is computed for the routing of the project's first test
vector, so the comparison uses that vector's cosim cycles. Two rooflines are shown: the board's
(the estimate's MAC array and DDR) and the simulated core's own (its P x Q array, one 8-byte
AXI beat per cycle), because the RTL core is sized for simulation, not for the board.
"""
from __future__ import annotations

import json
import re
from pathlib import Path


RTL_BYTES_PER_CYCLE = 8  # one 64-bit AXI beat per cycle
REPORT_FILES = ("cycles.txt", "cycles.json")  # in PROJECT/reports
_MOE_PART = re.compile(r"^(b\d+)\.(gate|mlp|e\d+\.fc[12])$")


def board_roofline(macs: int, ddr_bytes: int, macs_per_cycle: int, bytes_per_cycle: float) -> float:
    return max(macs / macs_per_cycle, ddr_bytes / bytes_per_cycle)


def estimate_layer(cosim_name: str, estimate_names: set[str]) -> str:
    """The estimate's layer for a cosim layer name (an MoE layer's gate, experts and combine -> bN.moe)."""
    m = _MOE_PART.match(cosim_name)
    if m and f"{m.group(1)}.moe" in estimate_names:
        return f"{m.group(1)}.moe"
    return cosim_name


def grouped_cycles(layer_cycles: dict[str, int], estimate_names: set[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, cycles in layer_cycles.items():
        key = estimate_layer(name, estimate_names)
        out[key] = out.get(key, 0) + cycles
    return out


def rtl_macs_per_cycle(rtl_dir: Path) -> int | None:
    from ..rtl.synth import rtl_core_shape

    shape = rtl_core_shape(rtl_dir)
    return shape[0] * shape[1] if shape else None


def layer_rows(estimate: dict, rtl_cycles: dict[str, int], rtl_mpc: int) -> list[dict]:
    """One row per estimate layer: RTL cycles, the core's roofline and ratio, the board estimate and roofline."""
    rows = []
    for layer in estimate["layers"]:
        rtl_bytes = layer.get("isa_ddr_bytes") or layer["ddr_bytes"]  # the core moves what the ISA says
        rtl_roof = board_roofline(layer["macs"], rtl_bytes, rtl_mpc, RTL_BYTES_PER_CYCLE)
        cycles = rtl_cycles.get(layer["name"])
        rows.append({"layer": layer["name"], "kind": layer["kind"], "rtl_cycles": cycles,
                     "rtl_roofline": round(rtl_roof), "rtl_ratio": (rtl_roof / cycles) if cycles else None,
                     "est_cycles": layer["cycles"], "board_roofline": round(layer["board_roofline"])})
    return rows


def format_rows(rows: list[dict], vector: str, rtl_mpc: int, board_pq: str) -> str:
    head = (f"{'layer':<10}{'RTL cycles':>12}{'RTL roof':>10}{'roof/RTL':>9}"
            f"{'HLS est':>10}{'board roof':>11}")
    lines = [f"cycles per layer of {vector}: RTL core {rtl_mpc} MACs/cycle + 8 B/cycle AXI; "
             f"HLS estimate on the board's {board_pq} array", head, "-" * len(head)]
    for r in rows:
        ratio = f"{100 * r['rtl_ratio']:.0f}%" if r["rtl_ratio"] else "-"
        cyc = f"{r['rtl_cycles']:,}" if r["rtl_cycles"] is not None else "-"
        lines.append(f"{r['layer']:<10}{cyc:>12}{r['rtl_roofline']:>10,}{ratio:>9}"
                     f"{r['est_cycles']:>10,}{r['board_roofline']:>11,}")
    return "\n".join(lines)


def cycles_report(project_dir: Path, cosim_result, rtl_dir: Path | None = None) -> str | None:
    """The per-layer table for the first vector the estimate describes, or None when not available
    (no estimate, no instruction trace, e.g. a Vitis-exported RTL)."""
    project_dir = Path(project_dir)
    est_path = project_dir / "reports" / "estimate.json"
    rtl_mpc = rtl_macs_per_cycle(Path(rtl_dir) if rtl_dir else project_dir / "rtl")
    traced = [v for v in cosim_result.vectors if v.layer_cycles]
    # generate computes the estimate for the first image's task 0 routing
    vec = next((v for v in traced if v.id == "img0_task0"), traced[0] if traced else None)
    if not est_path.exists() or rtl_mpc is None or vec is None:
        return None
    estimate = json.loads(est_path.read_text())
    names = {layer["name"] for layer in estimate["layers"]}
    rows = layer_rows(estimate, grouped_cycles(vec.layer_cycles, names), rtl_mpc)
    t = estimate["tiling"]
    table = "\n".join([format_rows(rows, vec.id, rtl_mpc, f"{t['P']}x{t['Q']}"), kind_summary(rows),
                       conditions_text(cosim_result)])
    (project_dir / "reports").mkdir(exist_ok=True)
    payload = {"vector": vec.id, "rows": rows, **conditions(cosim_result)}
    (project_dir / "reports" / "cycles.json").write_text(json.dumps(payload, indent=1))
    (project_dir / "reports" / "cycles.txt").write_text(table + "\n")
    return table


def conditions(cosim_result) -> dict:
    """What the cycles were measured with: the memory model (read latency in cycles and ns, bytes
    per cycle; null: unlimited) and the simulator's speed over all runs."""
    memory = getattr(cosim_result, "memory", None)
    sim = cosim_result.sim_json() if hasattr(cosim_result, "sim_json") else None
    return {"memory": memory.to_json() if memory else None, "sim": sim}


def conditions_text(cosim_result) -> str:
    memory = getattr(cosim_result, "memory", None)
    parts = [f"memory model: {memory.describe()}" if memory else "memory model: unknown"]
    if hasattr(cosim_result, "speed_text"):
        parts.append(cosim_result.speed_text())
    return "; ".join(parts)


def kind_summary(rows: list[dict]) -> str:
    """One line: the RTL core's roofline / cycles summed per layer kind."""
    sums: dict[str, list[float]] = {}
    for r in rows:
        if r["rtl_cycles"]:
            acc = sums.setdefault(r["kind"], [0.0, 0.0])
            acc[0] += r["rtl_roofline"]
            acc[1] += r["rtl_cycles"]
    parts = [f"{kind} {100 * roof / cyc:.0f}%" for kind, (roof, cyc) in sums.items()]
    return "RTL cycles vs the core's own roofline: " + ", ".join(parts)


def clear_cycles_report(project_dir: Path) -> None:
    """Before a cosim run (api.cosim): an earlier run's table would pass for this run's."""
    for name in REPORT_FILES:
        (Path(project_dir) / "reports" / name).unlink(missing_ok=True)
