"""`emo features`: cache one backbone embedding per kept tile (per-slide HDF5 under OUT/features/<backbone>/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from emo.cli._apps import app
from emo.cli._options import config_option
from emo.features.config import ExtractionConfig as C


def extraction_config(p: dict[str, Any]) -> C:
    """The `ExtractionConfig` that `emo features`' parsed options mean (a study's `features:` gives the same)."""
    return C.build(what="emo features", **{k: p[k] for k in C.model_fields})


@app.command()
def features(
    ctx: typer.Context,
    tile_dir: Path = typer.Argument(..., help="Folder of tile stores (<slide_id>.h5) written by `emo tile`, or its parent."),
    out: Path = typer.Option(..., "--out", help="Output folder; features go to OUT/features/<backbone>/<slide_id>.h5."),
    backbone: str = config_option(C, "backbone", "--backbone"),
    weights: str = config_option(C, "weights", "--weights"),
    batch_size: int = config_option(C, "batch_size", "--batch-size"),
    device: Optional[str] = config_option(C, "device", "--device"),
    workers: int = config_option(C, "workers", "--workers"),
    pooling: Optional[str] = config_option(C, "pooling", "--pooling"),
    input_size: Optional[int] = config_option(C, "input_size", "--input-size"),
    executor: str = typer.Option("local", "--executor", help="local: one process feeding one device (fastest on a machine); ray or slurm: "
                                                             "slides split into jobs that run where the cluster puts them."),
    slides_per_job: int = config_option(C, "slides_per_job", "--slides-per-job"),
) -> None:
    """Run a backbone once over every kept tile; finished slides are skipped when backbone and tiles are unchanged."""
    from emo.features import extract_features
    from emo.run.lock import hold_folder

    config = extraction_config(ctx.params)
    hold_folder(out, "emo features")
    folder = extract_features(tile_dir, out / "features", config, executor=executor)
    typer.echo(f"features: {folder}")
