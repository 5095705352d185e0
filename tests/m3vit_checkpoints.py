"""Checkpoints laid out exactly as VITA-Group/M3ViT's save_checkpoint writes them, with random values.

The layouts are the listings in tests/data/m3vit (see its README): per rank file the wrapper
{epoch, backbone, state_dict, best_result, optimizer}, and every `module.*` key with its shape
and dtype. `write_checkpoint` reproduces one of them, optionally with fewer blocks (the same key
patterns, for speed). What it does not reproduce is the bulk of the training-only state: the
tam_model* tensors (the loader drops them) are zero views of one shared storage, and the
optimizer state holds one such view, so a file costs megabytes rather than the real gigabyte.
`best_result` holds numpy scalars pickled under numpy 1.x's name, numpy.core.multiarray.scalar,
as M3ViT's environment writes them.
"""
from __future__ import annotations

import ast
import json
import math
import pickle
import re
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from codesign.frontend.loader import NUMPY_SCALAR
from codesign.model.config import ModelConfig, TaskSpec

LAYOUT_DIR = Path(__file__).resolve().parent / "data" / "m3vit"
VARIANTS = ("pascal_mg.sharded", "pascal_mg.single", "pascal_mg_yml.sharded", "pascal_onehot64.sharded",
            "pascal_onehot_default.sharded", "nyud_mg.sharded", "cityscapes_tiny_yml.sharded")
# M3ViT's task names and what they predict.
TASK_KINDS = {"semseg": "seg", "human_parts": "seg", "sal": "saliency", "normals": "normals", "edge": "edge",
              "depth": "depth"}
BLOCK_KEY = re.compile(r"\.blocks\.(\d+)\.")
EXPERT_KEY = re.compile(r"\.mlp\.experts\.")
NORM_WEIGHT = re.compile(r"(norm\d?|syncbn_fc_\d)\.weight$")


@dataclass
class RankFile:
    name: str  # 0.pth, 1.pth, ... or the single file's name
    top_level: list[str]
    best_result: list[str]
    keys: dict[str, tuple[list[int], str]] = field(default_factory=dict)  # key -> (shape, dtype)


@dataclass
class Layout:
    variant: str
    meta: dict
    files: list[RankFile]

    @property
    def sharded(self) -> bool:
        return self.meta["layout"] == "sharded"


@dataclass
class Fixture:
    path: Path  # what the user passes: the best_model.pth.tar folder or file
    layout: Layout
    cfg: ModelConfig
    full: dict[str, torch.Tensor]  # every key of rank 0, experts of all ranks concatenated (M3ViT's own merge)


def read_layout(variant: str) -> Layout:
    meta = json.loads((LAYOUT_DIR / f"{variant}.meta.json").read_text())
    files: list[RankFile] = []
    for line in (LAYOUT_DIR / f"{variant}.keys.txt").read_text().splitlines():
        if line.startswith("# "):
            files.append(RankFile(line.rsplit("/", 1)[-1], [], []))
        elif line.startswith("top-level keys: "):
            files[-1].top_level = ast.literal_eval(line.split(": ", 1)[1])
        elif line.startswith("  best_result: dict keys="):
            files[-1].best_result = ast.literal_eval(line.split("=", 1)[1])
        elif files and "\t" in line:
            key, shape, dtype = line.split("\t")
            files[-1].keys[key] = (ast.literal_eval(shape), dtype)
    return Layout(variant, meta, files)


def config_from_meta(meta: dict, depth: int | None = None) -> ModelConfig:
    """The model M3ViT's training arguments describe: every odd block MoE, no final norm, ViT-up heads."""
    kw = meta["backbone_kwargs"]
    depth = kw["depth"] if depth is None else depth
    if meta["multi_gate"]:
        gate = {"gate_type": "multi"}
    elif meta["gate_task_specific_dim"] > 0:
        gate = {"gate_type": "task_embed", "gate_task_dim": meta["gate_task_specific_dim"]}
    else:
        gate = {"gate_type": "shared"}
    tasks = tuple(TaskSpec(t, TASK_KINDS[t], meta["num_output"][t]) for t in meta["tasks"])
    return ModelConfig(img_size=tuple(kw["img_size"]), patch_size=kw["patch_size"], in_chans=kw["in_chans"],
                       embed_dim=kw["embed_dim"], depth=depth, num_heads=kw["num_heads"], mlp_ratio=kw["mlp_ratio"],
                       moe_mlp_ratio=float(kw["moe_mlp_ratio"]), num_experts=meta["moe_experts_total"],
                       top_k=kw["moe_top_k"], moe_blocks=tuple(range(1, depth, 2)), tasks=tasks, final_norm=False,
                       head="vit_up", head_channels=256, **gate)


