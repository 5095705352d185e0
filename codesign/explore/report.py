"""pareto.json, points.csv, pareto.csv, the plots and the chosen point's generate command."""
from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path

from ..schedule.uarch import RESOURCES
from .store import write_atomic

BASE_COLUMNS = ["key", "board", "P", "Q", "weight_ports", "clock_mhz", "wbits", "abits", "per_layer", "accuracy",
                "latency_ms_per_task", *RESOURCES, *(f"{r}_board" for r in RESOURCES), "fits", "why_not",
                "on_front", "precision_key"]
CHOSEN_PRECISION = "chosen_precision.yaml"
CHOSEN_SCRIPT = "generate_chosen.sh"


def csv_rows(points: list[dict], front_keys: set[str]) -> tuple[list[str], list[dict]]:
    tasks = list(points[0]["tasks"]) if points else []
    cols = list(BASE_COLUMNS)
    for t in tasks:
        cols += [f"{t}_relative", f"{t}_metric", f"{t}_golden", f"{t}_float", f"{t}_latency_ms"]
    rows = []
    for p in points:
        row = {c: p.get(c) for c in BASE_COLUMNS}
        row["on_front"] = p["key"] in front_keys
        for t in tasks:
            a = p["tasks"][t]
            row.update({f"{t}_relative": a["relative"], f"{t}_metric": a["metric"], f"{t}_golden": a["golden"],
                        f"{t}_float": a["float"], f"{t}_latency_ms": p["latency_ms"].get(t)})
        rows.append(row)
    return cols, rows


def csv_text(points: list[dict], front_keys: set[str]) -> str:
    cols, rows = csv_rows(points, front_keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return buf.getvalue()


def generate_command(model_arg: str, p: dict, out_dir: Path, calib: str | None, config: str | None,
                     board_args: dict[str, str]) -> list[str]:
    """The `codesign generate` line that builds point `p`."""
    cmd = ["codesign", "generate", model_arg]
    if config:
        cmd += ["--config", config]
    cmd += ["--board", board_args.get(p["board"], p["board"])]
    if p["per_layer"]:  # its `default:` holds the global widths
        cmd += ["--precision", str(out_dir / CHOSEN_PRECISION)]
    else:
        cmd += ["--wbits", str(p["wbits"]), "--abits", str(p["abits"])]
    cmd += ["--array", f"{p['P']}x{p['Q']}", "--weight-ports", str(p["weight_ports"]), "--clock", f"{p['clock_mhz']:g}"]
    if calib:
        cmd += ["--calib", calib]
    return cmd + ["-o", str(out_dir / "chosen_project")]


def write_reports(out: Path, summary: dict, points: list[dict], front: list[dict], chosen: dict | None,
                  command: list[str] | None) -> list[Path]:
    keys = {p["key"] for p in front}
    written = []
    for name, text in (("points.csv", csv_text(points, keys)), ("pareto.csv", csv_text(front, keys)),
                       ("pareto.json", json.dumps({**summary, "front": front, "chosen": chosen,
                                                   "generate": command and shlex.join(command)}, indent=1))):
        write_atomic(out / name, text)
        written.append(out / name)
    if chosen is not None:
        if chosen["per_layer"]:
            write_atomic(out / CHOSEN_PRECISION, chosen["precision"])
        write_atomic(out / CHOSEN_SCRIPT, "#!/bin/sh\n# the point codesign explore chose; see pareto.json\n"
                     + shlex.join(command) + "\n")
        (out / CHOSEN_SCRIPT).chmod(0o755)
        written.append(out / CHOSEN_SCRIPT)
    for board in sorted({p["board"] for p in points}):
        path = out / f"accuracy_latency_{board}.png"
        write_atomic(path, plot_png([p for p in points if p["board"] == board],
                                    [p for p in front if p["board"] == board], chosen, board))
        written.append(path)
    if len({p["board"] for p in points}) > 1:
        write_atomic(out / "accuracy_latency.png", plot_png(points, front, chosen, "all boards"))
        written.append(out / "accuracy_latency.png")
    return written


MARKERS = "osD^vP*X"


def plot_png(points: list[dict], front: list[dict], chosen: dict | None, title: str) -> bytes:
    """Accuracy against latency, coloured by DSPs; the front ringed and joined, the chosen point starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(7.5, 5))
    fitting = [p for p in points if p["fits"] and p["latency_ms_per_task"] is not None]
    over = [p for p in points if not p["fits"] and p["latency_ms_per_task"] is not None]
    boards = sorted({p["board"] for p in points})
    if fitting:
        norm = Normalize(min(p["dsp"] for p in fitting), max(p["dsp"] for p in fitting))
        for i, board in enumerate(boards):
            ps = [p for p in fitting if p["board"] == board]
            if ps:
                sc = ax.scatter([p["latency_ms_per_task"] for p in ps], [p["accuracy"] for p in ps],
                                c=[p["dsp"] for p in ps], cmap="viridis", norm=norm, s=22,
                                marker=MARKERS[i % len(MARKERS)], label=board if len(boards) > 1 else None)
        fig.colorbar(sc, ax=ax, label="DSPs used")
    if over:
        ax.scatter([p["latency_ms_per_task"] for p in over], [p["accuracy"] for p in over], marker="x", s=14,
                   color="0.7", label="does not fit")
    if front:
        ax.scatter([p["latency_ms_per_task"] for p in front], [p["accuracy"] for p in front], s=80,
                   facecolors="none", edgecolors="red", linewidths=1.2, label="Pareto front")
        best = _accuracy_frontier(front)
        ax.step([p["latency_ms_per_task"] for p in best], [p["accuracy"] for p in best], where="post", color="red",
                linewidth=0.8)
    if chosen is not None and chosen in points:
        ax.scatter([chosen["latency_ms_per_task"]], [chosen["accuracy"]], marker="*", s=260, color="gold",
                   edgecolors="black", zorder=5, label="chosen")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # minor labels at 2x and 5x only, so that neighbours do not run into each other
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("latency per task inference (ms, estimate)")
    ax.set_ylabel("accuracy vs float (worst task; 1 = float)")
    ax.set_title(f"codesign explore: {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _accuracy_frontier(front: list[dict]) -> list[dict]:
    """The front's best accuracy reached at each latency (the staircase drawn in 2-D)."""
    out, best = [], float("-inf")
    for p in sorted(front, key=lambda p: p["latency_ms_per_task"]):
        if p["accuracy"] > best:
            out.append(p)
            best = p["accuracy"]
    return out
