"""Models: heads on cached features and the trained-model artefact."""

from emo.models.heads import HEADS, LinearHead, MLPConfig, MLPHead, fit_ridge_path, get_head_class
from emo.models.model import Model, load_model, save_model

__all__ = [
    "HEADS",
    "LinearHead",
    "MLPConfig",
    "MLPHead",
    "Model",
    "fit_ridge_path",
    "get_head_class",
    "load_model",
    "save_model",
]
