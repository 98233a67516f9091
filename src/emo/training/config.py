"""`TrainConfig`: everything `emo train` / the study's `training:` section choose, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from emo.models.attention_mil import AttentionMILConfig
from emo.models.heads import HEADS, MLPConfig
from emo.training.paper import PaperProtocolConfig


class TrainConfig(BaseModel):
    """One training run: the protocol, the head on cached features (level, ridge penalties, MLP or
    attention-MIL options) or the paper protocol's options; `seed` seeds every random choice of either."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["features", "paper"] = Field("features", description="'paper' = per-gene CNN protocol")
    head: str = Field("ridge", description=f"head on cached features: {', '.join(HEADS)}")
    level: Literal["slide", "tile"] = Field("slide", description="slide: bulk targets (slide = mean of tiles); tile: per-tile/spot targets")
    genes: str | Path | list[str] | None = Field(None, description="panel name(s)/genes, e.g. 'pam50,ESR1', or a gene file; all when empty")
    seed: int = 0
    alphas: list[float] | None = Field(None, description="ridge penalties to search (null: n_train × logspace(-4, 3, 15))")
    mlp: MLPConfig | None = Field(None, description="MLP head options (null: defaults, seeded by seed)")
    attention_mil: AttentionMILConfig | None = Field(None, description="attention-MIL head options (null: defaults, seeded by seed)")
    paper: PaperProtocolConfig | None = Field(None, description="paper-protocol options (null: the paper's values)")
    allow_missing_features: bool = Field(False, description="skip train/tune slides without features")
    permute_labels: bool = Field(False, description="null baseline: shuffle train/tune labels among samples")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of: {', '.join(HEADS)}")
        if self.protocol == "paper" and self.permute_labels:
            raise ValueError("permute_labels: only for the features protocol (a null head on cached features)")
        return self

    def mlp_config(self) -> MLPConfig:
        return self.mlp or MLPConfig(seed=self.seed)

    def attention_mil_config(self) -> AttentionMILConfig:
        return self.attention_mil or AttentionMILConfig(seed=self.seed)

    def paper_config(self) -> PaperProtocolConfig:
        """The paper protocol's options with this run's seed."""
        return PaperProtocolConfig(**{**(self.paper.model_dump() if self.paper else {}), "seed": self.seed})
