"""The prediction stage's options (`emo predict` flags and a study's `prediction:` keys), torch-free so
the CLI reads defaults and help from them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from emo.config import StageConfig
from emo.errors import EmoError


class PredictionConfig(StageConfig):
    """What `predict` draws and how it bounds memory; every gene is predicted whatever is chosen here."""

    genes: str | list[str] | None = Field(
        None, description="genes and/or panels (comma-separated, or a file, one per line) drawn as heatmaps and GeoJSON measurements")
    panel: str | None = Field(None, description="a shipped gene panel to draw (pam50, oncotype_dx, endopredict, ...)")
    chunk_tiles: int = Field(2048, ge=1, description="tiles predicted per chunk (bounds memory)")
    geojson_top: int = Field(5, ge=0, description="without genes or a panel: GeoJSON measurements of the model's best genes by tuning ρ")
    classes: Literal["slide", "cohort"] = Field(
        "slide", description="GeoJSON classes by thirds of the first gene: slide (each slide's own cut-offs) or cohort (cut-offs over all slides)")

    @field_validator("panel")
    @classmethod
    def _known_panel(cls, v: str | None) -> str | None:
        from emo.panels import panel_info

        if v is not None:
            try:
                panel_info(v)
            except EmoError as exc:
                raise ValueError(str(exc)) from None
        return v
