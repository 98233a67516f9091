"""`emo analyze build-rois` and `emo analyze spatial-validation`: EMO-spatial vs ROI-level spatial transcriptomics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emo.cli._apps import analyze_app


@analyze_app.command("spatial-validation")
def spatial_validation(
    table: Path = typer.Option(..., "--table", help="ROI-level long table: slide_id, roi_id, gene, measured, predicted."),
    out: Path = typer.Option(..., "--out", help="Output folder: genes.csv, per_slide_spearman.csv, summary.json, figures."),
    min_variance: float = typer.Option(0.001, "--min-variance", help="Drop probes whose measured variance is below this."),
    fdr: float = typer.Option(0.05, "--fdr", help="FDR threshold for the counts and the bar plot."),
) -> None:
    """Per gene: ML mixed model measured ~ predicted + (1|slide_id), LRT of the fixed effect, BH-FDR;
    per slide and gene: Spearman ρ across ROIs (paper Fig. 4B–C, Supp. Fig. S4)."""
    from emo.analysis.roi_validation import spatial_validation as run

    genes = run(table, out, min_variance=min_variance, fdr=fdr)
    typer.echo(f"{int((genes['fdr_bh'] < fdr).sum())} of {len(genes)} genes significant at FDR < {fdr:g}; results in {out}")


@analyze_app.command("build-rois")
def build_rois(
    spatial: list[Path] = typer.Option(..., "--spatial", help="EMO-spatial <slide_id>.h5ad files or a folder of them (repeatable)."),
    measured: Path = typer.Option(..., "--measured", help="Measured ROI expression CSV: slide_id, roi_id + one column per probe (or long: gene, measured)."),
    out: Path = typer.Option(..., "--out", help="Output long table CSV (slide_id, roi_id, gene, measured, predicted)."),
    rois: Optional[Path] = typer.Option(None, "--rois", help="ROI polygons in level-0 px: a GeoJSON (properties slide_id, roi_id) or a folder of <slide_id>.geojson."),
    spot_map: Optional[Path] = typer.Option(None, "--spot-map", help="CSV slide_id, tile_id (or spot_id), roi_id assigning tiles/spots to ROIs."),
    normalise_geomx: bool = typer.Option(False, "--normalise-geomx", help="Measured values are raw GeoMx counts: divide by the negative-control mean, log2."),
    negative_controls: Optional[str] = typer.Option(None, "--negative-controls", help="Comma-separated negative-control probe names (default: probes named Neg*)."),
) -> None:
    """Mean EMO-spatial prediction inside each ROI joined to measured ROI expression (composite probes summed)."""
    from emo.analysis.roi_validation import build_rois as run

    files: list[Path] = []
    for p in spatial:
        files.extend(sorted(p.glob("*.h5ad")) if p.is_dir() else [p])
    controls = [c.strip() for c in negative_controls.split(",")] if negative_controls else None
    long = run(files, measured, rois=rois, spot_map=spot_map, normalise_geomx=normalise_geomx,
               negative_controls=controls, out=out)
    typer.echo(f"{long['gene'].nunique()} probes × {long.groupby(['slide_id', 'roi_id']).ngroups} ROIs written to {out}")
    if long.attrs.get("unmatched_probes"):
        typer.echo(f"not predicted, left out: {', '.join(long.attrs['unmatched_probes'])}")
    if long.attrs.get("rois_without_tiles"):
        typer.echo(f"{long.attrs['rois_without_tiles']} measured ROIs have no tile inside and were left out")
