"""`emo predict`: EMO-spatial per slide, EMO-average per cohort, heatmaps and QuPath GeoJSON."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emo.cli._apps import app


@app.command()
def predict(
    model: Path = typer.Option(..., "--model", help="Model directory from `emo train`."),
    features: Optional[Path] = typer.Option(None, "--features", help="Feature folder from `emo features` (same backbone as the model; not used by paper-protocol models)."),
    out: Path = typer.Option(..., "--out", help="Output folder: spatial/<slide>.h5ad, average.h5ad/.csv, heatmaps/, geojson/."),
    genes: Optional[str] = typer.Option(None, "--genes", help="Genes (comma-separated, or a file, one per line) to draw as heatmaps and GeoJSON measurements."),
    panel: Optional[str] = typer.Option(None, "--panel", help="Gene panel to draw (pam50, oncotype_dx, endopredict, ...)."),
    tiles: Optional[Path] = typer.Option(None, "--tiles", help="Tile-store folder: thumbnails and exact tile geometry (pixels for paper-protocol models)."),
    chunk_tiles: int = typer.Option(2048, "--chunk-tiles", help="Tiles predicted per chunk (bounds memory)."),
    geojson_top: int = typer.Option(5, "--geojson-top", min=0, help="Without --genes/--panel: GeoJSON measurements of the model's best genes by tuning ρ."),
    classes: str = typer.Option("slide", "--classes", help="GeoJSON classes by thirds of the first gene: slide (each slide's own cut-offs) or cohort (cut-offs over all slides)."),
) -> None:
    """Predict expression of every gene for every tile (EMO-spatial) and slide (EMO-average).

    Finished slides are skipped on a re-run; every gene is in the .h5ad files, --genes/--panel
    choose which genes get heatmap PNGs and GeoJSON measurements.
    """
    from emo.prediction import predict as run_predict
    from emo.run.lock import hold_folder

    hold_folder(out, "emo predict")
    path = run_predict(model, features, out, genes=genes, panel=panel, tiles=tiles, chunk_tiles=chunk_tiles,
                       geojson_top=geojson_top, classes=classes)
    typer.echo(f"predictions written to {path}")
