"""Benchmark of the codesign flow on M3ViT models: accelerator figures and tool cost.

    python benchmarks/bench.py [--out DIR] [--quick] [--board zcu104] [--cosim] [--keep-projects]

Per config (random weights, calibrated on a few random images):
* accelerator (analytical estimate, codesign.schedule.estimate): cycles, latency, MAC-array
  utilisation and DDR bytes per image, the board roofline (compute and bandwidth bounds) and
  roofline / estimate; with --cosim, for the default config, RTL cycles measured by cocotb.
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
from codesign.model.m3vit import M3ViT  # noqa: E402
from codesign.model.zoo import M3VIT_CONFIGS  # noqa: E402
from codesign.schedule.estimate import KINDS, Estimate, transfer_cycles  # noqa: E402
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

# Published, not measured here (Edge-MoE, Sarkar et al., ICCAD 2023, arXiv:2305.18691).
EDGE_MOE = {"name": "Edge-MoE (published)", "model": "edge-moe-tiny", "board": "zcu102", "clock_mhz": 300.0,
            "ms_per_image": 59.0, "source": "published figure (~59 ms/image, M3ViT-tiny on Cityscapes 128x256, "
                                               "ZCU102 @ 300 MHz); not measured here"}

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


def bandwidth_bound_cycles(est: Estimate) -> float:
    tot = est.totals
    return transfer_cycles(tot["weight_bytes"], tot["act_read_bytes"], tot["act_write_bytes"],
                           est.ddr_bytes_per_cycle, est.axi_bytes_per_cycle, est.weight_ports)


def image_figures(estimates: list[Estimate], macs_per_cycle: int) -> dict:
    """Per-image figures (all tasks: one backbone run per task) from the per-task estimates."""
    cycles = sum(e.totals["cycles"] for e in estimates)
    macs = sum(e.totals["macs"] for e in estimates)
    clock_mhz = estimates[0].clock_mhz
    roofline = sum(e.roofline_cycles for e in estimates)
    return {
        "tasks": len(estimates),
        "macs_per_image": macs,
        "cycles_per_image": cycles,
        "cycles_per_task": [e.totals["cycles"] for e in estimates],
        "latency_ms_per_image": cycles / (clock_mhz * 1e3),
        "latency_ms_per_task": cycles / len(estimates) / (clock_mhz * 1e3),
        "mac_utilisation": macs / (macs_per_cycle * cycles),
        "ddr_bytes_per_image": sum(e.totals["ddr_bytes"] for e in estimates),
        "weight_bytes_per_image": sum(e.totals["weight_bytes"] for e in estimates),
        "roofline_compute_cycles": macs / macs_per_cycle,
        "roofline_bandwidth_cycles": float(sum(bandwidth_bound_cycles(e) for e in estimates)),
        "roofline_cycles": roofline,
        "roofline_bound": "/".join(sorted({e.roofline_bound for e in estimates})),
        "roofline_ratio": roofline / cycles,
        "kinds": kind_ratios(estimates),
    }


def kind_ratios(estimates: list[Estimate]) -> dict[str, dict]:
    """Per layer kind over all tasks: estimated cycles, the pure board roofline, and their ratio."""
    out = {}
    for kind in KINDS:
        cycles = sum(k.cycles for e in estimates for k in e.kinds if k.kind == kind)
        roof = sum(k.board_roofline for e in estimates for k in e.kinds if k.kind == kind)
        if cycles:
            out[kind] = {"cycles": cycles, "board_roofline": roof, "ratio": roof / cycles}
    return out


def accelerator_figures(design: api.Design, image: np.ndarray) -> dict:
    t = design.tiling
    figures = image_figures(task_estimates(design, image), t.macs_per_cycle)
    return {"board": design.board.name, "clock_mhz": design.board.clock_mhz, "P": t.P, "Q": t.Q,
            "macs_per_cycle": t.macs_per_cycle, "dsp": t.dsp, "bram36": t.bram36, "uram": t.uram,
            "lut": t.lut, **figures}


# ---------------------------------------------------------------- project, csim, cosim

def write_hls_only_project(design: api.Design, out: Path, images: int) -> None:
    """data/ + HLS C++ (all csim needs), for when the RTL renderer (codesign.sim.cosim) is unavailable."""
    from codesign.emit.data import Vector, write_data_dir
    from codesign.emit.hls import render_hls
    from codesign.quant.quantize import quantize_input
    from codesign.schedule.tiling import tiling_params

    x_q = quantize_input(api.vector_data(design.qm.cfg, images).images, design.qm)
    vectors = [Vector(f"img{i}_task{t}", t, x_q[i]) for i in range(images) for t in range(design.qm.cfg.num_tasks)]
    write_data_dir(out / "data", design.prog, design.qm, vectors)
    render_hls(out, design.prog, design.board, tile=tiling_params(design.tiling))


def generate_project(design: api.Design, out: Path, images: int = VECTOR_IMAGES) -> dict:
    """Write the project with api.generate (HLS + RTL); if that fails (the RTL renderer in
    codesign.sim.cosim is unfinished), write the HLS-only project csim needs and say why."""
    try:
        _, seconds = timed(api.generate, design, out, images=images, force=True)
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
    """RTL cycles per image from cosim, against the estimate and roofline of the same images and tasks."""
    start = time.perf_counter()
    try:
        result = api.cosim(project, simulator)
    except Exception as exc:  # the module is in progress: any failure means "not simulated"
        return not_simulated(one_line(exc), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    measured = cycles_per_image(cosim_vector_cycles(result))
    if not measured:
        return not_simulated("cosim returned no per-vector cycles", seconds)
    return {"simulated": True, "simulator": simulator, "seconds": seconds,
            "all_passed": bool(getattr(result, "all_passed", False)),
            **measured_vs_model(design, measured)}


def rtl_core_array(design: api.Design) -> tuple[int, int]:
    """(P, Q) of the simulated RTL core: DEFAULT_RTL_P MAC units x one 64-bit word of lanes. It is
    sized for simulation, not for the board (generate renders it without an rtl_P override)."""
    from codesign.sim.cosim import DEFAULT_RTL_P

    return DEFAULT_RTL_P, 8 // design.prog.elem_bytes


def model_per_image(design: api.Design, images: np.ndarray, indices) -> dict[str, float]:
    """Estimate and roofline cycles per image, averaged over the given vector images."""
    figures = [image_figures(task_estimates(design, images[i]), design.tiling.macs_per_cycle) for i in indices]
    return {key: float(np.mean([f[key] for f in figures])) for key in ("cycles_per_image", "roofline_cycles")}


def measured_vs_model(design: api.Design, measured: dict[int, int]) -> dict:
    """RTL cycles against the estimate for the board's array and for the RTL core's own (smaller) array."""
    images = api.vector_data(design.qm.cfg, max(measured) + 1).images
    P, Q = rtl_core_array(design)
    # the RTL core reads one beat per cycle whatever the number of weight masters, and keeps the
    # MoE accumulator in DDR
    one_port = dataclasses.replace(design.board, memory=dataclasses.replace(design.board.memory, weight_ports=1))
    rtl_tiling = dataclasses.replace(design.tiling, P=P, Q=Q, acc_on_chip=False)
    rtl_sized = dataclasses.replace(design, board=one_port, tiling=rtl_tiling)
    board_model = model_per_image(design, images, measured)
    rtl_model = model_per_image(rtl_sized, images, measured)
    rtl = float(np.mean(list(measured.values())))
    return {"rtl_cycles_per_image": rtl, "rtl_ms_per_image": rtl / (design.board.clock_mhz * 1e3),
            "estimate_cycles_per_image": board_model["cycles_per_image"],
            "estimate_over_rtl": board_model["cycles_per_image"] / rtl,
            "roofline_over_rtl": board_model["roofline_cycles"] / rtl,
            "rtl_array": f"{P}x{Q}", "estimate_rtl_array_cycles_per_image": rtl_model["cycles_per_image"],
            "estimate_rtl_array_over_rtl": rtl_model["cycles_per_image"] / rtl,
            "roofline_rtl_array_over_rtl": rtl_model["roofline_cycles"] / rtl}


# ---------------------------------------------------------------- one config

@dataclasses.dataclass(frozen=True)
class Stages:
    generate: bool = True
    csim: bool = True
    cosim: bool = False
    simulator: str = "verilator"


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
    out["generate"] = generate_project(design, project)
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


# ---------------------------------------------------------------- Edge-MoE reference

def edge_moe_reference(tiny_design: api.Design | None) -> dict:
    """The published figure, next to our estimate for the same model on the same board and clock."""
    ref = dict(EDGE_MOE)
    if tiny_design is None:
        return ref
    board = dataclasses.replace(load_board(ref["board"]), clock_mhz=ref["clock_mhz"])
    tiling = choose_tiling(tiny_design.prog, board)
    image = api.vector_data(tiny_design.qm.cfg, 1).images[0]
    ours = image_figures(task_estimates(tiny_design, image, board), tiling.macs_per_cycle)
    ref["ours_estimate"] = {"board": board.name, "clock_mhz": board.clock_mhz, "P": tiling.P, "Q": tiling.Q,
                            "ms_per_image": ours["latency_ms_per_image"], "ms_per_task": ours["latency_ms_per_task"],
                            "roofline_ms_per_image": ours["roofline_cycles"] / (board.clock_mhz * 1e3)}
    return ref


# ---------------------------------------------------------------- the whole run

def run_benchmark(names: list[str], board: str = "zcu104", csim_for: tuple[str, ...] = ("default", "m3vit-tiny"),
                  cosim: bool = False, simulator: str = "verilator", generate: bool = True,
                  work_dir: Path | None = None) -> dict:
    """Benchmark each named config: estimate always; project writing when `generate`; csim for the
    configs in csim_for; cosim (default config only) when `cosim`."""
    target = load_board(board)
    configs, tiny = [], None
    with tempfile.TemporaryDirectory(prefix="codesign_bench_") as tmp:
        projects = Path(work_dir) if work_dir else Path(tmp)
        for name in names:
            design, seconds = convert_design(CONFIGS[name], target)
            stages = Stages(generate=generate, csim=generate and name in csim_for,
                            cosim=generate and cosim and name == "default", simulator=simulator)
            configs.append(bench_config(name, design, seconds, stages, projects))
            tiny = design if name == EDGE_MOE["model"] else tiny
    return {"meta": run_metadata(board), "configs": configs, "reference": edge_moe_reference(tiny)}


def run_metadata(board: str) -> dict:
    return {"board": board, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "calibration_images": CALIBRATION_IMAGES,
            "vector_images": VECTOR_IMAGES, "weights": "random (seed 0)", "baseline_rss_mib": BASELINE_RSS_MIB}


# ---------------------------------------------------------------- printing and plotting

def fmt(value, spec: str = ",.0f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def accelerator_table(report: dict) -> str:
    head = (f"{'config':<16}{'Mparams':>8}{'GMAC/img':>9}{'PxQ':>7}{'est cyc/img':>13}{'ms/img':>8}"
            f"{'util':>7}{'DDR MB/img':>11}{'roof comp':>11}{'roof bw':>11}{'roof/est':>9}"
            f"{'RTL cyc/img':>13}{'est/RTL':>8}{'roof/RTL':>9}{'RTL PxQ':>8}{'est@RTL PxQ/RTL':>16}")
    rows = [accelerator_row(c) for c in report["configs"]]
    return "\n".join([head, "-" * len(head), *rows])


def accelerator_row(c: dict) -> str:
    a = c["accelerator"]
    array = f"{a['P']}x{a['Q']}"
    return (f"{c['name']:<16}{c['params'] / 1e6:>8.2f}{a['macs_per_image'] / 1e9:>9.3f}{array:>7}"
            f"{a['cycles_per_image']:>13,}{a['latency_ms_per_image']:>8.2f}{a['mac_utilisation']:>7.1%}"
            f"{a['ddr_bytes_per_image'] / 1e6:>11.2f}{a['roofline_compute_cycles']:>11,.0f}"
            f"{a['roofline_bandwidth_cycles']:>11,.0f}{a['roofline_ratio']:>9.2f}"
            f"{measured_cells(c['tools'].get('cosim') or {})}")


def measured_cells(cosim: dict) -> str:
    if not cosim.get("simulated"):
        return f"{'not simulated':>30}"
    return (f"{fmt(cosim['rtl_cycles_per_image']):>13}{fmt(cosim['estimate_over_rtl'], '.2f'):>8}"
            f"{fmt(cosim['roofline_over_rtl'], '.2f'):>9}{cosim['rtl_array']:>8}"
            f"{fmt(cosim['estimate_rtl_array_over_rtl'], '.2f'):>16}")


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


def reference_line(ref: dict) -> str:
    line = (f"{ref['name']}: {ref['ms_per_image']:g} ms/image, {ref['model']} on {ref['board']} "
            f"@ {ref['clock_mhz']:g} MHz")
    ours = ref.get("ours_estimate")
    if ours:
        line += (f"\n  ours (estimate, same model/board/clock, {ours['P']}x{ours['Q']} array): "
                 f"{ours['ms_per_image']:.2f} ms/image all tasks = {ours['ms_per_task']:.2f} ms/task; "
                 f"roofline {ours['roofline_ms_per_image']:.2f} ms/image")
    return line + f"\n  ({ref['source']})"


def notes(report: dict) -> list[str]:
    lines = []
    for c in report["configs"]:
        gen, csim, cosim = (c["tools"].get(k) or {} for k in ("generate", "csim", "cosim"))
        if gen and not gen["kind"].startswith("full"):
            lines.append(f"{c['name']}: project written {gen['kind']}")
        kinds = c["accelerator"].get("kinds", {})
        if kinds:
            lines.append(f"{c['name']}: board roofline / estimate by layer kind: "
                         + ", ".join(f"{kind} {k['ratio']:.0%}" for kind, k in kinds.items()))
        if csim:
            lines.append(f"{c['name']}: csim " + (f"{csim['passed']} passed, {csim['failed']} failed" if "passed" in
                                                  csim else f"error: {csim['error']}"))
        if cosim and not cosim.get("simulated"):
            lines.append(f"{c['name']}: cosim not simulated: {cosim['reason']}")
        elif cosim:
            lines.append(f"{c['name']}: cosim ({cosim['simulator']}) {'bit-exact' if cosim['all_passed'] else 'FAILED'}"
                         f"; RTL core {cosim['rtl_array']}: estimate at that array "
                         f"{cosim['estimate_rtl_array_cycles_per_image']:,.0f} cycles/image")
    return lines


def report_text(report: dict) -> str:
    m = report["meta"]
    return "\n".join([
        f"board {m['board']}; random weights; per image = one backbone run per task; torch threads "
        f"{m['torch_threads']}", "", accelerator_table(report), "", tools_table(report), "",
        "reference: " + reference_line(report["reference"]), *(["", *notes(report)] if notes(report) else [])])


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
    """x labels and ms/image per series: one group per config, then the Edge-MoE comparison group."""
    series = {"estimate": [], "roofline bound": [], "RTL cosim (measured, RTL core array)": [], "published": []}
    labels = []
    for c in report["configs"]:
        a, per_ms = c["accelerator"], c["accelerator"]["clock_mhz"] * 1e3
        labels.append(f"{c['name']}\n{a['board']} @ {a['clock_mhz']:g} MHz")
        for key, value in zip(series, (a["cycles_per_image"] / per_ms, a["roofline_cycles"] / per_ms,
                                       (c["tools"].get("cosim") or {}).get("rtl_ms_per_image", np.nan), np.nan)):
            series[key].append(value)
    ref = report["reference"]
    ours = ref.get("ours_estimate")
    if ours:
        labels.append(f"{ref['model']}\n{ref['board']} @ {ref['clock_mhz']:g} MHz")
        for key, value in zip(series, (ours["ms_per_image"], ours["roofline_ms_per_image"], np.nan,
                                       ref["ms_per_image"])):
            series[key].append(value)
    return labels, series


def plot_latency(ax, report: dict) -> None:
    labels, series = latency_groups(report)
    x, width = np.arange(len(labels)), 0.2
    for i, (label, values) in enumerate(series.items()):
        name = f"{report['reference']['name']}" if label == "published" else label
        ax.bar(x + (i - 1.5) * width, values, width, label=name, hatch="//" if label == "published" else None)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per image (all tasks)")
    ax.set_title("accelerator latency per image")
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

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/bench", help="folder for bench.json and bench.png (default out/bench)")
    p.add_argument("--quick", action="store_true", help="default, m3vit-tiny and edge-moe-tiny only, csim of the "
                   "default only (the full run: every config, csim of default and m3vit-tiny)")
    p.add_argument("--board", default="zcu104")
    p.add_argument("--cosim", action="store_true", help="RTL cosim of the default config (measured cycles)")
    p.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    p.add_argument("--keep-projects", action="store_true", help="keep the generated projects in OUT/projects")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # index_add_ in the MoE forward is erratic with 2 threads on a busy 2-core box
    names = list(QUICK_CONFIGS) if args.quick else list(CONFIGS)
    csim_for = ("default",) if args.quick else ("default", "m3vit-tiny")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = run_benchmark(names, args.board, csim_for, args.cosim, args.simulator,
                           work_dir=out / "projects" if args.keep_projects else None)
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "bench.png")
    print(report_text(report))
    print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
