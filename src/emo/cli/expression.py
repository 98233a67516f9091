"""`emo expression prepare`: RNA-seq matrices + sample sheet → targets.h5ad (issue 3 interface)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from emo.cli._apps import expression_app
from emo.cli._options import config_option
from emo.expression.config import PAPER_FRACTIONS, PrepareConfig


def prepare_config(p: dict[str, Any]) -> PrepareConfig:
    """The `PrepareConfig` that `emo expression prepare`'s parsed options mean (a study's `expression:`
    gives the same); `--fractions` are percentages, scaled to shares (rounded, so 12.3 % is the 0.123 a study writes)."""
    from emo.errors import EmoError

    try:
        parts = [float(f) for f in p["fractions"].split(",")]
    except ValueError:
        raise EmoError(f"--fractions {p['fractions']!r}: give four numbers, e.g. 56.3,14.0,12.3,17.4") from None
    total = sum(parts)
    return PrepareConfig.build(
        what="emo expression prepare", reference_cohort=p["reference_cohort"], external_cohorts=tuple(p["external_cohort"]),
        min_variance=p["min_variance"], seed=p["seed"], stratify=p["stratify"], orientation=p["orientation"],
        on_duplicate=p["on_duplicate"], fractions=tuple(round(x / total, 12) for x in parts) if total > 0 else tuple(parts),
    )


@expression_app.command()
def prepare(
    ctx: typer.Context,
    matrix: list[Path] = typer.Option([], "--matrix", help="Log-scale normalised matrix (TSV/CSV[.gz], Parquet, .h5ad); repeatable."),
    counts_matrix: list[Path] = typer.Option([], "--counts-matrix", help="Raw-count matrix: library-size normalised to CPM, then log2(x + 1); repeatable."),
    samples: Path = typer.Option(..., "--samples", help="Sample sheet CSV: sample_id, patient_id, cohort [, slide_id, split, clinical columns]."),
    reference_cohort: str = config_option(PrepareConfig, "reference_cohort", "--reference-cohort", required=True, help="paper: TCGA-BC"),
    out: Path = typer.Option(..., "--out", help="Output targets .h5ad; summary .md/.json and mismatch CSV are written beside it."),
    min_variance: float = config_option(PrepareConfig, "min_variance", "--min-variance"),
    seed: int = config_option(PrepareConfig, "seed", "--seed"),
    stratify: str | None = config_option(PrepareConfig, "stratify", "--stratify", help="e.g. ER status, subtype"),
    external_cohort: list[str] = config_option(PrepareConfig, "external_cohorts", "--external-cohort", default=[], help="repeatable"),
    orientation: str = config_option(PrepareConfig, "orientation", "--orientation"),
    fractions: str = config_option(PrepareConfig, "fractions", "--fractions", help="percentages, e.g. 56.3,14.0,12.3,17.4",
                                   default=",".join(f"{100 * f:.3g}" for f in PAPER_FRACTIONS)),
    on_duplicate: str = config_option(PrepareConfig, "on_duplicate", "--on-duplicate"),
    slides: Path | None = typer.Option(None, "--slides", help="Folder of slide files to check the sheet's slide_id against (report only)."),
) -> None:
    """Build training targets: clean genes, split patients, align cohorts by median offsets, filter by variance.

    Gene ids: Ensembl versions are stripped and old PAM50 symbols renamed (CDCA1→NUF2, KNTC2→NDC80,
    ORC6L→ORC6); duplicated ids are summed for counts and, for log-scale values, the row with the
    highest mean is kept. Only genes present in every matrix are used (the others are listed in the
    summary). Offsets use train+tune+validation samples only; test samples get the same offsets.
    """
    from emo.expression import prepare_targets
    from emo.expression.prepare import summary_paths
    from emo.run.lock import hold_folder

    config = prepare_config(ctx.params)
    hold_folder(out.parent, "emo expression prepare")
    adata = prepare_targets(matrix, samples, config.reference_cohort, out, counts_matrices=counts_matrix, slides=slides,
                            **config.options())
    summary = adata.uns["emo_summary"]
    typer.echo(f"wrote {out}: {adata.n_obs} samples × {adata.n_vars} genes, {summary['genes_kept']} kept as targets")
    for item in summary["matrices"]:
        if item["genes_missing_elsewhere"]:
            typer.echo(f"  {len(item['genes_missing_elsewhere'])} genes of {item['file']} are missing from another "
                       "matrix and were left out (listed in the summary JSON)")
    for kind, n in summary["mismatches"].items():
        typer.echo(f"  mismatch {kind}: {n} (see {summary_paths(out)['mismatches.csv']})")
    typer.echo(f"summary: {summary_paths(out)['summary.md']}")


@expression_app.command()
def spatial(
    path: Path = typer.Argument(..., help="A .h5ad (squidpy convention), a Visium Space Ranger outs/ folder, or a legacy ST folder (counts/, spots/, images/)."),
    out: Path = typer.Option(..., "--out", help="Output .h5ad in emo's spatial representation (docs/architecture.md)."),
    section: str | None = typer.Option(None, "--section", help="Section of a legacy ST folder (e.g. B4)."),
    image: Path | None = typer.Option(None, "--image", help="Full-resolution image of a Visium or .h5ad section (else the hires PNG / none)."),
    labels: bool = typer.Option(False, "--labels", help="Join her2st pathologist labels (labels/<S>_labeled_coordinates.tsv) into obs['label']."),
) -> None:
    """Read spatial transcriptomics into one representation: raw counts, spot centres in image pixels, µm/px."""
    from emo.expression import add_her2st_labels, read_spatial
    from emo.expression.st_readers import scanpy_spatial
    from emo.io import atomic_path

    kwargs = {"image_path": image} if image is not None else {}
    adata = read_spatial(path, section, **kwargs)
    if labels:
        add_her2st_labels(adata, path)
    scanpy_spatial(adata)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    meta = adata.uns["emo_spatial"]
    typer.echo(f"wrote {out}: {adata.n_obs} spots × {adata.n_vars} genes, section {meta['section_id']}, "
               f"{meta['mpp']:.3f} µm/px, image {meta['image_path'] or 'none'}")
