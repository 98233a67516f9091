"""`emo train-classifier` and `emo filter`: a tile classifier for the region of interest."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from emo.cli._apps import app


@app.command("train-classifier")
def train_classifier(
    labels: List[Path] = typer.Argument(..., help="Label files: <slide_id>.geojson (QuPath polygons) or <slide_id>_labeled_coordinates.tsv (per spot)."),
    features: Path = typer.Option(..., "--features", help="Feature folder from `emo features`."),
    out: Path = typer.Option(..., "--out", help="Classifier directory to write."),
    tiles: Optional[Path] = typer.Option(None, "--tiles", help="Tile-store folder (needed for GeoJSON labels: tile size)."),
    merge: List[str] = typer.Option([], "--merge", help="Rename classes, e.g. 'cancer in situ=other' (repeatable)."),
    min_count: int = typer.Option(5, "--min-count", help="Drop classes with fewer labelled tiles."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a tile classifier on cached features from annotated regions; prints held-out accuracy."""
    from emo.errors import EmoError
    from emo.training.tile_classifier import train_tile_classifier

    mapping = {}
    for item in merge:
        if "=" not in item:
            raise EmoError(f"--merge {item!r}: write it as 'old class=new class'")
        old, new = item.split("=", 1)
        mapping[old.strip()] = new.strip()
    m = train_tile_classifier(features, labels, out, tiles=tiles, merge=mapping or None, min_count=min_count, seed=seed)
    typer.echo(f"held-out accuracy {m['heldout_accuracy']:.3f} (balanced {m['heldout_balanced_accuracy']:.3f}, "
               f"majority baseline {m['majority_baseline']:.3f}; grouped by {m['grouping']}); classifier in {out}")


@app.command("filter")
def filter_tiles(
    tile_dir: Path = typer.Argument(..., help="Tile-store folder to filter (left untouched)."),
    classifier: Path = typer.Option(..., "--classifier", help="Classifier directory from `emo train-classifier`."),
    keep: List[str] = typer.Option(..., "--keep", help="Class to keep (repeatable), e.g. 'invasive cancer'."),
    out: Path = typer.Option(..., "--out", help="Folder for the filtered tile stores."),
    features: Optional[Path] = typer.Option(None, "--features", help="Features of TILE_DIR (default: TILE_DIR/../features/<backbone>)."),
) -> None:
    """Write new tile stores keeping only the tiles the classifier assigns to the --keep classes."""
    from emo.training.tile_classifier import filter_tile_stores

    summary = filter_tile_stores(classifier, tile_dir, out, keep, feature_dir=features)
    typer.echo(f"kept {int(summary['n_kept'].sum())} of {int(summary['n_tiles'].sum())} tiles in {len(summary)} "
               f"slide(s); stores in {out}")
