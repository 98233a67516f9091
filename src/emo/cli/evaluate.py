"""`emo evaluate`: EMO-average predictions vs measured RNA-seq on one split (per-gene table + figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from emo.analysis.config import EvaluateConfig as C
from emo.cli._apps import app
from emo.cli._options import config_option


def evaluate_config(p: dict[str, Any]) -> C:
    """The `EvaluateConfig` that `emo evaluate`'s parsed options mean (a study's `evaluation.thresholds`
    gives the same rules)."""
    renamed = {"external_cohorts": "external_cohort", "cohorts": "cohort"}
    return C.build(what="emo evaluate", **{k: p[renamed.get(k, k)] for k in C.model_fields})


@app.command()
def evaluate(
    ctx: typer.Context,
    predictions: Path = typer.Option(..., "--predictions", help="EMO-average predictions: average.h5ad or CSV (rows = slides or samples, columns = genes)."),
    targets: Path = typer.Option(..., "--targets", help="targets.h5ad from `emo expression prepare` (measured expression, splits)."),
    split: str = typer.Option(..., "--split", help="Split to evaluate: validation, test, ... (a split named test* is a test split)."),
    out: Path = typer.Option(..., "--out", help="Output folder: genes.csv, genes.parquet, summary.json, figures."),
    selected: Optional[Path] = config_option(C, "selected", "--selected"),
    r2_min: float = config_option(C, "r2_min", "--r2-min"),
    fdr_max: float = config_option(C, "fdr_max", "--fdr-max"),
    alpha: float = config_option(C, "alpha", "--alpha"),
    external_cohort: list[str] = config_option(C, "external_cohorts", "--external-cohort", default=[], help="repeatable"),
    cohort: list[str] = config_option(C, "cohorts", "--cohort", default=[], help="repeatable"),
    null_predictions: list[Path] = config_option(C, "null_predictions", "--null-predictions", default=[], help="repeatable"),
    validation_genes: Optional[Path] = config_option(C, "validation_genes", "--validation-genes"),
    subtype_column: Optional[str] = config_option(C, "subtype_column", "--subtype-column"),
    test: Optional[bool] = config_option(C, "test", "--test/--no-test"),
    top: int = config_option(C, "top", "--top"),
    fdr_report: float = config_option(C, "fdr_report", "--fdr-report"),
    r2_report: list[float] = config_option(C, "r2_report", "--r2-report", default=list(C.model_fields["r2_report"].default),
                                           help="repeatable"),
    figures: bool = config_option(C, "figures", "--figures/--no-figures"),
) -> None:
    """Per-gene Spearman ρ/P, BH-FDR, Pearson r, R²pred; gene selection (validation) or validation (test);
    gene panels; proliferation score; figures like the paper's Figs. 1, 2 and 5."""
    from emo.analysis.evaluate import evaluate as run
    from emo.run.lock import hold_folder

    config = evaluate_config(ctx.params)
    hold_folder(out, "emo evaluate")
    table = run(predictions, targets, split, out, config=config)
    n_sel = int(table["selected"].sum())
    msg = f"{len(table)} genes evaluated on {split}; "
    msg += f"{int(table['validated'].sum())} of {n_sel} validated" if "validated" in table else f"{n_sel} selected"
    typer.echo(f"{msg}; results in {out}")
