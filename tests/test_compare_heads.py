"""compare on an M3ViT-shaped project: per-task metrics through the ViT-up heads, for every task kind."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from codesign.emit.data import Vector, write_data_dir
from codesign.frontend.loader import save_model
from codesign.model.config import ModelConfig, TaskSpec
from codesign.model.data import make_dataset
from codesign.model.train import evaluate_outputs
from codesign.quant.quantize import quantize_input
from codesign.report.compare import HEADLINE_METRICS, compare_results, output_region
from codesign.testing import make_test_design
from test_heads import randomised

TASKS = (TaskSpec("semseg", "seg", 5), TaskSpec("sal", "saliency", 1), TaskSpec("normals", "normals", 3),
         TaskSpec("edge", "edge", 1), TaskSpec("depth", "depth", 1))
CFG = ModelConfig(img_size=(16, 32), embed_dim=32, num_heads=2, depth=2, moe_blocks=(1,), num_experts=4,
                  final_norm=False, head="vit_up", head_channels=8, tasks=TASKS)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    out = tmp_path_factory.mktemp("m3vit_project")
    design = make_test_design(CFG)
    for head in design.model.decoders:
        randomised(head)
    data = make_dataset(1, CFG, seed=5)
    x_q = quantize_input(data.images, design.qm)
    vectors = [Vector(f"img0_task{t}", t, x_q[0]) for t in range(len(TASKS))]
    write_data_dir(out / "data", design.prog, design.qm, vectors)
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    for vec in manifest["vectors"]:
        vec["image"] = 0
    (out / "data" / "manifest.json").write_text(json.dumps(manifest))
    np.savez_compressed(out / "data" / "images.npz", images=data.images, seg=data.seg, depth=data.depth)
    save_model(design.model, out / "model")
    (out / "project.json").write_text(json.dumps({"board": "zcu104", "wbits": 8, "abits": 8, "model_dir": "model",
                                                  "output_scale": design.qm.output_scale}))
    return out, design, data, manifest


def test_compare_scores_every_task_through_its_vit_up_head(project, tmp_path):
    out, design, data, manifest = project
    results = tmp_path / "results"
    results.mkdir()
    for vec in manifest["vectors"]:
        shutil.copy(out / "data" / vec["expected"], results / f"{vec['id']}.act.bin")
    report = compare_results(out, results, tmp_path / "report")
    assert report.all_bit_exact and [t.name for t in report.tasks] == [t.name for t in TASKS]
    for t, task in enumerate(report.tasks):
        tokens = output_region(manifest, (results / f"img0_task{t}.act.bin").read_bytes()) * design.qm.output_scale
        with torch.no_grad():
            head_out = design.model.head(torch.as_tensor(tokens[None], dtype=torch.float32), t).numpy()
        expected = evaluate_outputs(TASKS[t], head_out, data, [0])
        assert set(HEADLINE_METRICS[TASKS[t].kind]) <= set(task.metrics["result"])
        for key in HEADLINE_METRICS[TASKS[t].kind]:
            assert task.metrics["result"][key] == pytest.approx(expected[key], abs=1e-6)
    text = (tmp_path / "report" / "report.md").read_text()
    # one metric per column, a table per task: the saliency task's columns are its headline metrics
    assert "| model | mean_angle | median_angle |" in text and "| model | iou | f1 |" in text