def _kept(key: str, depth: int) -> bool:
    block = BLOCK_KEY.search(key)
    return block is None or int(block[1]) < depth


class _TrainingOnly:
    """Zero tensors of any shape, all views of one storage (torch.save writes it once)."""

    def __init__(self, keys: dict):
        largest = max((math.prod(shape) for key, (shape, _) in keys.items() if ".tam_model" in key), default=1)
        self.storage = torch.zeros(largest)

    def __call__(self, shape: list[int]) -> torch.Tensor:
        return self.storage[: math.prod(shape)].view(shape)


def _random(key: str, shape: list[int], dtype: str, gen: torch.Generator) -> torch.Tensor:
    if dtype == "int64":
        return torch.ones(shape, dtype=torch.int64)  # num_batches_tracked
    if key.endswith("running_var"):
        return torch.rand(shape, generator=gen) + 0.5
    if NORM_WEIGHT.search(key):
        return 1 + 0.1 * torch.randn(shape, generator=gen)
    if key.endswith(("cls_token", "pos_embed")):
        return 0.02 * torch.randn(shape, generator=gen)
    if len(shape) <= 1 or key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=gen)
    fan_in = shape[0] if key.endswith("w_gate") else math.prod(shape[2:] if EXPERT_KEY.search(key) else shape[1:])
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def _full_tensors(layout: Layout, depth: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rank0, ranks = layout.files[0].keys, len(layout.files)
    zeros = _TrainingOnly(rank0)
    full = {}
    for key, (shape, dtype) in rank0.items():
        if not _kept(key, depth):
            continue
        if ".tam_model" in key:
            full[key] = zeros(shape)
            continue
        if EXPERT_KEY.search(key):
            shape = [shape[0] * ranks, *shape[1:]]
        full[key] = _random(key, shape, dtype, gen)
    return full


def _rank_state(full: dict, rank_file: RankFile, rank: int, depth: int) -> dict[str, torch.Tensor]:
    state = {}
    for key, (shape, _) in rank_file.keys.items():
        if not _kept(key, depth):
            continue
        value = full[key]
        if EXPERT_KEY.search(key):
            value = value[rank * shape[0]:(rank + 1) * shape[0]].clone()
        assert list(value.shape) == shape, (key, value.shape, shape)
        state[key] = value
    return state


def _wrapper(rank_file: RankFile, state: dict) -> dict:
    """{epoch, backbone, state_dict, best_result, optimizer}, in the listed order."""
    best = {name: np.float64(0.25) if name == "multi_task_performance" else {"mIoU": np.float64(0.125),
                                                                              "loss": np.float32(1.5)}
            for name in rank_file.best_result}
    any_tensor = next(iter(state.values()))
    values = {"epoch": 1, "backbone": "VisionTransformer_moe", "state_dict": state, "best_result": best,
              "optimizer": {"state": {0: {"momentum_buffer": torch.zeros_like(any_tensor)}},
                            "param_groups": [{"lr": 1e-4, "momentum": 0.9, "weight_decay": 1e-4,
                                              "params": list(range(len(state)))}]}}
    assert set(values) == set(rank_file.top_level)
    return {name: values[name] for name in rank_file.top_level}


class _Numpy1Pickler(pickle._Pickler):
    """Names numpy's scalar constructor as numpy 1.x does (numpy.core.multiarray.scalar)."""

    def save_global(self, obj, name=None):
        if obj is NUMPY_SCALAR:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


NUMPY1_PICKLE = types.ModuleType("numpy1_pickle")
NUMPY1_PICKLE.Pickler = _Numpy1Pickler
NUMPY1_PICKLE.Unpickler = pickle.Unpickler


def save_like_m3vit(obj, path: Path) -> None:
    torch.save(obj, path, pickle_module=NUMPY1_PICKLE)


def write_checkpoint(variant: str, root: Path, depth: int = 2, seed: int = 0) -> Fixture:
    """Write `variant` (see VARIANTS) under root as M3ViT names it: a best_model.pth.tar folder of rank
    files (sharded) or a best_model.pth.tar file (single)."""
    layout = read_layout(variant)
    full = _full_tensors(layout, depth, seed)
    target = Path(root) / "best_model.pth.tar"
    (target if layout.sharded else target.parent).mkdir(parents=True, exist_ok=True)
    for rank, rank_file in enumerate(layout.files):
        path = target / rank_file.name if layout.sharded else target
        save_like_m3vit(_wrapper(rank_file, _rank_state(full, rank_file, rank, depth)), path)
    return Fixture(target, layout, config_from_meta(layout.meta, depth), full)
