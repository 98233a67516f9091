"""Model registries: image backbones, heads on cached features, and the trained-model artefact."""

from emo.models.attention_mil import AttentionMILConfig, AttentionMILHead
from emo.models.backbones import BACKBONES, Backbone, create_backbone, list_backbones
from emo.models.heads import HEADS, LinearHead, MLPConfig, MLPHead, fit_ridge_path, get_head_class
from emo.models.model import Model, load_model, save_model

__all__ = [
    "AttentionMILConfig",
    "AttentionMILHead",
    "BACKBONES",
    "HEADS",
    "Backbone",
    "LinearHead",
    "MLPConfig",
    "MLPHead",
    "Model",
    "create_backbone",
    "fit_ridge_path",
    "get_head_class",
    "list_backbones",
    "load_model",
    "save_model",
]
