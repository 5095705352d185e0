"""Simulated RTL cycles per layer next to the HLS estimate and both rooflines.

The estimate (reports/estimate.json) is computed for the routing of the project's first test
vector, so the comparison uses that vector's cosim cycles. Two rooflines are shown: the board's
(the estimate's MAC array and DDR) and the simulated core's own (its P x Q array and bus).

`est_cycles`: the estimate run at the core's own Uarch (rtl/rtl.json: its P x Q, weight masters,
bus, bank) and the cosim's memory model, with the board's next to it (`board_est_cycles`); without
a board (project.json) it is the board tiling's. Top level: `rtl_array`, `board_array` and `est_array` (where est_cycles was computed).
"""
from __future__ import annotations

import json
import re
from pathlib import Path


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


def layer_rows(estimate: dict, rtl_cycles: dict[str, int], rtl_mpc: int, rtl_bpc: float,
               rtl_est: dict[str, int] | None = None) -> list[dict]:
    """One row per estimate layer: RTL cycles, the core's roofline and ratio, the board estimate and
    roofline; with `rtl_est` (layer -> cycles of the estimate at the RTL's Uarch) est_cycles is
    that, beside board_est_cycles and rtl_over_est."""
    rows = []
    for layer in estimate["layers"]:
        rtl_bytes = layer.get("isa_ddr_bytes") or layer["ddr_bytes"]  # the core moves what the ISA says
        rtl_roof = board_roofline(layer["macs"], rtl_bytes, rtl_mpc, rtl_bpc)
        cycles = rtl_cycles.get(layer["name"])
        row = {"layer": layer["name"], "kind": layer["kind"], "rtl_cycles": cycles,
               "rtl_roofline": round(rtl_roof), "rtl_ratio": (rtl_roof / cycles) if cycles else None,
               "est_cycles": layer["cycles"], "board_roofline": round(layer["board_roofline"])}
        if rtl_est is not None:
            est = rtl_est.get(layer["name"])
            row.update(est_cycles=est, board_est_cycles=layer["cycles"],
                       rtl_over_est=cycles / est if cycles is not None and est else None)
        rows.append(row)
    return rows


def format_rows(rows: list[dict], vector: str, rtl_mpc: int, board_pq: str, rtl_bpc: float,
                est_pq: str | None = None) -> str:
    """est_pq: the RTL's array when est_cycles is the estimate there (else the board's)."""
    head = (f"{'layer':<10}{'RTL cycles':>12}{'RTL roof':>10}{'roof/RTL':>9}"
            f"{'HLS est':>10}{'board roof':>11}" + (f"{'RTL/est':>9}" if est_pq else ""))
    where = (f"estimate at the RTL's own {est_pq} Uarch and memory model (the board's {board_pq} array in "
             f"cycles.json board_est_cycles)" if est_pq else f"HLS estimate on the board's {board_pq} array")
    lines = [f"cycles per layer of {vector}: RTL core {rtl_mpc} MACs/cycle + {rtl_bpc:g} B/cycle AXI; {where}",
             head, "-" * len(head)]
    for r in rows:
        ratio = f"{100 * r['rtl_ratio']:.0f}%" if r["rtl_ratio"] else "-"
        cyc = f"{r['rtl_cycles']:,}" if r["rtl_cycles"] is not None else "-"
        est = f"{r['est_cycles']:,}" if r["est_cycles"] is not None else "-"
        vs = (f"{r['rtl_over_est']:>9.2f}" if r.get("rtl_over_est") else f"{'-':>9}") if est_pq else ""
        lines.append(f"{r['layer']:<10}{cyc:>12}{r['rtl_roofline']:>10,}{ratio:>9}"
                     f"{est:>10}{r['board_roofline']:>11,}{vs}")
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
    rtl = Path(rtl_dir) if rtl_dir else project_dir / "rtl"
    arrays = array_names(estimate, rtl)
    rtl_est, rtl_bpc = rtl_estimate_layers(project_dir, rtl, cosim_result, estimate)
    rows = layer_rows(estimate, grouped_cycles(vec.layer_cycles, names), rtl_mpc, rtl_bpc, rtl_est)
    est_pq = arrays["rtl_array"] if rtl_est is not None else None
    table = "\n".join([format_rows(rows, vec.id, rtl_mpc, arrays["board_array"], rtl_bpc, est_pq),
                       kind_summary(rows), conditions_text(cosim_result)])
    (project_dir / "reports").mkdir(exist_ok=True)
    payload = {"vector": vec.id, **arrays, "est_array": est_pq or arrays["board_array"], "rows": rows,
               **conditions(cosim_result)}
    (project_dir / "reports" / "cycles.json").write_text(json.dumps(payload, indent=1))
    (project_dir / "reports" / "cycles.txt").write_text(table + "\n")
    return table


def array_names(estimate: dict, rtl_dir: Path) -> dict:
    """'PxQ' of the RTL (codesign.rtl.synth.rtl_array: its record, else its core file) and of the
    board's tiling, and the RTL's core ("uarch", or null for foreign RTL)."""
    from ..rtl.project import read_record
    from ..rtl.synth import rtl_array

    t = estimate["tiling"]
    rec = read_record(rtl_dir) or {}
    return {"rtl_core": rec.get("core"), "rtl_array": rtl_array(rtl_dir), "board_array": f"{t['P']}x{t['Q']}"}


def rtl_estimate_layers(project_dir: Path, rtl_dir: Path, cosim_result, estimate: dict):
    """(layer -> cycles of the estimate at the core's own Uarch and the cosim's memory, or None
    without a board; the core's AXI bytes per cycle: its buses, capped by the memory model's)."""
    from ..rtl.project import read_record, rtl_estimate

    memory = getattr(cosim_result, "memory", None)
    est = rtl_estimate(project_dir, rtl_dir, memory, estimate.get("expert_counts"))
    rec = read_record(rtl_dir)
    buses = 1 + rec["weight_ports"] if rec["weight_ports"] > 1 else 1   # W = 1: weights share gmem
    bpc = buses * rec["axi_bits"] / 8
    if memory is not None and memory.bytes_per_cycle is not None:
        bpc = min(bpc, memory.bytes_per_cycle)
    return ({layer.name: layer.cycles for layer in est.layers} if est is not None else None), bpc


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
