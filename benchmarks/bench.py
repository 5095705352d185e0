"""Benchmark of the codesign flow on M3ViT models: accelerator figures and tool cost.

    python benchmarks/bench.py [--out DIR] [--quick | --configs A,B] [--board zcu104]
                               [--cosim [--cosim-configs A,B] [--rtl-array PxQ]] [--keep-projects]

Per config (random weights, calibrated on a few random images):
* accelerator (analytical estimate, codesign.schedule.estimate): cycles, latency, MAC-array
  utilisation and DDR bytes per image, the board roofline (compute and bandwidth bounds) and
  roofline / estimate; with --cosim, for the --cosim-configs (default: the default config; e.g.
  edge-moe-tiny for the peers' model at the board's array), RTL cycles measured by cocotb, as ms
  per task at the board clock and, per layer kind, over the estimate at the RTL's own Uarch
  (reports/cycles.json; the docs/UARCH.md core only).
* tool: wall time of convert (quantise + compile + tile), generate (project writing), csim
  (g++ build + run; default and m3vit-tiny only) and cosim, and peak RSS, with ratios per million
  parameters / GMAC.
A reference row gives the published Edge-MoE latency next to our estimate for the same model,
board and clock. Writes bench.json and bench.png to --out; timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from codesign import api  # noqa: E402
from codesign.boards import Board, load_board  # noqa: E402
from codesign.model.config import ModelConfig  # noqa: E402
from codesign.rtl.render import RTL_RECORD  # noqa: E402
from codesign.model.m3vit import M3ViT  # noqa: E402
from codesign.model.zoo import M3VIT_CONFIGS  # noqa: E402
from codesign.schedule.estimate import KINDS, Estimate  # noqa: E402
from codesign.schedule.tiling import choose_tiling  # noqa: E402

# ViT-tiny / ViT-small backbones at 224x224 with an MoE MLP (16 experts top-2, expert width 4 x dim) in
# every odd block, and the linear heads.
M3VIT_TINY = ModelConfig(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0,
                         moe_mlp_ratio=4.0, num_experts=16, top_k=2, moe_blocks=tuple(range(1, 12, 2)))
M3VIT_SMALL = dataclasses.replace(M3VIT_TINY, embed_dim=384, num_heads=12)
# The models VITA-Group/M3ViT trains (codesign.model.zoo): PASCAL-Context and NYUD-v2 with ViT-small,
# Cityscapes with ViT-tiny at 128x256, which is also the model Edge-MoE runs.
CONFIGS = {"default": ModelConfig(), "m3vit-tiny": M3VIT_TINY, "m3vit-small": M3VIT_SMALL, **M3VIT_CONFIGS,
           "edge-moe-tiny": M3VIT_CONFIGS["cityscapes-tiny"]}
QUICK_CONFIGS = ("default", "m3vit-tiny", "edge-moe-tiny")
REFERENCE_CONFIG = "edge-moe-tiny"  # the model the published peers ran

# Published figures, not measured here: M3ViT-tiny (128x256 image, 129 tokens, dim 192, 12 blocks,
# 3 heads, 16 experts top-2) on a ZCU102 at 300 MHz, as the UbiMoE and CoQMoE papers tabulate them.
REFERENCES = (
    {"name": "Edge-MoE", "ms_per_image": 34.64, "precision": "hand-written HLS", "dsp": None,
     "source": "Sarkar et al., ICCAD 2023 (arXiv:2305.18691), as tabulated by UbiMoE and CoQMoE"},
    {"name": "UbiMoE", "ms_per_image": 25.76, "precision": "W16A32", "dsp": None,
     "source": "UbiMoE paper, its comparison table"},
    {"name": "CoQMoE", "ms_per_image": 6.47, "precision": "INT8", "dsp": 1754, "watts": 9.83,
     "source": "CoQMoE paper, its comparison table (0.37 MACs per DSP per cycle)"},
)
REFERENCE_SETUP = {"model": "m3vit-tiny at 128x256 (Edge-MoE's Cityscapes model)", "board": "zcu102",
                   "clock_mhz": 300.0}

CALIBRATION_IMAGES = 2
VECTOR_IMAGES = 1
SEED = 0


# ---------------------------------------------------------------- helpers

def timed(fn, *args, **kwargs):
    """(fn's result, wall seconds)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def peak_rss_mib() -> dict[str, float]:
    """Peak resident memory so far (Linux ru_maxrss is in KiB): this process, and its waited-for children."""
    kib = {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}
    return {k: v / 1024 for k, v in kib.items()}


# This process's peak RSS once torch and codesign are imported: the base the tool's growth is measured from.
BASELINE_RSS_MIB = peak_rss_mib()["self"]


def ratio(numerator, denominator) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def random_model(cfg: ModelConfig, seed: int = SEED) -> M3ViT:
    torch.manual_seed(seed)
    return M3ViT(cfg).eval()


def random_images(cfg: ModelConfig, count: int, seed: int = SEED) -> np.ndarray:
    shape = (count, cfg.in_chans, *cfg.image_hw)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def parameter_count(model: M3ViT) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- accelerator figures

def convert_design(cfg: ModelConfig, board: Board) -> tuple[api.Design, float]:
    """A random-weight design through the public API, and the seconds convert() took."""
    model = random_model(cfg)
    return timed(api.convert, model, board, calib=random_images(cfg, CALIBRATION_IMAGES))


def task_estimates(design: api.Design, image: np.ndarray, board: Board | None = None) -> list[Estimate]:
    """One estimate per task for one image (routing from the golden model); each task is one run."""
    if board is not None and board != design.board:
        design = dataclasses.replace(design, board=board, tiling=choose_tiling(design.prog, board))
    return [design.estimate(image[None], task) for task in range(design.qm.cfg.num_tasks)]


def image_figures(estimates: list[Estimate]) -> dict:
    """Per task and per image (all tasks: one backbone run each) from the per-task estimates."""
    e0, tasks = estimates[0], len(estimates)
    cycles = [e.cycles for e in estimates]
    macs = sum(e.totals["macs"] for e in estimates)
    per_ms = e0.clock_mhz * 1e3
    roofline = sum(e.roofline_cycles for e in estimates)
    return {
        "tasks": tasks,
        "macs_per_image": macs,
        "cycles_per_image": sum(cycles),
        "cycles_per_task": cycles,
        "latency_ms_per_task": sum(cycles) / tasks / per_ms,
        "latency_ms_per_image": sum(cycles) / per_ms,
        "gops": 2 * macs / (sum(cycles) / per_ms * 1e6),
        "macs_per_dsp_per_cycle": macs / (sum(cycles) * e0.dsp_used),
        "array_utilisation": macs / (e0.peak_macs_per_cycle * sum(cycles)),
        "board_peak_fraction": macs / (e0.board_peak_macs_per_cycle * sum(cycles)),
        "ddr_bytes_per_image": sum(e.totals["ddr_bytes"] for e in estimates),
        "weight_bytes_per_image": sum(e.totals["weight_bytes"] for e in estimates),
        "roofline_cycles": roofline,
        "roofline_ratio": roofline / sum(cycles),
        "kinds": kind_ratios(estimates),
    }


def kind_ratios(estimates: list[Estimate]) -> dict[str, dict]:
    """Per layer kind over all tasks: estimated cycles, the array's and the board's rooflines."""
    out = {}
    for kind in KINDS:
        ks = [k for e in estimates for k in e.kinds if k.kind == kind]
        cycles = sum(k.cycles for k in ks)
        if cycles:
            roof, board = sum(k.roofline for k in ks), sum(k.board_roofline for k in ks)
            out[kind] = {"cycles": cycles, "roofline": roof, "ratio": roof / cycles, "board_roofline": board,
                         "board_ratio": board / cycles}
    return out


def accelerator_figures(design: api.Design, image: np.ndarray) -> dict:
    t, estimates = design.tiling, task_estimates(design, image)
    return {"board": design.board.name, "clock_mhz": design.board.clock_mhz, "P": t.P, "Q": t.Q,
            "macs_per_cycle": t.macs_per_cycle, "board_peak_macs_per_cycle": estimates[0].board_peak_macs_per_cycle,
            "resources": {r: {"used": t.used[r], "board": getattr(design.board.resources, r)} for r in t.used},
            **image_figures(estimates)}


# ---------------------------------------------------------------- project, csim, cosim

def write_hls_only_project(design: api.Design, out: Path, images: int) -> None:
    """data/ + HLS C++ (all csim needs), for when the RTL renderer (codesign.sim.cosim) is unavailable."""
    from codesign.emit.data import Vector, write_data_dir
    from codesign.emit.hls import render_hls
    from codesign.quant.quantize import quantize_input

    x_q = quantize_input(api.vector_data(design.qm.cfg, images).images, design.qm)
    vectors = [Vector(f"img{i}_task{t}", t, x_q[i]) for i in range(images) for t in range(design.qm.cfg.num_tasks)]
    write_data_dir(out / "data", design.prog, design.qm, vectors)
    render_hls(out, design.prog, design.board, design.uarch())


def generate_project(design: api.Design, out: Path, images: int = VECTOR_IMAGES,
                     rtl_array: tuple[int, int] | None = None) -> dict:
    """Write the project with api.generate (HLS + RTL, the RTL at `rtl_array` when given); if that
    fails (the RTL renderer in codesign.sim.cosim is unfinished), write the HLS-only project csim
    needs and say why."""
    try:
        _, seconds = timed(api.generate, design, out, images=images, force=True, rtl_array=rtl_array)
        return {"seconds": seconds, "kind": "full (HLS + RTL)"}
    except Exception as exc:  # noqa: BLE001 - any RTL failure degrades to HLS only; HLS errors re-raise below
        _, seconds = timed(write_hls_only_project, design, out, images)
        return {"seconds": seconds, "kind": f"HLS only ({one_line(exc)})"}


def csim_figures(project: Path) -> dict:
    from codesign.sim.csim import CsimError

    start = time.perf_counter()
    try:
        res = api.csim(project)
    except CsimError as exc:
        return {"ok": False, "error": str(exc), "seconds": time.perf_counter() - start}
    return {"ok": res.ok, "passed": len(res.passed), "failed": len(res.failed), "build_seconds": res.build_seconds,
            "run_seconds": res.run_seconds, "seconds": time.perf_counter() - start}


_VECTOR_ID = re.compile(r"^img(?P<image>\d+)_task(?P<task>\d+)$")


def cosim_vector_cycles(result) -> dict[str, int]:
    """Vector id -> RTL cycles from a CosimResult (a dict attribute, or a list of per-vector records)."""
    for attr in ("cycles", "vector_cycles"):
        value = getattr(result, attr, None)
        if isinstance(value, dict):
            return {str(k): int(v) for k, v in value.items() if v is not None}
    for attr in ("vectors", "runs", "results"):
        records = getattr(result, attr, None)
        if isinstance(records, dict):
            records = [{"id": k, **(v if isinstance(v, dict) else vars(v))} for k, v in records.items()]
        if isinstance(records, list):
            cycles = {_record_id(r): _record_cycles(r) for r in records}
            return {k: v for k, v in cycles.items() if k is not None and v is not None}
    return {}


def _record_field(record, *names):
    for name in names:
        value = record.get(name) if isinstance(record, dict) else getattr(record, name, None)
        if value is not None:
            return value
    return None


def _record_id(record) -> str | None:
    value = _record_field(record, "id", "name", "vector")
    return None if value is None else str(value)


def _record_cycles(record) -> int | None:
    """Cycles of a finished run; a run that timed out or was skipped has no meaningful count."""
    value, status = _record_field(record, "cycles"), _record_field(record, "status")
    return None if value is None or status not in (None, "ok", "pass", "passed") else int(value)


def cycles_per_image(vector_cycles: dict[str, int]) -> dict[int, int]:
    """Image index -> RTL cycles summed over its tasks."""
    per_image: dict[int, int] = {}
    for vid, cycles in vector_cycles.items():
        m = _VECTOR_ID.match(vid)
        if m:
            per_image[int(m["image"])] = per_image.get(int(m["image"]), 0) + cycles
    return per_image


def not_simulated(reason: str, seconds: float = 0.0) -> dict:
    return {"simulated": False, "reason": reason, "seconds": seconds}


def cosim_figures(design: api.Design, project: Path, simulator: str) -> dict:
    """RTL cycles per image from cosim, against the estimate and roofline of the same images and
    tasks, and per layer kind from reports/cycles.json (the estimate at the RTL's own Uarch)."""
    start = time.perf_counter()
    try:
        result = api.cosim(project, simulator)
        api.cycles_report(project, result)
    except Exception as exc:  # the module is in progress: any failure means "not simulated"
        return not_simulated(one_line(exc), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    measured = cycles_per_image(cosim_vector_cycles(result))
    if not measured:
        return not_simulated("cosim returned no per-vector cycles", seconds)
    return {"simulated": True, "simulator": simulator, "seconds": seconds,
            "all_passed": bool(getattr(result, "all_passed", False)),
            **measured_vs_model(design, project, measured)}


def rtl_array(project: Path) -> dict:
    """What the project's RTL was built as (rtl/rtl.json, written by the renderer); never the board
    tiling's array, which the RTL need not have."""
    return json.loads((project / "rtl" / RTL_RECORD).read_text())


def cycles_json(project: Path) -> dict:
    """reports/cycles.json of the last cosim ({} when there is none: no trace, no estimate)."""
    path = project / "reports" / "cycles.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def kind_cycles(cycles: dict) -> dict[str, dict]:
    """Per layer kind of a cycles.json: RTL cycles, estimate cycles (at its est_array) and RTL / estimate,
    over the rows that have both."""
    out: dict[str, dict] = {}
    for r in cycles.get("rows", []):
        if r["rtl_cycles"] is None or r["est_cycles"] is None:
            continue
        k = out.setdefault(r["kind"], {"rtl_cycles": 0, "est_cycles": 0})
        k["rtl_cycles"] += r["rtl_cycles"]
        k["est_cycles"] += r["est_cycles"]
    for k in out.values():
        k["rtl_over_est"] = ratio(k["rtl_cycles"], k["est_cycles"])
    return out


def rtl_over_estimate(cycles: dict) -> float | None:
    """All rows' RTL cycles over the estimate at the RTL's own array; None when the estimate is not
    there (the legacy core: cycles.json's est_array is the board's)."""
    if not cycles or cycles.get("est_array") != cycles.get("rtl_array"):
        return None
    kinds = kind_cycles(cycles).values()
    return ratio(sum(k["rtl_cycles"] for k in kinds), sum(k["est_cycles"] for k in kinds))


def measured_vs_model(design: api.Design, project: Path, measured: dict[int, int]) -> dict:
    """RTL cycles (per image, all tasks) against the board estimate and the estimate at the RTL's array."""
    images = api.vector_data(design.qm.cfg, max(measured) + 1).images
    rtl = rtl_array(project)
    board_est = [image_figures(task_estimates(design, images[i])) for i in measured]
    per_layer = cycles_json(project)
    cycles = float(np.mean(list(measured.values())))
    per_ms = design.board.clock_mhz * 1e3
    macs = float(np.mean([f["macs_per_image"] for f in board_est]))
    board_peak = board_est[0]["cycles_per_image"] and design.board.resources.dsp * design.tiling.macs_per_dsp
    return {"rtl_array": f"{rtl['P']}x{rtl['Q']}", "rtl_cycles_per_image": cycles,
            "rtl_ms_per_image": cycles / per_ms, "rtl_ms_per_task": cycles / design.qm.cfg.num_tasks / per_ms,
            "rtl_board_peak_fraction": macs / (board_peak * cycles),
            "rtl_core": rtl["core"], "est_array": per_layer.get("est_array"),
            "rtl_over_estimate": rtl_over_estimate(per_layer),
            "kinds": kind_cycles(per_layer) if rtl_over_estimate(per_layer) is not None else {},
            "estimate_board_array_cycles_per_image": float(np.mean([f["cycles_per_image"] for f in board_est]))}


# ---------------------------------------------------------------- one config

@dataclasses.dataclass(frozen=True)
class Stages:
    generate: bool = True
    csim: bool = True
    cosim: bool = False
    simulator: str = "verilator"
    rtl_array: tuple[int, int] | None = None  # the RTL's array (None: the board tiling's)


def bench_config(name: str, design: api.Design, convert_seconds: float, stages: Stages, work_dir: Path) -> dict:
    cfg = design.qm.cfg
    image = api.vector_data(cfg, VECTOR_IMAGES).images[0]
    result = {"name": name, "model": cfg.to_dict(), "params": parameter_count(design.model),
              "weight_blob_bytes": len(design.prog.wgt), "instructions": len(design.prog.instrs),
              "accelerator": accelerator_figures(design, image),
              "tools": {"convert_seconds": convert_seconds}}
    result["tools"].update(project_stages(design, stages, work_dir / name))
    result["tools"]["peak_rss_mib"] = peak_rss_mib()
    result["ratios"] = tool_ratios(result)
    return result


def project_stages(design: api.Design, stages: Stages, project: Path) -> dict:
    out: dict = {"generate": None, "csim": None, "cosim": None}
    if not stages.generate:
        return out
    out["generate"] = generate_project(design, project, rtl_array=stages.rtl_array)
    if stages.csim:
        out["csim"] = csim_figures(project)
    if stages.cosim:
        has_rtl = out["generate"]["kind"].startswith("full")
        out["cosim"] = (cosim_figures(design, project, stages.simulator) if has_rtl
                        else not_simulated(f"the project has no RTL: {out['generate']['kind']}"))
    return out


def tool_ratios(result: dict) -> dict:
    mparams = result["params"] / 1e6
    gmac = result["accelerator"]["macs_per_image"] / 1e9
    tools = result["tools"]
    csim = tools.get("csim") or {}
    return {
        "convert_s_per_mparam": ratio(tools["convert_seconds"], mparams),
        "generate_s_per_mparam": ratio((tools.get("generate") or {}).get("seconds"), mparams),
        "csim_run_s_per_gmac": ratio(csim.get("run_seconds"), gmac * VECTOR_IMAGES),
        "rss_growth_mib_per_mparam": ratio(tools["peak_rss_mib"]["self"] - BASELINE_RSS_MIB, mparams),
    }


# ---------------------------------------------------------------- published references

def references(tiny_design: api.Design | None) -> dict:
    """The published peers, next to our estimate for the same model on the same board and clock."""
    out = {"setup": REFERENCE_SETUP, "rows": [dict(r) for r in REFERENCES]}
    if tiny_design is None:
        return out
    board = dataclasses.replace(load_board(REFERENCE_SETUP["board"]), clock_mhz=REFERENCE_SETUP["clock_mhz"])
    design = dataclasses.replace(tiny_design, board=board, tiling=choose_tiling(tiny_design.prog, board))
    image = api.vector_data(design.qm.cfg, 1).images[0]
    ours = image_figures(task_estimates(design, image))
    out["ours_estimate"] = {"board": board.name, "clock_mhz": board.clock_mhz, "P": design.tiling.P,
                            "Q": design.tiling.Q, "dsp": design.tiling.used["dsp"],
                            "ms_per_image": ours["latency_ms_per_image"], "ms_per_task": ours["latency_ms_per_task"],
                            "macs_per_dsp_per_cycle": ours["macs_per_dsp_per_cycle"],
                            "tokens": design.qm.cfg.num_tokens}
    return out


# ---------------------------------------------------------------- the whole run

def run_benchmark(names: list[str], board: str = "zcu104", csim_for: tuple[str, ...] = ("default", "m3vit-tiny"),
                  cosim: bool = False, simulator: str = "verilator", generate: bool = True,
                  work_dir: Path | None = None, rtl_array: tuple[int, int] | None = None,
                  cosim_for: tuple[str, ...] = ("default",)) -> dict:
    """Benchmark each named config: estimate always; project writing when `generate`; csim for the
    configs in csim_for; cosim of the configs in cosim_for when `cosim` (at `rtl_array` if given)."""
    target = load_board(board)
    configs, tiny = [], None
    with tempfile.TemporaryDirectory(prefix="codesign_bench_") as tmp:
        projects = Path(work_dir) if work_dir else Path(tmp)
        for name in names:
            design, seconds = convert_design(CONFIGS[name], target)
            stages = Stages(generate=generate, csim=generate and name in csim_for,
                            cosim=generate and cosim and name in cosim_for, simulator=simulator,
                            rtl_array=rtl_array if name in cosim_for else None)
            configs.append(bench_config(name, design, seconds, stages, projects))
            tiny = design if name == REFERENCE_CONFIG else tiny
    return {"meta": run_metadata(board), "configs": configs, "references": references(tiny)}


def run_metadata(board: str) -> dict:
    return {"board": board, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "calibration_images": CALIBRATION_IMAGES,
            "vector_images": VECTOR_IMAGES, "weights": "random (seed 0)", "baseline_rss_mib": BASELINE_RSS_MIB}


# ---------------------------------------------------------------- printing and plotting

def fmt(value, spec: str = ",.0f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def accelerator_table(report: dict) -> str:
    head = (f"{'config':<16}{'Mparams':>8}{'GMAC/task':>10}{'PxQ':>8}{'DSP':>6}{'est ms/task':>12}"
            f"{'GOPS':>7}{'MAC/DSP/cyc':>12}{'of array':>9}{'of board':>9}{'roof/est':>9}"
            f"{'RTL PxQ':>8}{'RTL ms/task':>12}{'RTL/est@RTL':>12}")
    rows = [accelerator_row(c) for c in report["configs"]]
    return "\n".join(["estimate (codesign.schedule.estimate) per task inference; RTL = cocotb cosim of the generated "
                      "Verilog with the board's DDR latency and bandwidth", head, "-" * len(head), *rows])


def accelerator_row(c: dict) -> str:
    a = c["accelerator"]
    array = f"{a['P']}x{a['Q']}"
    return (f"{c['name']:<16}{c['params'] / 1e6:>8.2f}{a['macs_per_image'] / a['tasks'] / 1e9:>10.3f}"
            f"{array:>8}{a['resources']['dsp']['used']:>6}{a['latency_ms_per_task']:>12.3f}"
            f"{a['gops']:>7.0f}{a['macs_per_dsp_per_cycle']:>12.2f}{a['array_utilisation']:>9.0%}"
            f"{a['board_peak_fraction']:>9.0%}{a['roofline_ratio']:>9.0%}{measured_cells(c['tools'].get('cosim') or {})}")


def measured_cells(cosim: dict) -> str:
    if not cosim.get("simulated"):
        return f"{'not simulated':>32}"
    return (f"{cosim['rtl_array']:>8}{cosim['rtl_ms_per_task']:>12.3f}"
            f"{fmt(cosim['rtl_over_estimate'], '.2f'):>12}")


def tools_table(report: dict) -> str:
    head = (f"{'config':<16}{'convert s':>10}{'generate s':>11}{'csim build s':>13}{'csim run s':>11}"
            f"{'cosim s':>9}{'peak RSS MiB':>13}{'conv s/Mp':>10}{'gen s/Mp':>9}{'csim s/GMAC':>12}{'dRSS MiB/Mp':>12}")
    return "\n".join([head, "-" * len(head), *[tools_row(c) for c in report["configs"]]])


def tools_row(c: dict) -> str:
    t, r = c["tools"], c["ratios"]
    gen, csim, cosim = t.get("generate") or {}, t.get("csim") or {}, t.get("cosim") or {}
    return (f"{c['name']:<16}{t['convert_seconds']:>10.2f}{fmt(gen.get('seconds'), '.2f'):>11}"
            f"{fmt(csim.get('build_seconds'), '.2f'):>13}{fmt(csim.get('run_seconds'), '.2f'):>11}"
            f"{fmt(cosim.get('seconds') if cosim.get('simulated') else None, '.1f'):>9}"
            f"{t['peak_rss_mib']['self']:>13.0f}{fmt(r['convert_s_per_mparam'], '.3f'):>10}"
            f"{fmt(r['generate_s_per_mparam'], '.3f'):>9}{fmt(r['csim_run_s_per_gmac'], '.2f'):>12}"
            f"{fmt(r['rss_growth_mib_per_mparam'], '.1f'):>12}")


def reference_lines(refs: dict) -> list[str]:
    setup = refs["setup"]
    lines = [f"published (not measured here): {setup['model']} on {setup['board']} @ {setup['clock_mhz']:g} MHz"]
    for r in refs["rows"]:
        dsp = f", {r['dsp']:,} DSPs" if r.get("dsp") else ""
        lines.append(f"  {r['name']:<9}{r['ms_per_image']:>7.2f} ms/image  {r['precision']}{dsp}  ({r['source']})")
    ours = refs.get("ours_estimate")
    if ours:
        lines.append(f"  ours (estimate, {ours['tokens']} tokens, {ours['P']}x{ours['Q']} array, {ours['dsp']:,} DSPs): "
                     f"{ours['ms_per_task']:.2f} ms/task, {ours['ms_per_image']:.2f} ms/image (all tasks), "
                     f"{ours['macs_per_dsp_per_cycle']:.2f} MAC/DSP/cycle")
    return lines


def notes(report: dict) -> list[str]:
    lines = []
    for c in report["configs"]:
        gen, csim, cosim = (c["tools"].get(k) or {} for k in ("generate", "csim", "cosim"))
        if gen and not gen["kind"].startswith("full"):
            lines.append(f"{c['name']}: project written {gen['kind']}")
        kinds = c["accelerator"].get("kinds", {})
        if kinds:
            lines.append(f"{c['name']}: roofline / estimate by layer kind (array's; board's): "
                         + ", ".join(f"{kind} {k['ratio']:.0%}; {k['board_ratio']:.0%}" for kind, k in kinds.items()))
        if csim:
            lines.append(f"{c['name']}: csim " + (f"{csim['passed']} passed, {csim['failed']} failed" if "passed" in
                                                  csim else f"error: {csim['error']}"))
        if cosim and not cosim.get("simulated"):
            lines.append(f"{c['name']}: cosim not simulated: {cosim['reason']}")
        elif cosim:
            lines.append(f"{c['name']}: cosim ({cosim['simulator']}) {'bit-exact' if cosim['all_passed'] else 'FAILED'}"
                         f"; RTL {cosim['rtl_array']} ({cosim['rtl_core']} core): "
                         f"{cosim['rtl_cycles_per_image']:,.0f} cycles/image, "
                         f"{cosim['rtl_board_peak_fraction']:.2%} of the board's peak, "
                         f"{cosim['rtl_ms_per_task']:.3f} ms/task at {c['accelerator']['clock_mhz']:g} MHz")
            if cosim["kinds"]:
                lines.append(f"{c['name']}: RTL cycles / estimate at the RTL's {cosim['rtl_array']} by layer kind "
                             "(reports/cycles.json, img0_task0): " + ", ".join(
                                 f"{kind} {k['rtl_over_est']:.2f}" for kind, k in cosim["kinds"].items()))
    return lines


def report_text(report: dict) -> str:
    m = report["meta"]
    return "\n".join([
        f"board {m['board']}; random weights; per image = one backbone run per task; torch threads "
        f"{m['torch_threads']}", "", accelerator_table(report), "", tools_table(report), "",
        *reference_lines(report["references"]), *(["", *notes(report)] if notes(report) else [])])


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, tools) = plt.subplots(1, 2, figsize=(12, 4.5))
    plot_latency(lat, report)
    plot_tools(tools, report)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def latency_groups(report: dict) -> tuple[list[str], dict[str, list[float]]]:
    """x labels and ms per task inference per series: one group per config, then the peers' setup."""
    series = {"estimate": [], "RTL cosim (measured)": [], "published": []}
    labels = []
    for c in report["configs"]:
        a = c["accelerator"]
        labels.append(f"{c['name']}\n{a['board']} @ {a['clock_mhz']:g} MHz")
        for key, value in zip(series, (a["latency_ms_per_task"],
                                       (c["tools"].get("cosim") or {}).get("rtl_ms_per_task", np.nan), np.nan)):
            series[key].append(value)
    refs = report["references"]
    ours = refs.get("ours_estimate")
    for r in refs["rows"]:
        labels.append(f"{r['name']}\n{refs['setup']['board']} @ {refs['setup']['clock_mhz']:g} MHz")
        for key, value in zip(series, (ours["ms_per_task"] if ours else np.nan, np.nan, r["ms_per_image"])):
            series[key].append(value)
    return labels, series


def plot_latency(ax, report: dict) -> None:
    labels, series = latency_groups(report)
    x, width = np.arange(len(labels)), 0.27
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - 1) * width, values, width, label=label, hatch="//" if label == "published" else None)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms per task inference")
    ax.set_title("latency (ours next to the published peers)")
    ax.legend(fontsize=8)


