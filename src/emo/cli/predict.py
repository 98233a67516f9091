"""`emo predict`: EMO-spatial per slide, EMO-average per cohort, heatmaps and QuPath GeoJSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from emo.cli._apps import app
from emo.cli._options import config_option
from emo.prediction.config import PredictionConfig as C


def prediction_config(p: dict[str, Any]) -> C:
    """The `PredictionConfig` that `emo predict`'s parsed options mean (a study's `prediction:` gives the same)."""
    return C.build(what="emo predict", **{k: p[k] for k in C.model_fields})


@app.command()
def predict(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", help="Model directory from `emo train`."),
    features: Optional[Path] = typer.Option(None, "--features", help="Feature folder from `emo features` (same backbone as the model; not used by paper-protocol models)."),
    out: Path = typer.Option(..., "--out", help="Output folder: spatial/<slide>.h5ad, average.h5ad/.csv, heatmaps/, geojson/."),
    genes: Optional[str] = config_option(C, "genes", "--genes"),
    panel: Optional[str] = config_option(C, "panel", "--panel"),
    tiles: Optional[Path] = typer.Option(None, "--tiles", help="Tile-store folder: thumbnails and exact tile geometry (pixels for paper-protocol models)."),
    chunk_tiles: int = config_option(C, "chunk_tiles", "--chunk-tiles"),
    geojson_top: int = config_option(C, "geojson_top", "--geojson-top", min=0),
    classes: str = config_option(C, "classes", "--classes"),
) -> None:
    """Predict expression of every gene for every tile (EMO-spatial) and slide (EMO-average).

    Finished slides are skipped on a re-run; every gene is in the .h5ad files, --genes/--panel
    choose which genes get heatmap PNGs and GeoJSON measurements.
    """
    from emo.prediction import predict as run_predict
    from emo.run.lock import hold_folder

    config = prediction_config(ctx.params)
    hold_folder(out, "emo predict")
    path = run_predict(model, features, out, config, tiles=tiles)
    typer.echo(f"predictions written to {path}")
