"""The quantiser's two halves (calibration -> scales, scales -> integer model) and its messages."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from codesign.model.config import ModelConfig
from codesign.model.m3vit import M3ViT
from codesign.quant.quantize import PROFILE_SAMPLES, quantize_model, quantize_with_scales
from codesign.schedule.program import compile_program


def _model(seed: int = 0) -> M3ViT:
    torch.manual_seed(seed)
    return M3ViT(ModelConfig()).eval()


def _calib(count: int = 4) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((count, 3, 32, 32)).astype(np.float32)


def test_a_projects_scales_rebuild_the_same_integer_model():
    """predict re-quantises a project from model/ and project.json's scales: byte for byte the same program."""
    model = _model()
    qm = quantize_model(model, _calib())
    again = quantize_with_scales(model, qm.scales, qm.wbits, qm.abits)
    prog, prog_again = compile_program(qm), compile_program(again)
    assert prog.code == prog_again.code and prog.wgt == prog_again.wgt
    assert again.scales == qm.scales


def test_calibration_keeps_a_sample_of_every_activation_for_the_profile():
    qm = quantize_model(_model(), _calib())
    samples = qm.meta["activation_samples"]
    assert {"input", "patch", "b0.q", "b0.k", "b0.v", "b3.res2", "norm"} <= set(samples)
    assert all(0 < len(v) <= 2 * PROFILE_SAMPLES for v in samples.values())  # two tasks
    amax = np.abs(samples["b0.q"]).max()
    assert amax <= qm.scales["b0.q"] * 127 * (1 + 1e-6)  # a sample never exceeds the calibrated range


@pytest.mark.parametrize("parameter, message", [
    # Issue 14: "ATTN.score_mult = -9223372036854775808 does not fit an unsigned 32-bit field"
    ("blocks.0.attn.qkv.weight", r"^cannot quantise b0\.attn: requantisation scale \S+ is too large for a 32-bit "
                                 r"multiplier \(input scales: b0\.q \S+e\+\d\d, b0\.k"),
    ("blocks.0.mlp.fc1.weight", r"^cannot quantise b1\.ln1: its activations overflow float32 .* the first "
                                r"activation beyond 1e\+15 is b0\.fc1 \(max \|x\| \S+e\+\d\d\): check its weights$"),
])
def test_an_absurd_weight_is_refused_naming_the_layer_and_the_scale(parameter, message):
    model = _model()
    with torch.no_grad():
        dict(model.named_parameters())[parameter].view(-1)[0] = 1e30
    with pytest.raises(ValueError, match=message) as excinfo:
        quantize_model(model, _calib())
    assert "\n" not in str(excinfo.value)
