"""`emo analyze clusters | de | enrich`: downstream analyses of measured and predicted expression."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emo.cli._apps import analyze_app

MEASURED = typer.Option(..., "--measured", help="Measured expression: targets.h5ad, or a CSV/TSV/Parquet matrix.")
PREDICTED = typer.Option(None, "--predicted", help="Predicted expression (EMO-average average.h5ad or average.csv).")
SAMPLES = typer.Option(None, "--samples", help="Sample sheet (CSV/TSV) with clinical columns; matched to the "
                       "expression by the column whose values fit the sample ids best.")
SAMPLE_COLUMN = typer.Option(None, "--sample-column", help="Sample-id column of --samples (default: detected).")
SPLIT = typer.Option(None, "--split", help="Use only samples of this split (train/tune/validation/test) from targets.h5ad.")
LOG_CPM = typer.Option(False, "--log-cpm", help="Measured values are raw counts: transform to log2(CPM + 1).")
ORIENTATION = typer.Option("auto", "--orientation", help="auto (from the first column's header: gene/symbol → genes in rows), "
                           "genes-by-samples or samples-by-genes.")
ORIENT = typer.Option(None, "--orient", hidden=True, help="Old spelling of --orientation (genes | samples).")
OUT = typer.Option(..., "--out", help="Output folder for tables (CSV + Parquet) and figures (PNG).")
SEED = typer.Option(0, "--seed", help="Random seed (resampling, bootstrap, permutations).")


def _list(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    return [] if text.strip().lower() in {"", "none"} else [t.strip() for t in text.split(",") if t.strip()]


@analyze_app.command("clusters")
def clusters_cmd(
    measured: Path = MEASURED,
    predicted: Optional[Path] = PREDICTED,
    out: Path = OUT,
    samples: Optional[Path] = SAMPLES,
    sample_column: Optional[str] = SAMPLE_COLUMN,
    genes: str = typer.Option("pam50", "--genes", help="Panel name, comma-separated genes, or a genes.csv (selected genes)."),
    split: Optional[str] = SPLIT,
    k: int = typer.Option(4, "--k", help="Number of consensus clusters."),
    choose_k: bool = typer.Option(False, "--choose-k", help="Scan k = 2..--k-max and pick it by the consensus CDF Δ-area."),
    k_max: int = typer.Option(8, "--k-max", help="Largest k scanned with --choose-k."),
    iterations: int = typer.Option(100, "--iterations", help="Resampling iterations of consensus clustering."),
    item_fraction: float = typer.Option(0.8, "--item-fraction", help="Fraction of items drawn per iteration."),
    method: str = typer.Option("hc", "--method", help="Base clusterer: hc (average linkage, 1 − Pearson) or kmeans."),
    subtype_column: Optional[str] = typer.Option(None, "--subtype-column", help="Intrinsic-subtype column (default: detected, e.g. pam50_subtype)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the ARI 95 % CI."),
    n_perm: int = typer.Option(1000, "--n-perm", help="Permutations for the ARI P value."),
    seed: int = SEED,
    log_cpm: bool = LOG_CPM,
    orientation: str = ORIENTATION,
    orient: Optional[str] = ORIENT,
) -> None:
    """Heatmaps and consensus clustering of a gene panel; adjusted Rand index measured vs predicted and vs subtypes."""
    from emo.analysis.clustering import ClustersConfig, clusters

    config = ClustersConfig.build(
        genes=genes, split=split, k=k, choose_k=choose_k, k_max=k_max, n_iter=iterations, item_fraction=item_fraction,
        method=method, subtype_column=subtype_column, n_boot=n_boot, n_perm=n_perm, seed=seed, log_cpm=log_cpm,
        orientation=orient or orientation,
    )
    res = clusters(measured, predicted, out, config, samples=samples, sample_column=sample_column, progress=True)
    for row in res.ari.itertuples():
        typer.echo(f"ARI {row.items}: {row.a} vs {row.b} = {row.ari:.3f} "
                   f"[{row.ci_low:.3f}, {row.ci_high:.3f}], P = {row.p_perm:.3g}")
    typer.echo(f"wrote {out}")


@analyze_app.command("de")
def de_cmd(
    measured: Path = MEASURED,
    predicted: Optional[Path] = PREDICTED,
    out: Path = OUT,
    samples: Optional[Path] = SAMPLES,
    sample_column: Optional[str] = SAMPLE_COLUMN,
    contrast: str = typer.Option("er_status", "--contrast", help="Binary sheet column tested (positive vs negative)."),
    covariates: Optional[str] = typer.Option(None, "--covariates", help="Comma-separated sheet columns, or 'none' "
                                             "(default: age, HER2, tumour size, lymph-node status where present)."),
    genes: Optional[str] = typer.Option(None, "--genes", help="Restrict to a panel, gene list, or genes.csv's selected genes."),
    split: Optional[str] = SPLIT,
    alpha: float = typer.Option(0.05, "--alpha", help="BH-FDR threshold for significance."),
    log_cpm: bool = LOG_CPM,
    orientation: str = ORIENTATION,
    orient: Optional[str] = ORIENT,
) -> None:
    """Per-gene OLS expression ~ ER + covariates on measured and predicted expression; BH-FDR and concordance."""
    from emo.analysis.de import DEConfig, differential_expression

    config = DEConfig.build(contrast=contrast, covariates=_list(covariates), genes=genes, split=split, alpha=alpha,
                            log_cpm=log_cpm, orientation=orient or orientation)
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


@analyze_app.command("enrich")
def enrich_cmd(
    ranking: Path = typer.Option(..., "--ranking", help="Per-gene table: genes.csv from emo evaluate, or de_measured.csv."),
    gene_sets: list[Path] = typer.Option(..., "--gene-sets", help="GMT file (repeat for several collections)."),
    out: Path = OUT,
    score: str = typer.Option("padj", "--score", help="Ranking score: padj (−log10 fdr_bh), rho, or a column name (e.g. t)."),
    measured: Optional[Path] = typer.Option(None, "--measured", help="Measured expression for gene variances; "
                                            "enables over-representation of unpredictable, variable genes."),
    split: Optional[str] = SPLIT,
    permutations: int = typer.Option(1000, "--permutations", help="GSEA permutations."),
    min_size: int = typer.Option(15, "--min-size", help="Smallest gene set (genes among the ranked)."),
    max_size: int = typer.Option(500, "--max-size", help="Largest gene set."),
    alpha: float = typer.Option(0.05, "--alpha", help="FDR threshold (and adjusted-P cut for 'not predictable')."),
    threads: int = typer.Option(1, "--threads", help="gseapy worker threads."),
    seed: int = SEED,
    log_cpm: bool = LOG_CPM,
) -> None:
    """Rank-based (gseapy prerank) and set-based (hypergeometric) pathway enrichment from any GMT."""
    from emo.analysis.enrichment import EnrichConfig, enrich

    config = EnrichConfig.build(score=score, split=split, permutations=permutations, seed=seed, min_size=min_size,
                                max_size=max_size, alpha=alpha, threads=threads, log_cpm=log_cpm)
    res = enrich(ranking, gene_sets, out, config, measured=measured)
    for name, block in res.prerank.groupby("collection", sort=False):
        sig = block[block["fdr"] < alpha]
        typer.echo(f"{name}: {len(sig)} of {len(block)} sets FDR < {alpha} "
                   f"({int((sig['nes'] > 0).sum())} up, {int((sig['nes'] < 0).sum())} down)")
    if res.ora is not None:
        typer.echo(f"over-representation: {int((res.ora['fdr_bh'] < alpha).sum())} sets FDR < {alpha}")
    typer.echo(f"wrote {out}")
