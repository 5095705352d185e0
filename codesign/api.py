"""Python API mirroring the CLI: load -> quantize -> compile -> generate -> csim / cosim -> compare."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .boards import Board, load_board
from .emit.data import Vector, write_data_dir
from .fsutil import atomic_dir
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
VECTOR_SEED = 1234


def load(model: str | Path | M3ViT, config=None) -> M3ViT:
    """A model file/folder (state_dict + YAML, safetensors, M3ViT checkpoints) or a module."""
    if isinstance(model, M3ViT):
        return model.eval()
    from .frontend.loader import load_model

    return load_model(model, config)


def calibration_images(cfg: ModelConfig, count: int = 64, path: str | Path | None = None) -> np.ndarray:
    """User images from a .npy file [N,C,H,W], else images of the built-in synthetic dataset."""
    if path is None:
        return make_dataset(count, cfg, CALIB_SEED).images
    images = np.load(path)
    expected = (cfg.in_chans, cfg.img_size, cfg.img_size)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"calibration images must have shape [N, {', '.join(map(str, expected))}], got {list(images.shape)}")
    return images.astype(np.float32)


@dataclass
class Design:
    """Everything generated for one model on one board."""

    model: M3ViT
    qm: QuantModel
    prog: Program
    board: Board
    tiling: Tiling

    def predict(self, images: np.ndarray, task: int) -> np.ndarray:
        """What the accelerator returns, dequantised: backbone tokens [B, T, D] (bit-exact golden model)."""
        x_q = quantize_input(np.asarray(images, np.float32), self.qm)
        return np.stack([dequantize_output(self.qm, run_golden(self.qm, x, task).output) for x in x_q])

    def estimate(self, images: np.ndarray | None = None, task: int = 0) -> Estimate:
        counts = None
        if images is not None:
            x_q = quantize_input(np.asarray(images[:1], np.float32), self.qm)[0]
            counts = expert_counts_from_golden(self.qm, x_q, task)
        return estimate(self.prog, self.tiling, self.board, counts)


def convert(model, board: str | Board = "zcu104", wbits: int = 8, abits: int = 8, calib=None,
            config=None) -> Design:
    """Like hls4ml's convert_from_pytorch_model: quantise, compile and size the design for a board."""
    model = load(model, config)
    board = board if isinstance(board, Board) else load_board(board)
    images = calib if isinstance(calib, np.ndarray) else calibration_images(model.cfg, path=calib)
    qm = quantize_model(model, images, wbits=wbits, abits=abits)
    prog = compile_program(qm)
    return Design(model, qm, prog, board, choose_tiling(prog, board))


def vector_data(cfg: ModelConfig, images: int) -> SyntheticData:
    return make_dataset(images, cfg, VECTOR_SEED)


def _write_project(out: Path, design: Design, data: SyntheticData, project_name: str) -> None:
    from .emit.hls import render_hls
    from .frontend.loader import save_model
    from .sim.cosim import render_project_rtl

    x_q = quantize_input(data.images, design.qm)
    vectors = [Vector(f"img{i}_task{t}", t, x_q[i]) for i in range(len(data)) for t in range(design.qm.cfg.num_tasks)]
    write_data_dir(out / "data", design.prog, design.qm, vectors)
    _add_image_index(out / "data" / "manifest.json")
    np.savez_compressed(out / "data" / "images.npz", images=data.images, seg=data.seg, depth=data.depth)
    params = tiling_params(design.tiling)
    render_hls(out, design.prog, design.board, tile=params, project_name=project_name)
    render_project_rtl(out, design.prog, tile=params)
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
    design = model if isinstance(model, Design) else convert(model, board, wbits, abits, calib, config)
    data = vector_data(design.qm.cfg, images)
    with atomic_dir(Path(out_dir), force) as tmp:
        _write_project(tmp, design, data, project_name)
    return Path(out_dir)


def csim(project_dir: str | Path, dump_dir: str | Path | None = None):
    from .sim.csim import run_csim

    return run_csim(Path(project_dir), dump_dir=None if dump_dir is None else Path(dump_dir))


def cosim(project_dir: str | Path, simulator: str = "verilator", waves: bool = False, vectors=None):
    from .sim.cosim import run_cosim

    return run_cosim(Path(project_dir), simulator=simulator, waves=waves, vectors=vectors)


def compare(project_dir: str | Path, results_dir: str | Path, out_dir: str | Path | None = None):
    from .report.compare import compare_results

    return compare_results(Path(project_dir), Path(results_dir), None if out_dir is None else Path(out_dir))
