"""Model registries: image backbones, heads on cached features, and every trained-model kind
behind one interface (`EmoModel`; `load(model_dir)` → `.genes`, `.backbone`, `.predict(source, embed)`, `.save`, `.model_id`)."""

from emo.models.attention_mil import AttentionMILConfig, AttentionMILHead
from emo.models.backbones import BACKBONES, Backbone, create_backbone, list_backbones
from emo.models.heads import HEADS, LinearHead, MLPConfig, MLPHead, fit_ridge_path, get_head_class
from emo.models.model import Model, save_model
from emo.models.registry import MODEL_KINDS, EmoModel, load, load_kind

__all__ = [
    "AttentionMILConfig",
    "AttentionMILHead",
    "BACKBONES",
    "HEADS",
    "MODEL_KINDS",
    "Backbone",
    "EmoModel",
    "LinearHead",
    "MLPConfig",
    "MLPHead",
    "Model",
    "create_backbone",
    "fit_ridge_path",
    "get_head_class",
    "list_backbones",
    "load",
    "load_kind",
    "save_model",
]
