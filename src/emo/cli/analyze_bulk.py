"""`emo analyze clusters | de | enrich`: downstream analyses of measured and predicted expression."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from emo.analysis.config import ClustersConfig, DEConfig, EnrichConfig
from emo.cli._apps import analyze_app
from emo.cli._options import config_option

MEASURED = typer.Option(..., "--measured", help="Measured expression: targets.h5ad, or a CSV/TSV/Parquet matrix.")
PREDICTED = typer.Option(None, "--predicted", help="Predicted expression (EMO-average average.h5ad or average.csv).")
SAMPLES = typer.Option(None, "--samples", help="Sample sheet (CSV/TSV) with clinical columns; matched to the "
                       "expression by the column whose values fit the sample ids best.")
SAMPLE_COLUMN = typer.Option(None, "--sample-column", help="Sample-id column of --samples (default: detected).")
ORIENT = typer.Option(None, "--orient", hidden=True, help="Old spelling of --orientation (genes | samples).")
OUT = typer.Option(..., "--out", help="Output folder for tables (CSV + Parquet) and figures (PNG).")


def _list(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    return [] if text.strip().lower() in {"", "none"} else [t.strip() for t in text.split(",") if t.strip()]


def clusters_config(p: dict[str, Any]) -> ClustersConfig:
    """The `ClustersConfig` that `emo analyze clusters`' parsed options mean (a study's `analyses.clusters` gives the same)."""
    renamed = {"n_iter": "iterations"}
    options = {k: p[renamed.get(k, k)] for k in ClustersConfig.model_fields}
    return ClustersConfig.build(what="emo analyze clusters", **{**options, "orientation": p["orient"] or p["orientation"]})


@analyze_app.command("clusters")
def clusters_cmd(
    ctx: typer.Context,
    measured: Path = MEASURED,
    predicted: Optional[Path] = PREDICTED,
    out: Path = OUT,
    samples: Optional[Path] = SAMPLES,
    sample_column: Optional[str] = SAMPLE_COLUMN,
    genes: str = config_option(ClustersConfig, "genes", "--genes"),
    split: Optional[str] = config_option(ClustersConfig, "split", "--split"),
    k: int = config_option(ClustersConfig, "k", "--k"),
    choose_k: bool = config_option(ClustersConfig, "choose_k", "--choose-k"),
    k_max: int = config_option(ClustersConfig, "k_max", "--k-max"),
    iterations: int = config_option(ClustersConfig, "n_iter", "--iterations"),
    item_fraction: float = config_option(ClustersConfig, "item_fraction", "--item-fraction"),
    method: str = config_option(ClustersConfig, "method", "--method"),
    subtype_column: Optional[str] = config_option(ClustersConfig, "subtype_column", "--subtype-column"),
    n_boot: int = config_option(ClustersConfig, "n_boot", "--n-boot"),
    n_perm: int = config_option(ClustersConfig, "n_perm", "--n-perm"),
    seed: int = config_option(ClustersConfig, "seed", "--seed"),
    log_cpm: bool = config_option(ClustersConfig, "log_cpm", "--log-cpm"),
    orientation: str = config_option(ClustersConfig, "orientation", "--orientation"),
    orient: Optional[str] = ORIENT,
) -> None:
    """Heatmaps and consensus clustering of a gene panel; adjusted Rand index measured vs predicted and vs subtypes."""
    from emo.analysis.clustering import clusters

    config = clusters_config(ctx.params)
    res = clusters(measured, predicted, out, config, samples=samples, sample_column=sample_column, progress=True)
    for row in res.ari.itertuples():
        typer.echo(f"ARI {row.items}: {row.a} vs {row.b} = {row.ari:.3f} "
                   f"[{row.ci_low:.3f}, {row.ci_high:.3f}], P = {row.p_perm:.3g}")
    typer.echo(f"wrote {out}")


def de_config(p: dict[str, Any]) -> DEConfig:
    """The `DEConfig` that `emo analyze de`'s parsed options mean (a study's `analyses.differential_expression`
    gives the same)."""
    options = {k: p[k] for k in DEConfig.model_fields}
    return DEConfig.build(what="emo analyze de", **{**options, "covariates": _list(p["covariates"]),
                                                    "orientation": p["orient"] or p["orientation"]})


@analyze_app.command("de")
def de_cmd(
    ctx: typer.Context,
    measured: Path = MEASURED,
    predicted: Optional[Path] = PREDICTED,
    out: Path = OUT,
    samples: Optional[Path] = SAMPLES,
    sample_column: Optional[str] = SAMPLE_COLUMN,
    contrast: str = config_option(DEConfig, "contrast", "--contrast"),
    covariates: Optional[str] = config_option(DEConfig, "covariates", "--covariates", help="comma-separated, or 'none'"),
    genes: Optional[str] = config_option(DEConfig, "genes", "--genes"),
    split: Optional[str] = config_option(DEConfig, "split", "--split"),
    alpha: float = config_option(DEConfig, "alpha", "--alpha"),
    log_cpm: bool = config_option(DEConfig, "log_cpm", "--log-cpm"),
    orientation: str = config_option(DEConfig, "orientation", "--orientation"),
    orient: Optional[str] = ORIENT,
) -> None:
    """Per-gene OLS expression ~ ER + covariates on measured and predicted expression; BH-FDR and concordance."""
    from emo.analysis.de import differential_expression

    config = de_config(ctx.params)
    table = differential_expression(measured, predicted, out, config, samples=samples, sample_column=sample_column)
    summary = table.attrs["summary"]
    for source in ("measured", "predicted"):
        if source in summary:
            s = summary[source]
            skipped = sum(v for key, v in s.items() if key.startswith("skipped_"))
            typer.echo(f"{source}: {s['n_significant']} of {s['n_genes']} genes FDR < {alpha} "
                       f"({s['n_samples'] - s['dropped_missing_clinical']} samples, covariates {s['covariates']}, "
                       f"{skipped} genes skipped)")
    if "n_concordant" in summary:
        typer.echo(f"concordant (both significant, same sign): {summary['n_concordant']}")
    typer.echo(f"wrote {out}")


def enrich_config(p: dict[str, Any]) -> EnrichConfig:
    """The `EnrichConfig` that `emo analyze enrich`'s parsed options mean (a study's `analyses.enrich` gives the same)."""
    return EnrichConfig.build(what="emo analyze enrich", **{k: p[k] for k in EnrichConfig.model_fields})


@analyze_app.command("enrich")
def enrich_cmd(
    ctx: typer.Context,
    ranking: Path = typer.Option(..., "--ranking", help="Per-gene table: genes.csv from emo evaluate, or de_measured.csv."),
    gene_sets: list[Path] = typer.Option(..., "--gene-sets", help="GMT file (repeat for several collections)."),
    out: Path = OUT,
    score: str = config_option(EnrichConfig, "score", "--score"),
    measured: Optional[Path] = typer.Option(None, "--measured", help="Measured expression for gene variances; "
                                            "enables over-representation of unpredictable, variable genes."),
    split: Optional[str] = config_option(EnrichConfig, "split", "--split"),
    permutations: int = config_option(EnrichConfig, "permutations", "--permutations"),
    min_size: int = config_option(EnrichConfig, "min_size", "--min-size"),
    max_size: int = config_option(EnrichConfig, "max_size", "--max-size"),
    alpha: float = config_option(EnrichConfig, "alpha", "--alpha"),
    threads: int = config_option(EnrichConfig, "threads", "--threads"),
    seed: int = config_option(EnrichConfig, "seed", "--seed"),
    log_cpm: bool = config_option(EnrichConfig, "log_cpm", "--log-cpm"),
) -> None:
    """Rank-based (gseapy prerank) and set-based (hypergeometric) pathway enrichment from any GMT."""
    from emo.analysis.enrichment import enrich

    config = enrich_config(ctx.params)
    res = enrich(ranking, gene_sets, out, config, measured=measured)
    for name, block in res.prerank.groupby("collection", sort=False):
        sig = block[block["fdr"] < alpha]
        typer.echo(f"{name}: {len(sig)} of {len(block)} sets FDR < {alpha} "
                   f"({int((sig['nes'] > 0).sum())} up, {int((sig['nes'] < 0).sum())} down)")
    if res.ora is not None:
        typer.echo(f"over-representation: {int((res.ora['fdr_bh'] < alpha).sum())} sets FDR < {alpha}")
    typer.echo(f"wrote {out}")