def plot_tools(ax, report: dict) -> None:
    configs = report["configs"]
    stages = {"convert": lambda t: t["convert_seconds"],
              "generate": lambda t: (t.get("generate") or {}).get("seconds", 0.0),
              "csim": lambda t: (t.get("csim") or {}).get("seconds", 0.0),
              "cosim": lambda t: (t.get("cosim") or {}).get("seconds", 0.0)}
    bottom = np.zeros(len(configs))
    for label, seconds_of in stages.items():
        seconds = np.array([seconds_of(c["tools"]) for c in configs])
        ax.bar([c["name"] for c in configs], seconds, bottom=bottom, label=label)
        bottom += seconds
    ax.set_ylabel("wall seconds")
    ax.set_title("tool time per config")
    ax.legend(fontsize=8)


# ---------------------------------------------------------------- command line

def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown config(s) {', '.join(unknown) or text!r}; known: {', '.join(CONFIGS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/bench", help="folder for bench.json and bench.png (default out/bench)")
    p.add_argument("--quick", action="store_true", help="default, m3vit-tiny and edge-moe-tiny only, csim of the "
                   "default only (the full run: every config, csim of default and m3vit-tiny)")
    p.add_argument("--configs", type=_names, help=f"only these configs, comma-separated (of {', '.join(CONFIGS)})")
    p.add_argument("--board", default="zcu104")
    p.add_argument("--cosim", action="store_true", help="RTL cosim (measured cycles) of the --cosim-configs")
    p.add_argument("--cosim-configs", type=_names, default=("default",), metavar="A,B",
                   help="the configs --cosim simulates (default: default; edge-moe-tiny is the peers' model)")
    p.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    p.add_argument("--rtl-array", metavar="PxQ", help="with --cosim: the simulated configs' RTL at this smaller array "
                   "(generate --rtl-array; default: the board tiling's)")
    p.add_argument("--keep-projects", action="store_true", help="keep the generated projects in OUT/projects")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # index_add_ in the MoE forward is erratic with 2 threads on a busy 2-core box
    names = list(args.configs) if args.configs else list(QUICK_CONFIGS) if args.quick else list(CONFIGS)
    names += [n for n in (args.cosim_configs if args.cosim else ()) if n not in names]
    csim_for = ("default",) if args.quick else ("default", "m3vit-tiny")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rtl_array = tuple(int(n) for n in args.rtl_array.lower().split("x")) if args.rtl_array else None
    report = run_benchmark(names, args.board, csim_for, args.cosim, args.simulator,
                           work_dir=out / "projects" if args.keep_projects else None, rtl_array=rtl_array,
                           cosim_for=args.cosim_configs)
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "bench.png")
    print(report_text(report))
    print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
