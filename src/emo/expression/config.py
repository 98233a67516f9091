"""The expression stage's options, torch- and pandas-free so the CLI reads defaults and help from them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from emo.config import StageConfig

SPLITS = ("train", "tune", "validation", "test")
#: The paper's fractions of patients (Wang, Kartasalo et al. 2021): 56.3 / 14.0 / 12.3 / 17.4 %.
PAPER_FRACTIONS = (0.563, 0.140, 0.123, 0.174)

Orientation = Literal["auto", "genes-by-samples", "samples-by-genes"]
ORIENTATIONS = ("auto", "genes-by-samples", "samples-by-genes")
#: what `emo analyze --orient` used to take
ORIENTATION_ALIASES = {"genes": "genes-by-samples", "samples": "samples-by-genes"}
#: a config field in the one vocabulary that also takes the old `genes`/`samples`
OrientationOption = Annotated[Orientation, BeforeValidator(lambda v: ORIENTATION_ALIASES.get(v, v))]


class PrepareConfig(StageConfig):
    """How `emo expression prepare` turns matrices + sheet into targets (a study's `expression:` adds the files).
    `prepare_targets(matrices, samples, config.reference_cohort, out, **config.options())`."""

    reference_cohort: str | None = Field(None, description="cohort the others' batch offsets are removed against")
    external_cohorts: tuple[str, ...] = Field((), description="test-only cohorts (external validation)")
    min_variance: float = Field(0.01, ge=0, description="genes with training variance <= this are not kept")
    seed: int = Field(0, description="seed of the patient-level split")
    stratify: str | None = Field(None, description="sheet column the split is balanced on")
    fractions: tuple[float, float, float, float] = Field(
        PAPER_FRACTIONS, description="train, tune, validation, test shares of patients (null: the paper's)")
    orientation: OrientationOption = Field(
        "auto", description="auto (match labels to the sheet's sample ids), genes-by-samples or samples-by-genes")
    on_duplicate: Literal["error", "first", "all"] = Field(
        "error", description="patient with several samples or slide with several samples: error, first (keep the "
                             "first sheet row) or all")

    @field_validator("fractions", mode="before")
    @classmethod
    def _paper_when_null(cls, v: Any) -> Any:
        return PAPER_FRACTIONS if v is None else v

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if min(v) < 0 or abs(sum(v) - 1) > 1e-6:
            raise ValueError("must be 4 non-negative shares (train, tune, validation, test) summing to 1")
        return v

    def options(self) -> dict[str, Any]:
        """The keyword options of `prepare_targets`."""
        return self.model_dump(include={"external_cohorts", "min_variance", "seed", "stratify", "fractions",
                                        "orientation", "on_duplicate"})
