"""Front end of the flow: bring a trained M3ViT checkpoint into the float reference model."""
from .loader import ModelLoadError, load_model, save_model

__all__ = ["ModelLoadError", "load_model", "save_model"]
