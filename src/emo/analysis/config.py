"""Options of the evaluation and the analyses, pandas-free so the CLI reads defaults and help from them.

`emo evaluate` builds an `EvaluateConfig` (a study's `evaluation.thresholds` is its `EvaluateThresholds`
part); `emo analyze clusters|de|enrich` and a study's `analyses.*` build the same `ClustersConfig`,
`DEConfig` and `EnrichConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator

from emo.config import StageConfig
from emo.expression.config import OrientationOption

Method = Literal["hc", "kmeans"]
SPLIT_HELP = "use only samples of this split (train/tune/validation/test) of targets.h5ad"
SEED_HELP = "random seed (resampling, bootstrap, permutations)"
LOG_CPM_HELP = "measured values are raw counts: transform to log2(CPM + 1)"
ORIENTATION_HELP = ("auto (from the first column's header: gene/symbol → genes in rows), genes-by-samples "
                    "or samples-by-genes")


class EvaluateThresholds(StageConfig):
    """The rules and report options of an evaluation (what a study's `evaluation.thresholds` sets)."""

    r2_min: float = Field(0.2, description="selection rule: R²pred above this ...")
    fdr_max: float = Field(0.001, gt=0, le=1, description="... and BH-FDR below this (validation split)")
    alpha: float = Field(0.05, gt=0, le=1, description="test splits: Bonferroni-adjusted P below this (and ρ > 0) validates a gene")
    fdr_report: float = Field(0.05, gt=0, le=1, description='the report\'s "significant at FDR <" count (Fig. 1)')
    r2_report: tuple[float, ...] = Field((0.2, 0.3, 0.4), description='the report\'s "R²pred >" counts')
    external_cohorts: tuple[str, ...] = Field((), description="cohorts whose R²pred is not computed (adds to obs['external'])")
    cohorts: tuple[str, ...] = Field((), description="evaluate only these cohorts of the split (default: all)")
    subtype_column: str | None = Field(None, description="obs column with intrinsic subtypes (default: subtype/pam50_subtype if present)")
    top: int = Field(25, ge=1, description="genes in the measured-vs-predicted scatter grid")
    figures: bool = Field(True, description="write the figures (PNG) beside the tables")


class EvaluateConfig(EvaluateThresholds):
    """One evaluation: the thresholds plus what this run compares against (all recorded in summary.json)."""

    test: bool | None = Field(None, description="force test-split (Bonferroni) or validation-split (selection) handling (default: a split named test* is a test split)")
    selected: Path | None = Field(None, description="test splits: genes to test (selected_genes.txt of the validation run)")
    null_predictions: tuple[Path, ...] = Field(
        (), description="predictions of the same head trained on permuted labels, one per permutation: the null "
                        "distribution of gene counts and per-gene permutation P")
    validation_genes: Path | None = Field(None, description="genes.csv of the validation run: concordance of ρ validation vs this split")

    @field_validator("null_predictions", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        """One path (the single-permutation form) or none is accepted as a tuple of them."""
        return () if value is None else (value,) if isinstance(value, (str, Path)) else value


class ClustersConfig(StageConfig):
    """Options of `emo analyze clusters` and a study's `analyses.clusters`."""

    genes: str | list[str] | None = Field("pam50", description="panel name, comma-separated genes, or a genes.csv (selected genes)")
    split: str | None = Field(None, description=SPLIT_HELP)
    k: int = Field(4, ge=2, description="number of consensus clusters")
    choose_k: bool = Field(False, description="scan k = 2..k_max and pick it by the consensus CDF Δ-area")
    k_max: int = Field(8, ge=2, description="largest k scanned with choose_k")
    n_iter: int = Field(100, ge=1, description="resampling iterations of consensus clustering")
    item_fraction: float = Field(0.8, gt=0, le=1, description="fraction of items drawn per iteration")
    method: Method = Field("hc", description="base clusterer: hc (average linkage, 1 − Pearson) or kmeans")
    subtype_column: str | None = Field(None, description="intrinsic-subtype column (default: detected, e.g. pam50_subtype)")
    n_boot: int = Field(1000, ge=0, description="bootstrap resamples for the ARI 95 % CI")
    n_perm: int = Field(1000, ge=0, description="permutations for the ARI P value")
    seed: int = Field(0, description=SEED_HELP)
    log_cpm: bool = Field(False, description=LOG_CPM_HELP)
    orientation: OrientationOption = Field("auto", validation_alias=AliasChoices("orientation", "orient"),
                                           description=ORIENTATION_HELP)


class DEConfig(StageConfig):
    """Options of `emo analyze de` and a study's `analyses.differential_expression`."""

    contrast: str = Field("er_status", description="binary sheet column tested (positive vs negative)")
    covariates: list[str] | None = Field(
        None, description="sheet columns adjusted for (default: the paper's age, HER2, tumour size, lymph-node status where present)")
    genes: str | list[str] | None = Field(None, description="restrict to a panel, gene list, or genes.csv's selected genes")
    split: str | None = Field(None, description=SPLIT_HELP)
    alpha: float = Field(0.05, gt=0, lt=1, description="BH-FDR threshold for significance")
    log_cpm: bool = Field(False, description=LOG_CPM_HELP)
    orientation: OrientationOption = Field("auto", validation_alias=AliasChoices("orientation", "orient"),
                                           description=ORIENTATION_HELP)


class EnrichConfig(StageConfig):
    """Options of `emo analyze enrich` and a study's `analyses.enrich`."""

    score: str = Field("padj", description="ranking score: padj (−log10 fdr_bh), rho, or a column name (e.g. t)")
    split: str | None = Field(None, description=SPLIT_HELP)
    permutations: int = Field(1000, ge=1, description="GSEA permutations")
    seed: int = Field(0, description=SEED_HELP)
    min_size: int = Field(15, ge=1, description="smallest gene set (genes among the ranked)")
    max_size: int = Field(500, ge=1, description="largest gene set")
    alpha: float = Field(0.05, gt=0, lt=1, description="FDR threshold (and adjusted-P cut for 'not predictable')")
    threads: int = Field(1, ge=1, description="gseapy worker threads")
    log_cpm: bool = Field(False, description=LOG_CPM_HELP)
