"""The bundled example model, and the configurations of VITA-Group/M3ViT's published models.

The example is a default-config M3ViT trained on the synthetic scenes. It ships in
examples/tiny_m3vit so the flow can run end to end without training first;
ensure_default_model() rebuilds it with the exact settings documented in its README.

M3VIT_CONFIGS are what M3ViT's training scripts build (configs/*/vit_moe/*.yml plus the README's
flags): every odd block an MoE block, no final norm, one ViT-up head per task, one gate per task.
Write one as config.yaml next to a checkpoint (`yaml.safe_dump(cfg.to_dict())`) to load it.
"""
from __future__ import annotations

from pathlib import Path

from codesign.frontend.loader import load_model, save_model
from codesign.resources import resource_dir

from .config import ModelConfig, TaskSpec
from .m3vit import M3ViT
from .train import train_model

DEFAULT_SEED = 0

PASCAL_TASKS = (TaskSpec("semseg", "seg", 21), TaskSpec("human_parts", "seg", 7), TaskSpec("sal", "saliency", 1),
                TaskSpec("normals", "normals", 3), TaskSpec("edge", "edge", 1))
NYUD_TASKS = (TaskSpec("semseg", "seg", 40), TaskSpec("depth", "depth", 1))
CITYSCAPES_TASKS = (TaskSpec("semseg", "seg", 7), TaskSpec("depth", "depth", 1))


def m3vit_config(img_size, tasks, size: str = "small", top_k: int = 4, moe_mlp_ratio: float = 1.0,
                 **changes) -> ModelConfig:
    """An M3ViT model as its repository builds it (vit_small_patch16 or vit_tiny_patch16 backbone)."""
    dim, heads = {"small": (384, 12), "tiny": (192, 3)}[size]
    fields = dict(img_size=img_size, patch_size=16, embed_dim=dim, depth=12, num_heads=heads, mlp_ratio=4.0,
                  moe_mlp_ratio=moe_mlp_ratio, num_experts=16, top_k=top_k, moe_blocks=tuple(range(1, 12, 2)),
                  gate_type="multi", tasks=tasks, ln_eps=1e-6, final_norm=False, head="vit_up", head_channels=256)
    return ModelConfig(**{**fields, **changes})


M3VIT_CONFIGS = {
    # README flags: --moe_experts 16 --moe_top_k 4 --moe_mlp_ratio 1
    "pascal-small": m3vit_config((512, 512), PASCAL_TASKS),
    "nyud-small": m3vit_config((480, 640), NYUD_TASKS),
    # configs/cityscapes/...tiny yml: top-2, moe_mlp_ratio 2; the model Edge-MoE runs
    "cityscapes-tiny": m3vit_config((128, 256), CITYSCAPES_TASKS, size="tiny", top_k=2, moe_mlp_ratio=2.0),
}


def default_model_dir() -> Path:
    """examples/tiny_m3vit of the source tree, or its copy inside an installed package."""
    return resource_dir("examples/tiny_m3vit")


def ensure_default_model(retrain: bool = False, progress: bool = True) -> Path:
    """The folder of the example model, training it (default settings, seed 0) if absent or asked to."""
    folder = default_model_dir()
    if retrain or not (folder / "model.pt").is_file() or not (folder / "config.yaml").is_file():
        save_model(train_model(ModelConfig(), seed=DEFAULT_SEED, progress=progress), folder)
    return folder


def load_default_model() -> M3ViT:
    return load_model(ensure_default_model())
