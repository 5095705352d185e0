"""The bundled example model: a default-config M3ViT trained on the synthetic scenes.

It ships in examples/tiny_m3vit so the flow can run end to end without training first;
ensure_default_model() rebuilds it with the exact settings documented in its README.
"""
from __future__ import annotations

from pathlib import Path

from codesign.frontend.loader import load_model, save_model
from codesign.resources import resource_dir

from .config import ModelConfig
from .m3vit import M3ViT
from .train import train_model

DEFAULT_SEED = 0


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
