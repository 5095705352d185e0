"""Joint multi-task training of the float M3ViT on the synthetic scenes, and its metrics.

Every task runs the shared backbone with its own gate, as M3ViT does, and the task
losses are summed so one Adam step updates backbone, experts, gates and all heads.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import TASK_KINDS, ModelConfig, TaskSpec
from .data import NUM_CLASSES, SyntheticData, make_dataset
from .m3vit import M3ViT

DEFAULT_STEPS = 600
DEFAULT_BATCH = 32
DEFAULT_TRAIN_IMAGES = 4096
DEFAULT_LR = 5e-3
# One thread: the matrices are tiny, so a second thread gains only ~15%, while on a shared,
# busy machine OpenMP's spinning barriers made 2-thread runs up to 10x slower. A fixed count
# also makes the float sums, hence the trained weights, the same on every machine.
DEFAULT_THREADS = 1
# The high learning rate is what makes training fit in seconds; clipping keeps its early,
# large-gradient steps from knocking the attention and gates into a poor basin.
GRAD_CLIP = 1.0
# Squared depth errors are ~0.01-0.1 while CE starts at ~1.4; the weight keeps both tasks pulling
# on the backbone. MSE rather than L1 because depth is scored by RMSE: L1 leaves sharp, costly
# errors at shape borders where MSE settles for the cheaper in-between value.
DEPTH_LOSS_WEIGHT = 20.0
BINARY_KINDS = ("saliency", "edge")  # one logit per pixel
KIND_CHANNELS = {"depth": 1, "saliency": 1, "edge": 1, "normals": 3}


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Pin the thread count for reproducible float sums, then restore the caller's setting."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_model(cfg: ModelConfig | None = None, steps: int = DEFAULT_STEPS, seed: int = 0,
                batch: int = DEFAULT_BATCH, progress: bool = True, lr: float = DEFAULT_LR,
                train_images: int = DEFAULT_TRAIN_IMAGES, threads: int | None = DEFAULT_THREADS) -> M3ViT:
    """A model trained on make_dataset(train_images, cfg, seed); returned in eval mode.

    Score it on data from another seed (the README numbers use seed 1234).
    """
    cfg = cfg or ModelConfig()
    _check_tasks_fit_data(cfg)
    data = make_dataset(train_images, cfg, seed)
    with torch_threads(threads):
        torch.manual_seed(seed)
        model = M3ViT(cfg)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(steps))
        batches = np.random.default_rng(seed).integers(0, len(data), (steps, batch))
        bar = tqdm(batches, desc="train", disable=not progress, leave=False)
        model.train()
        for index in bar:
            loss = _step(model, optimizer, data.subset(index))
            schedule.step()
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    return model.eval()


def _step(model: M3ViT, optimizer: torch.optim.Optimizer, batch: SyntheticData) -> float:
    loss = multitask_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return loss.item()


def multitask_loss(model: M3ViT, data: SyntheticData) -> torch.Tensor:
    images = torch.from_numpy(data.images)
    total = images.new_zeros(())
    for task_id, task in enumerate(model.cfg.tasks):
        pred = model(images, task_id)
        total = total + task_loss(task, pred, torch.from_numpy(data.target(task)))
    return total


def task_loss(task: TaskSpec, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task.kind == "seg":
        return F.cross_entropy(pred, target)
    if task.kind in BINARY_KINDS:
        return F.binary_cross_entropy_with_logits(pred, target)
    if task.kind == "normals":
        return F.l1_loss(F.normalize(pred, dim=1), target)
    return DEPTH_LOSS_WEIGHT * F.mse_loss(pred, target)


def _warmup_cosine(steps: int):
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return factor


def _check_tasks_fit_data(cfg: ModelConfig) -> None:
    for task in cfg.tasks:
        if task.kind not in TASK_KINDS:
            raise ValueError(f"task {task.name!r}: unknown kind {task.kind!r}")
        if task.kind == "seg" and task.out_channels < NUM_CLASSES:
            raise ValueError(f"seg task {task.name!r} has {task.out_channels} outputs, "
                             f"the data has {NUM_CLASSES} classes")
        wanted = KIND_CHANNELS.get(task.kind)
        if wanted is not None and task.out_channels != wanted:
            raise ValueError(f"{task.kind} task {task.name!r} must have {wanted} output(s), not {task.out_channels}")


# ---------------------------------------------------------------- metrics

@torch.no_grad()
def predict(model: M3ViT, images: np.ndarray, task_id: int, batch: int = 256) -> np.ndarray:
    """Head outputs [N, C, H, W] of one task, in eval mode (the caller's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        chunks = (torch.from_numpy(images[i:i + batch]) for i in range(0, len(images), batch))
        return np.concatenate([model(chunk, task_id).numpy() for chunk in chunks])
    finally:
        model.train(was_training)


def evaluate(model: M3ViT, data: SyntheticData, task_ids=None) -> dict[str, dict]:
    """Metrics per task name, e.g. {"semseg": {"pixel_acc": .., "miou": ..}, "depth": {"rmse": ..}}."""
    tasks = model.cfg.tasks
    task_ids = range(len(tasks)) if task_ids is None else task_ids
    return {tasks[t].name: evaluate_outputs(tasks[t], predict(model, data.images, t), data) for t in task_ids}


def evaluate_outputs(task: TaskSpec, pred: np.ndarray, data: SyntheticData, indices=None) -> dict:
    """Metric of one task from head outputs [N, C, H, W] given as numpy.

    `indices` says which samples of `data` the N outputs belong to (default: all, in order),
    so a caller that ran only part of the data (e.g. a slow golden model) can still be scored.
    """
    target = data.target(task) if indices is None else data.target(task)[indices]
    pred = np.asarray(pred)
    expected = (len(target), task.out_channels, *target.shape[-2:])
    if pred.shape != expected:
        raise ValueError(f"task {task.name!r}: outputs have shape {list(pred.shape)}, expected {list(expected)}")
    if task.kind == "seg":
        return segmentation_metrics(pred.argmax(axis=1), target, task.out_channels)
    if task.kind in BINARY_KINDS:
        return binary_metrics(pred > 0, target > 0.5)
    if task.kind == "normals":
        return normals_metrics(pred, target)
    return depth_metrics(pred, target)


def segmentation_metrics(labels: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    """Pixel accuracy and mean IoU over the classes that occur in prediction or target."""
    if target.max(initial=0) >= num_classes:
        raise ValueError(f"target has class {target.max()} but only {num_classes} outputs")
    confusion = np.bincount(target.ravel() * num_classes + labels.ravel(), minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes).astype(np.float64)
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    iou = hits[union > 0] / union[union > 0]
    return {"pixel_acc": float(hits.sum() / confusion.sum()), "miou": float(iou.mean()),
            "iou": [float(v) if u > 0 else float("nan") for v, u in zip(hits / np.maximum(union, 1), union)]}


def binary_metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    """Foreground IoU, F1 and pixel accuracy of boolean maps (a positive logit means foreground)."""
    hits = float(np.sum(pred & target))
    predicted, actual = float(np.sum(pred)), float(np.sum(target))
    union = predicted + actual - hits
    return {"iou": hits / union if union else 1.0, "f1": 2 * hits / (predicted + actual) if union else 1.0,
            "pixel_acc": float(np.mean(pred == target))}


def normals_metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    """Angle in degrees between the predicted (normalised) and the target normals [N, 3, H, W]."""
    pred = pred.astype(np.float64)
    unit = pred / np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-12)
    angle = np.degrees(np.arccos(np.clip(np.sum(unit * target, axis=1), -1.0, 1.0)))
    return {"mean_angle": float(angle.mean()), "median_angle": float(np.median(angle)),
            "within_11_25": float(np.mean(angle < 11.25))}


def agreement_with_float(kind: str, float_out: np.ndarray, out: np.ndarray) -> dict:
    """How closely a head's outputs [N, C, H, W] follow the float model's on the same images."""
    if kind == "seg":
        return {"label_agreement": float(np.mean(float_out.argmax(1) == out.argmax(1)))}
    if kind in BINARY_KINDS:
        return {"label_agreement": float(np.mean((float_out > 0) == (out > 0)))}
    return {"rmse_vs_float": float(np.sqrt(np.mean((float_out - out) ** 2)))}


def depth_metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    error = pred.astype(np.float64) - target
    return {"rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error))),
            "target_std": float(np.std(target))}


def held_out_metrics(model: M3ViT, n: int = 256, seed: int = 1234) -> dict[str, dict]:
    return evaluate(model, make_dataset(n, model.cfg, seed))
