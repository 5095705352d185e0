"""The PYNQ driver's host side (hls_templates/driver.py.j2): image -> patch rows, tokens -> task outputs."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from codesign.boards import load_board
from codesign.emit.host import write_host_files
from codesign.emit.tcl import render_tcl_and_driver
from codesign.model.config import ModelConfig
from codesign.quant.golden import run_golden
from codesign.quant.quantize import quantize_input
from codesign.testing import make_test_design
from test_heads import randomised

CONFIGS = {
    "linear": ModelConfig(img_size=(16, 32), embed_dim=32, num_heads=2, depth=2, moe_blocks=(1,), num_experts=4),
    "vit_up": ModelConfig(img_size=(16, 32), embed_dim=32, num_heads=2, depth=2, moe_blocks=(1,), num_experts=4,
                          final_norm=False, head="vit_up", head_channels=8),
}


@pytest.fixture(scope="module")
def driver_module(tmp_path_factory):
    out = tmp_path_factory.mktemp("driver")
    render_tcl_and_driver(out, load_board("zcu104"), "codesign")
    spec = importlib.util.spec_from_file_location("rendered_host_driver", out / "host" / "driver.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("head", CONFIGS)
def test_driver_quantises_images_and_runs_heads_like_the_reference(driver_module, tmp_path, head):
    design = make_test_design(CONFIGS[head], images=1)
    model = design.model
    for decoder in model.decoders:
        randomised(decoder)
    write_host_files(tmp_path, model, design.qm)
    host = driver_module.HostModel(tmp_path)
    image = np.random.default_rng(0).standard_normal((3, 16, 32)).astype(np.float32)
    x_q = host.quantize(image)
    assert np.array_equal(x_q, quantize_input(image[None], design.qm)[0])
    tokens_q = run_golden(design.qm, x_q, 1).output
    with torch.no_grad():
        reference = model.head(torch.as_tensor(tokens_q * design.qm.output_scale, dtype=torch.float32)[None], 1)[0]
    out = host.head(tokens_q, 1)
    assert out.shape == (CONFIGS[head].tasks[1].out_channels, 16, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference.numpy(), rtol=1e-4, atol=1e-4)


def test_driver_refuses_an_image_of_another_shape(driver_module, tmp_path):
    design = make_test_design(CONFIGS["vit_up"], images=1)
    write_host_files(tmp_path, design.model, design.qm)
    with pytest.raises(ValueError, match=r"image must have shape \[3, 16, 32\]"):
        driver_module.HostModel(tmp_path).quantize(np.zeros((3, 32, 16)))
