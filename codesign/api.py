"""Python API mirroring the CLI: load -> quantize -> compile -> generate -> csim / cosim -> compare."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .boards import Board, load_board
from .emit.data import Vector, write_data_dir
from .fsutil import atomic_dir, refuse_existing
from .model.config import ModelConfig
from .model.data import SyntheticData, make_dataset
from .model.m3vit import M3ViT
from .quant.golden import dequantize_output, run_golden
from .quant.qmodel import QuantModel
from .quant.quantize import quantize_input, quantize_model
from .schedule.estimate import Estimate, estimate, expert_counts_from_golden
from .schedule.program import Program, compile_program
from .schedule.tiling import Tiling, choose_tiling, tiling_params

CALIB_SEED = 7
# The built-in calibration set: CALIB_IMAGES images for short sequences (the embedded model's 17
# tokens), fewer for long ones, so that calibration costs about the same tokens for every model
# (M3ViT-small's 1,025 tokens: 8 images, 5 tasks). Ranges are per tensor, over all tokens seen.
CALIB_IMAGES = 64
CALIB_TOKENS = 8192
VECTOR_SEED = 1234


def load(model: str | Path | M3ViT, config=None) -> M3ViT:
    """A model file/folder (state_dict + YAML, safetensors, M3ViT checkpoints) or a module."""
    if isinstance(model, M3ViT):
        return model.eval()
    from .frontend.loader import load_model

    return load_model(model, config)


def calibration_images(cfg: ModelConfig, count: int | None = None, path: str | Path | None = None) -> np.ndarray:
    """User images from a .npy file [N,C,H,W], else `count` images of the built-in synthetic dataset
    (default: enough for CALIB_TOKENS tokens, at most CALIB_IMAGES)."""
    if path is None:
        return make_dataset(count or default_calibration_count(cfg), cfg, CALIB_SEED).images
    return checked_images(_load_npy(Path(path)), cfg, "calibration images")


def default_calibration_count(cfg: ModelConfig) -> int:
    return min(CALIB_IMAGES, -(-CALIB_TOKENS // cfg.num_tokens))


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"calibration file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable .npy array ({type(exc).__name__})") from None
    if not isinstance(data, np.ndarray):
        data.close()
        raise ValueError(f"{path} is an .npz archive: save the images as one array with np.save")
    return data


def checked_images(images, cfg: ModelConfig, what: str = "images", single: bool = False) -> np.ndarray:
    """`images` as float32 [N,C,H,W] with N >= 1 and every value finite, else a one-line ValueError.

    Only floating point is accepted: integer pixels (uint8 0..255) would silently bypass the
    normalisation the model was trained with, so they are rejected rather than guessed at.
    With `single`, one [C,H,W] image is taken as a batch of one.
    """
    try:
        arr = np.asarray(images)
    except ValueError:
        raise ValueError(f"{what} are not a regular array (ragged nested lists?)") from None
    if arr.dtype.kind != "f":
        raise ValueError(f"{what} must be floating point (float16/32/64) in the model's input "
                         f"normalisation, not {arr.dtype}; convert integer pixels the way the model was "
                         f"trained, e.g. x.astype(np.float32) / 255 then normalise")
    arr = _batch_shaped(arr, cfg, what, single)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, reported below
        arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{what} contain {int(bad.sum())} NaN or inf value(s) (of {arr.size}, as float32); "
                         f"the first is in image {first}")
    return arr


def _batch_shaped(arr: np.ndarray, cfg: ModelConfig, what: str, single: bool) -> np.ndarray:
    chw = (cfg.in_chans, *cfg.image_hw)
    if single and arr.shape == chw:
        return arr[None]
    wanted = f"[N, {', '.join(map(str, chw))}]" + (f" or [{', '.join(map(str, chw))}]" if single else "")
    if arr.ndim == 4 and arr.shape[1:] == chw:
        if arr.shape[0] == 0:
            raise ValueError(f"{what}: the batch is empty (shape {list(arr.shape)}); at least one image is needed")
        return arr
    hwc = chw[1:] + chw[:1]
    if arr.ndim in (3, 4) and arr.shape[-3:] == hwc and hwc != chw:
        raise ValueError(f"{what} look channels-last {list(arr.shape)}; the model takes channels-first "
                         f"{wanted}: use x.transpose(0, 3, 1, 2) (or (2, 0, 1) for one image)")
    raise ValueError(f"{what} must have shape {wanted}, got {list(arr.shape)}")


def checked_task(task, cfg: ModelConfig) -> int:
    """`task` as an int in range, else a one-line ValueError (bools and floats are refused)."""
    n = len(cfg.tasks)
    names = ", ".join(f"{i}={t.name}" for i, t in enumerate(cfg.tasks))
    if isinstance(task, (bool, np.bool_)) or not isinstance(task, (int, np.integer)):
        raise ValueError(f"task must be an int index ({names}), got {task!r} of type {type(task).__name__}")
    if not 0 <= task < n:
        raise ValueError(f"task {int(task)} out of range: the model has {n} tasks ({names})")
    return int(task)


def checked_count(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return int(value)


@dataclass
class Design:
    """Everything generated for one model on one board."""

    model: M3ViT
    qm: QuantModel
    prog: Program
    board: Board
    tiling: Tiling

    def predict(self, images: np.ndarray, task: int) -> np.ndarray:
        """What the accelerator returns, dequantised: backbone tokens [B, T, D] (bit-exact golden model).

        `images`: float [B, C, H, W] (channels-first, as the model was trained), or one [C, H, W]
        image, which gives [T, D].  `task`: the task index.  Bad input raises a one-line ValueError.
        """
        cfg = self.qm.cfg
        task = checked_task(task, cfg)
        batch = checked_images(images, cfg, "images", single=True)
        x_q = quantize_input(batch, self.qm)
        out = np.stack([dequantize_output(self.qm, run_golden(self.qm, x, task).output) for x in x_q])
        return out if np.ndim(images) == 4 else out[0]

    def estimate(self, images: np.ndarray | None = None, task: int = 0) -> Estimate:
        counts = None
        if images is not None:
            task = checked_task(task, self.qm.cfg)
            first = checked_images(images, self.qm.cfg, "images", single=True)[:1]
            counts = expert_counts_from_golden(self.qm, quantize_input(first, self.qm)[0], task)
        return estimate(self.prog, self.tiling, self.board, counts)


def convert(model, board: str | Board = "zcu104", wbits: int = 8, abits: int = 8, calib=None,
            config=None) -> Design:
    """Like hls4ml's convert_from_pytorch_model: quantise, compile and size the design for a board."""
    model = load(model, config)
    board = board if isinstance(board, Board) else load_board(board)
    if isinstance(calib, np.ndarray):
        images = checked_images(calib, model.cfg, "calibration images")
    else:
        images = calibration_images(model.cfg, path=calib)
    qm = quantize_model(model, images, wbits=wbits, abits=abits)
    prog = compile_program(qm)
    return Design(model, qm, prog, board, choose_tiling(prog, board))


