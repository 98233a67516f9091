"""`emo evaluate`: EMO-average predictions vs measured RNA-seq on one split (per-gene table + figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emo.cli._apps import app


@app.command()
def evaluate(
    predictions: Path = typer.Option(..., "--predictions", help="EMO-average predictions: average.h5ad or CSV (rows = slides or samples, columns = genes)."),
    targets: Path = typer.Option(..., "--targets", help="targets.h5ad from `emo expression prepare` (measured expression, splits)."),
    split: str = typer.Option(..., "--split", help="Split to evaluate: validation, test, ... (a split named test* is a test split)."),
    out: Path = typer.Option(..., "--out", help="Output folder: genes.csv, genes.parquet, summary.json, figures."),
    selected: Optional[Path] = typer.Option(None, "--selected", help="Test splits: genes to test (selected_genes.txt of the validation run)."),
    r2_min: float = typer.Option(0.2, "--r2-min", help="Selection rule: R²pred above this ..."),
    fdr_max: float = typer.Option(0.001, "--fdr-max", help="... and BH-FDR below this."),
    alpha: float = typer.Option(0.05, "--alpha", help="Test splits: Bonferroni-adjusted P below this (and ρ > 0) validates a gene."),
    external_cohort: list[str] = typer.Option([], "--external-cohort", help="Cohort whose R²pred is not computed (repeatable; adds to obs['external'])."),
    cohort: list[str] = typer.Option([], "--cohort", help="Evaluate only these cohorts of the split (repeatable)."),
    null_predictions: list[Path] = typer.Option([], "--null-predictions", help="Predictions of the same head trained on permuted labels, one per permutation (repeatable): the null distribution of gene counts and per-gene permutation P."),
    validation_genes: Optional[Path] = typer.Option(None, "--validation-genes", help="genes.csv of the validation run: concordance of ρ validation vs this split."),
    subtype_column: Optional[str] = typer.Option(None, "--subtype-column", help="obs column with intrinsic subtypes (default: subtype/pam50_subtype if present)."),
    test: Optional[bool] = typer.Option(None, "--test/--no-test", help="Force test-split (Bonferroni) or validation-split (selection) handling."),
    top: int = typer.Option(25, "--top", help="Genes in the measured-vs-predicted scatter grid."),
) -> None:
    """Per-gene Spearman ρ/P, BH-FDR, Pearson r, R²pred; gene selection (validation) or validation (test);
    gene panels; proliferation score; figures like the paper's Figs. 1, 2 and 5."""
    from emo.analysis.evaluate import EvaluateConfig
    from emo.analysis.evaluate import evaluate as run
    from emo.run.lock import hold_folder

    cfg = EvaluateConfig.build(
        r2_min=r2_min, fdr_max=fdr_max, alpha=alpha, test=test, selected=selected,
        external_cohorts=tuple(external_cohort), cohorts=tuple(cohort), null_predictions=tuple(null_predictions),
        validation_genes=validation_genes, subtype_column=subtype_column, top=top,
    )
    hold_folder(out, "emo evaluate")
    table = run(predictions, targets, split, out, config=cfg)
    n_sel = int(table["selected"].sum())
    msg = f"{len(table)} genes evaluated on {split}; "
    msg += f"{int(table['validated'].sum())} of {n_sel} validated" if "validated" in table else f"{n_sel} selected"
    typer.echo(f"{msg}; results in {out}")
