"""The numerical profile (hls4ml's profiling.numerical): weights and activations per layer
against the range of their integer formats."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from codesign.model.config import ModelConfig
from codesign.model.m3vit import M3ViT
from codesign.quant import arith as A
from codesign.quant.quantize import quantize_model, quantize_with_scales
from codesign.report.profiling import activation_rows, layer_weights, profile_figure, profile_panels, write_profile


@pytest.fixture(scope="module")
def model_and_qm():
    torch.manual_seed(0)
    model = M3ViT(ModelConfig()).eval()
    calib = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    return model, quantize_model(model, calib, wbits=6, abits=8)


def test_every_quantised_weight_matrix_has_a_row_in_execution_order(model_and_qm):
    model, qm = model_and_qm
    names = [name for name, _, _ in layer_weights(model)]
    assert names[:5] == ["patch", "b0.qkv", "b0.proj", "b0.fc1", "b0.fc2"]
    assert names[5:10] == ["b1.qkv", "b1.proj", "b1.gate", "b1.experts.fc1", "b1.experts.fc2"]
    experts = dict((n, w) for n, w, _ in layer_weights(model))["b1.experts.fc1"]
    assert experts.shape == (8 * 128, 64)  # every expert's fc1 rows pooled


def test_the_grey_bars_are_the_formats_lsb_and_top(model_and_qm):
    model, qm = model_and_qm
    (_, weights), (_, activations) = profile_panels(model, qm)
    rows = {r.name: r for r in weights}
    w = model.blocks[0].attn.qkv.weight.detach().double().numpy()
    amax = np.abs(w).max(axis=1)
    qkv = rows["b0.qkv"]
    assert qkv.low == pytest.approx(np.log2(amax.min() / A.qmax(6))) and qkv.high == pytest.approx(np.log2(amax.max()))
    assert qkv.stats["whishi"] == pytest.approx(np.log2(amax.max())) and qkv.saturated == 0
    acts = {r.name: r for r in activations}
    assert acts["b0.q"].low == pytest.approx(np.log2(qm.scales["b0.q"]))
    assert acts["b0.q"].high == pytest.approx(np.log2(qm.scales["b0.q"] * 127))
    assert acts["b0.q"].stats["whishi"] <= acts["b0.q"].high + 1e-9  # calibrated: the largest value fits
    assert list(acts)[:3] == ["input", "patch", "embed"] and "norm" in acts


def test_the_profile_is_a_png_in_seconds(model_and_qm, tmp_path):
    model, qm = model_and_qm
    path = write_profile(tmp_path / "profile.png", model, qm)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # re-quantised from scales (as predict does), there are no samples: the weights panel still draws
    bare = quantize_with_scales(model, qm.scales, qm.wbits, qm.abits)
    assert activation_rows(bare) == [] and len(profile_figure(model, bare).axes) == 2