def vector_data(cfg: ModelConfig, images: int) -> SyntheticData:
    return make_dataset(images, cfg, VECTOR_SEED)


def _write_project(out: Path, design: Design, data: SyntheticData, project_name: str) -> None:
    from .emit.hls import render_hls
    from .emit.host import write_host_files
    from .frontend.loader import save_model
    from .sim.cosim import render_project_rtl

    x_q = quantize_input(data.images, design.qm)
    vectors = [Vector(f"img{i}_task{t}", t, x_q[i]) for i in range(len(data)) for t in range(design.qm.cfg.num_tasks)]
    write_data_dir(out / "data", design.prog, design.qm, vectors)
    write_host_files(out / "data", design.model, design.qm)
    _add_image_index(out / "data" / "manifest.json")
    np.savez_compressed(out / "data" / "images.npz", images=data.images, seg=data.seg, depth=data.depth)
    params = tiling_params(design.tiling)
    render_hls(out, design.prog, design.board, tile=params, project_name=project_name)
    render_project_rtl(out, design.prog, tile=params, weight_ports=design.board.memory.weight_ports)
    save_model(design.model, out / "model")
    est = design.estimate(data.images, 0)
    (out / "reports").mkdir(exist_ok=True)
    (out / "reports" / "estimate.json").write_text(json.dumps(est.to_json(), indent=1))
    (out / "reports" / "estimate.txt").write_text(est.table())
    project = {"board": design.board.name, "wbits": design.qm.wbits, "abits": design.qm.abits,
               "output_scale": design.qm.output_scale, "model_dir": "model", "scales": design.qm.scales,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / "project.json").write_text(json.dumps(project, indent=1))


def _add_image_index(manifest_path: Path) -> None:
    man = json.loads(manifest_path.read_text())
    for vec in man["vectors"]:
        vec["image"] = int(vec["id"].split("_")[0][3:])
    manifest_path.write_text(json.dumps(man, indent=1))


