"""Options shared by the torch heads (MLP, attention-MIL): their training loop's; torch-free, so
configs parse without torch."""

from __future__ import annotations

from pydantic import Field

from emo.config import StageConfig


class TorchHeadConfig(StageConfig):
    """What every torch head's training loop (`fit_bag_module`) is configured by."""

    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(16, ge=1, description="bags (slides, or tiles in tile mode) per step")
    max_epochs: int = Field(200, ge=1)
    patience: int = Field(20, ge=1, description="early-stopping patience in epochs")
    tiles_per_slide: int = Field(256, ge=1, description="tiles sampled (once, seeded) per slide for training")
    seed: int = 0
