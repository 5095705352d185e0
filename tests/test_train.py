"""Synthetic data, joint multi-task training and the task metrics."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from codesign.model.config import ModelConfig, TaskSpec
from codesign.model.data import NUM_CLASSES, make_dataset
from codesign.model.m3vit import M3ViT
from codesign.model.train import (evaluate, evaluate_outputs, multitask_loss, task_loss, torch_threads,
                                  train_model)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: a second thread only adds contention. Restored for other test modules."""
    with torch_threads(1):
        yield


TINY = ModelConfig(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_experts=4, top_k=2,
                   moe_blocks=(1,))


def test_dataset_is_deterministic_per_seed():
    a, b, c = (make_dataset(40, ModelConfig(), seed) for seed in (3, 3, 4))
    for field in ("images", "seg", "depth"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
        assert not np.array_equal(getattr(a, field), getattr(c, field))


def test_dataset_shapes_classes_and_ranges():
    cfg = ModelConfig()
    data = make_dataset(300, cfg, seed=0)
    assert data.images.shape == (300, 3, 32, 32) and data.images.dtype == np.float32
    assert data.seg.shape == (300, 32, 32) and data.seg.dtype == np.int64
    assert data.depth.shape == (300, 1, 32, 32) and data.depth.dtype == np.float32
    assert set(np.unique(data.seg)) == set(range(NUM_CLASSES))
    assert (data.seg > 0).reshape(300, -1).any(axis=1).all()  # every image shows at least one shape
    assert abs(data.images.mean()) < 0.1 and np.abs(data.images).max() < 2
    depth = data.depth[:, 0]
    assert depth[data.seg > 0].max() < depth[data.seg == 0].min()  # shapes stand in front of the background


def test_dataset_follows_image_size():
    data = make_dataset(5, ModelConfig(img_size=16), seed=0)
    assert data.images.shape == (5, 3, 16, 16) and data.seg.shape == (5, 16, 16)
    wide = make_dataset(40, ModelConfig(img_size=(32, 64)), seed=0)
    assert wide.images.shape == (40, 3, 32, 64) and wide.depth.shape == (40, 1, 32, 64)
    assert (wide.seg[:, :, 32:] > 0).any()  # shapes are placed across the whole width


def test_dataset_is_fast():
    start = time.perf_counter()
    make_dataset(2000, ModelConfig(), seed=0)
    assert time.perf_counter() - start < 5  # ~0.3 s on an idle core; slack for busy machines


def test_short_training_lowers_the_loss():
    held_out = make_dataset(64, TINY, seed=99)
    torch.manual_seed(0)  # train_model draws its initial weights the same way
    untrained = M3ViT(TINY).eval()
    trained = train_model(TINY, steps=60, batch=16, train_images=256, progress=False)
    with torch.no_grad():
        before, after = multitask_loss(untrained, held_out).item(), multitask_loss(trained, held_out).item()
        seg_before, seg_after = (seg_loss(model, held_out) for model in (untrained, trained))
    assert after < 0.5 * before
    assert seg_after < 0.8 * seg_before  # not just the depth offset being learned
    assert not trained.training


def seg_loss(model: M3ViT, data) -> float:
    task = model.cfg.tasks[0]
    return task_loss(task, model(torch.from_numpy(data.images), 0), torch.from_numpy(data.seg)).item()


def test_training_is_deterministic():
    a = train_model(TINY, steps=5, batch=8, train_images=32, progress=False, seed=2)
    b = train_model(TINY, steps=5, batch=8, train_images=32, progress=False, seed=2)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_training_rejects_tasks_the_data_cannot_supervise():
    cfg = ModelConfig(tasks=(TaskSpec("semseg", "seg", 2),))
    with pytest.raises(ValueError, match="semseg"):
        train_model(cfg, steps=1, progress=False)


def test_evaluate_returns_metrics_per_task():
    data = make_dataset(20, TINY, seed=5)
    torch.manual_seed(0)
    metrics = evaluate(M3ViT(TINY), data)
    assert set(metrics) == {"semseg", "depth"}
    assert {"pixel_acc", "miou"} <= set(metrics["semseg"]) and "rmse" in metrics["depth"]
    assert 0 <= metrics["semseg"]["pixel_acc"] <= 1 and 0 <= metrics["semseg"]["miou"] <= 1
    assert set(evaluate(M3ViT(TINY), data, task_ids=[1])) == {"depth"}


def test_evaluate_outputs_scores_perfect_and_partial_predictions():
    data = make_dataset(10, TINY, seed=6)
    seg_task, depth_task = TINY.tasks
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[data.seg].transpose(0, 3, 1, 2)
    perfect = evaluate_outputs(seg_task, one_hot, data)
    assert perfect["pixel_acc"] == perfect["miou"] == 1 and perfect["iou"] == [1.0] * NUM_CLASSES
    assert evaluate_outputs(depth_task, data.depth, data)["rmse"] == 0
    shifted = evaluate_outputs(depth_task, data.depth[2:5] + 0.5, data, indices=slice(2, 5))
    assert shifted["rmse"] == pytest.approx(0.5)
    all_background = np.zeros_like(one_hot)
    all_background[:, 0] = 1
    score = evaluate_outputs(seg_task, all_background, data)
    assert score["pixel_acc"] == pytest.approx((data.seg == 0).mean())
    assert score["miou"] == pytest.approx(score["pixel_acc"] / NUM_CLASSES)
    with pytest.raises(ValueError):
        evaluate_outputs(seg_task, one_hot[:3], data)


def test_saliency_edge_and_normals_are_scored_against_their_derived_targets():
    data = make_dataset(6, TINY, seed=7)
    sal, edge, normals = TaskSpec("sal", "saliency", 1), TaskSpec("edge", "edge", 1), TaskSpec("n", "normals", 3)
    foreground = data.seg[:, None] > 0
    assert evaluate_outputs(sal, np.where(foreground, 3.0, -3.0), data) == {"iou": 1.0, "f1": 1.0, "pixel_acc": 1.0}
    inverted = evaluate_outputs(sal, np.where(foreground, -3.0, 3.0), data)
    assert inverted["iou"] == 0 and inverted["pixel_acc"] == 0
    assert evaluate_outputs(edge, data.target(edge) * 2 - 1, data)["f1"] == 1.0
    target = data.target(normals)
    assert np.allclose(np.linalg.norm(target, axis=1), 1) and (target[:, 2] > 0).all()
    assert evaluate_outputs(normals, 0.5 * target, data)["mean_angle"] == pytest.approx(0, abs=0.05)  # any length
    sideways = np.cross(target, [1.0, 0.0, 0.0], axisa=1, axisb=0, axisc=1)  # perpendicular to each normal
    assert evaluate_outputs(normals, sideways, data)["mean_angle"] == pytest.approx(90, abs=1e-3)


def test_training_supervises_every_task_kind():
    cfg = ModelConfig(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, moe_blocks=(),
                      tasks=(TaskSpec("sal", "saliency", 1), TaskSpec("edge", "edge", 1), TaskSpec("n", "normals", 3)))
    train_model(cfg, steps=2, progress=False, train_images=8, batch=4)
    with pytest.raises(ValueError, match="normals task 'n' must have 3 output"):
        train_model(ModelConfig(tasks=(TaskSpec("n", "normals", 1),)), steps=1, progress=False)


def test_bundled_example_model_loads_and_beats_trivial_baselines():
    from codesign.model.zoo import default_model_dir, load_default_model

    assert (default_model_dir() / "model.pt").is_file()  # shipped, so no training happens here
    model = load_default_model()
    metrics = evaluate(model, make_dataset(64, model.cfg, seed=1234))
    assert metrics["semseg"]["pixel_acc"] > 0.9 and metrics["semseg"]["miou"] > 0.7
    assert metrics["depth"]["rmse"] < 0.5 * metrics["depth"]["target_std"]
