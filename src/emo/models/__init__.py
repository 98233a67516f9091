"""Model registries: image backbones (and, from the training stage, heads and saved models)."""

from emo.models.backbones import BACKBONES, Backbone, create_backbone, list_backbones

__all__ = ["BACKBONES", "Backbone", "create_backbone", "list_backbones"]