def generate(model, out_dir: str | Path, board: str | Board = "zcu104", images: int = 2, force: bool = False,
             wbits: int = 8, abits: int = 8, calib=None, config=None, project_name: str = "codesign") -> Path:
    """Write a complete project (HLS C++, RTL, Tcl, host driver, data, reports) to `out_dir`."""
    images = checked_count(images, "images (test images per task)")
    refuse_existing(out_dir, force)  # before the slow conversion, not after it
    design = model if isinstance(model, Design) else convert(model, board, wbits, abits, calib, config)
    data = vector_data(design.qm.cfg, images)
    with atomic_dir(Path(out_dir), force) as tmp:
        _write_project(tmp, design, data, project_name)
    return Path(out_dir)


def csim(project_dir: str | Path, dump_dir: str | Path | None = None, first: int | None = None):
    """g++ C simulation of the project's testbench; `first=N` runs only the first N vectors of each task."""
    from .sim.csim import run_csim

    if first is not None:
        first = checked_count(first, "first")
    return run_csim(Path(project_dir), dump_dir=None if dump_dir is None else Path(dump_dir), first=first)


def cosim(project_dir: str | Path, simulator: str = "verilator", waves: bool = False, vectors=None,
          timeout_cycles: int | None = None, rtl_dir: str | Path | None = None):
    """RTL co-simulation; `timeout_cycles` limits each run (default: 4x a rough estimate + 100k);
    `rtl_dir` simulates other RTL with the same ports (a Vitis HLS export's verilog/) instead of rtl/."""
    from .sim.cosim import run_cosim

    if timeout_cycles is not None:
        timeout_cycles = checked_count(timeout_cycles, "timeout_cycles")
    return run_cosim(Path(project_dir), simulator=simulator, waves=waves, vectors=vectors,
                     timeout_cycles=timeout_cycles, rtl_dir=None if rtl_dir is None else Path(rtl_dir))


def cycles_report(project_dir: str | Path, cosim_result, rtl_dir: str | Path | None = None) -> str | None:
    """Simulated cycles per layer next to the HLS estimate and the rooflines (reports/cycles.txt)."""
    from .report.cycles import cycles_report as report

    return report(Path(project_dir), cosim_result, None if rtl_dir is None else Path(rtl_dir))


def synth(project_dir: str | Path, rtl_dir: str | Path | None = None):
    """yosys synth_xilinx of the project's RTL: (SynthResult, table); writes reports/synth.{json,txt}."""
    from .rtl.synth import synth_project

    return synth_project(Path(project_dir), None if rtl_dir is None else Path(rtl_dir))


def cosim_timeouts(project_dir: str | Path, result) -> list[str]:
    """One line per timed-out run of `result`: the limit, the cycle reached, the last retired instruction."""
    project_dir = Path(project_dir).resolve()
    late = [v for v in result.vectors if v.status == "timeout"]
    if not late:
        return []
    limit = _job_timeout(project_dir / "cosim" / "job" / "job.json")
    last = _last_retired(project_dir, result.simulator)
    return [f"{v.id} timed out: limit {limit} cycles, reached {v.cycles}; last retired: {last}" for v in late]


def _job_timeout(job_file: Path) -> str:
    try:
        return str(json.loads(job_file.read_text())["timeout_cycles"])
    except (OSError, ValueError, KeyError):
        return "?"


def _last_retired(project_dir: Path, simulator: str) -> str:
    """From the core's instruction trace: the runs before a timeout end with an "E" line, so the
    "I pc opcode cycles" lines after the last "E" belong to the run that timed out."""
    from .emit.data import load_manifest
    from .sim.cosim import TRACE_FILE

    trace = project_dir / "cosim" / f"sim_build_{simulator}" / TRACE_FILE
    if not trace.is_file():
        return "unknown (no instruction trace)"
    pending = []
    for line in trace.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["E"]:
            pending = []
        elif parts[:1] == ["I"] and len(parts) == 4:
            pending.append(int(parts[1]))
    if not pending:
        return "none (the first instruction did not finish)"
    pc = pending[-1]
    instrs = load_manifest(project_dir).get("instructions", [])
    what = f"{instrs[pc]['op']} {instrs[pc]['layer']}" if pc < len(instrs) else "?"
    return f"instruction {pc} ({what}) after {len(pending)} instructions"


def compare(project_dir: str | Path, results_dir: str | Path, out_dir: str | Path | None = None):
    from .report.compare import compare_results

    return compare_results(Path(project_dir), Path(results_dir), None if out_dir is None else Path(out_dir))
