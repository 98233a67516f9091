"""`emo features`: cache one backbone embedding per kept tile (per-slide HDF5 under OUT/features/<backbone>/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emo.cli._apps import app


@app.command()
def features(
    tile_dir: Path = typer.Argument(..., help="Folder of tile stores (<slide_id>.h5) written by `emo tile`, or its parent."),
    out: Path = typer.Option(..., "--out", help="Output folder; features go to OUT/features/<backbone>/<slide_id>.h5."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone",
                                 help="Registered name (efficientnet_lite0, …, or a pathology encoder preset such as "
                                      "uni, uni2_h, virchow2, h_optimus_1, conch_v15; `emo info --backbones` lists "
                                      "them) or timm:<arch> / torchvision:<arch>."),
    weights: str = typer.Option("default", "--weights",
                                help="default | imagenet (downloaded once and cached) | none (random init) | "
                                     "hf-hub:<repo id> (token from HF_TOKEN) | path to .pth/.pt/.bin/.safetensors, or for an "
                                     "encoder preset the folder holding its published checkpoint "
                                     "(default for presets: ~/.config/emo/weights.yaml, then the HF cache)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Tiles per forward pass."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    workers: int = typer.Option(2, "--workers", help="Loader processes reading and normalising tiles (0: in-process)."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="avg, or multistage (append pooled earlier stages; timm only)."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Resize tiles to this many px instead of the backbone's native input size."),
    executor: str = typer.Option("local", "--executor", help="local: one process feeding one device (fastest on a machine); ray or slurm: "
                                                             "slides split into jobs that run where the cluster puts them."),
    slides_per_job: int = typer.Option(8, "--slides-per-job", min=1, help="Slides per ray/slurm job."),
) -> None:
    """Run a backbone once over every kept tile; finished slides are skipped when backbone and tiles are unchanged."""
    from emo.features import extract_features
    from emo.features.config import ExtractionConfig
    from emo.run.lock import hold_folder

    config = ExtractionConfig.build(backbone=backbone, weights=weights, batch_size=batch_size, device=device,
                                    workers=workers, pooling=pooling, input_size=input_size, slides_per_job=slides_per_job)
    hold_folder(out, "emo features")
    folder = extract_features(tile_dir, out, **config.model_dump(), executor=executor)
    typer.echo(f"features: {folder}")
