"""Training: all-gene heads on cached features (default) and the paper's per-gene CNN protocol."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["TrainConfig"],
        "protocol": ["train_protocol"],
        "train": ["train_model"],
    },
)
