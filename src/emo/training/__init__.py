"""Training: all-gene heads on cached features (default) and the paper's per-gene CNN protocol."""

from emo.training.config import TrainConfig
from emo.training.train import train_model

__all__ = ["TrainConfig", "train_model"]
