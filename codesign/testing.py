"""Small designs for tests and development: a random-weight model, quantised and compiled."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .emit.data import Vector, write_data_dir
from .model.config import ModelConfig
from .model.m3vit import M3ViT
from .quant.qmodel import QuantModel
from .quant.quantize import quantize_input, quantize_model
from .schedule.program import Program, compile_program


@dataclass
class TestDesign:
    model: M3ViT
    qm: QuantModel
    prog: Program
    vectors: list[Vector]


def make_test_design(cfg: ModelConfig | None = None, seed: int = 0, images: int = 1,
                     wbits: int = 8, abits: int = 8) -> TestDesign:
    cfg = cfg or ModelConfig()
    torch.manual_seed(seed)
    model = M3ViT(cfg).eval()
    rng = np.random.default_rng(seed)
    calib = rng.standard_normal((8, cfg.in_chans, *cfg.image_hw)).astype(np.float32)
    qm = quantize_model(model, calib, wbits=wbits, abits=abits)
    xq = quantize_input(calib[:images], qm)
    vectors = [Vector(f"img{i}_task{t}", t, xq[i]) for i in range(images) for t in range(cfg.num_tasks)]
    return TestDesign(model, qm, compile_program(qm), vectors)


def write_test_data(data_dir: Path, design: TestDesign) -> Path:
    return write_data_dir(data_dir, design.prog, design.qm, design.vectors)


class PynqBufferStub(np.ndarray):
    """Stands in for pynq.allocate's buffer in driver tests: an ndarray whose cache operations do nothing."""

    def flush(self):
        pass

    def invalidate(self):
        pass

    def freebuffer(self):
        pass
