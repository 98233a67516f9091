"""`emo spatial train|predict`: spot-level models on spatial-transcriptomics sections (her2st layout,
`emo.expression.her2st`)."""

from __future__ import annotations

from pathlib import Path

import typer

from emo.cli._apps import app
from emo.expression.her2st import DESCRIPTION as LAYOUT
from emo.spot_models.model import SpotModelConfig

DEFAULT = SpotModelConfig()

spatial_app = typer.Typer(help="Spot-level training and prediction on spatial-transcriptomics sections.",
                          no_args_is_help=True)
app.add_typer(spatial_app, name="spatial")


@spatial_app.command("train")
def train(
    data: Path = typer.Option(..., help=f"folder in the {LAYOUT}"),
    sections: str = typer.Option(..., help="comma-separated training sections (they need images and counts)"),
    genes: str = typer.Option(..., help="gene list file (one per line), panel name or comma-separated genes"),
    out: Path = typer.Option(..., help="model folder to write (manifest.json + weights.safetensors)"),
    hold_out: str = typer.Option("", help="sections whose counts must not shape the target components (the sections "
                                 "you will predict; `emo spatial predict` refuses sections that shaped them)"),
    tile_sizes_um: str = typer.Option(",".join(f"{v:g}" for v in DEFAULT.tile_sizes_um),
                                      help="tile sizes around each spot in µm"),
    backbone: str = typer.Option(DEFAULT.backbone, help="frozen feature backbone (see `emo features --help`)"),
    alpha: float = typer.Option(DEFAULT.alpha, help="ridge penalty per feature"),
    components: int = typer.Option(DEFAULT.n_components, help="target principal components learned from all count sections (0 = off)"),
    context_radius: float = typer.Option(DEFAULT.context_radius, help="neighbour radius in spot pitches for spot context (0 = off)"),
    cache: Path | None = typer.Option(None, help="feature cache folder"),
    finetune: bool = typer.Option(False, "--finetune", help="fine-tune one network for all genes end to end on 224 µm spot tiles instead"),
    finetune_config: Path | None = typer.Option(None, help="with --finetune: JSON of FinetuneConfig fields (epochs, steps, input_size, hed_jitter, ...)"),
) -> None:
    """Train a spot-level model over all genes at once on frozen multi-scale features (or --finetune)."""
    from emo.panels import resolve_genes
    from emo.spot_models import SpotModelConfig, train_spot_model

    if finetune:
        import json

        from emo.spot_models.finetune import train_spot_finetune
        from emo.training.finetune import FinetuneConfig

        config = FinetuneConfig(**(json.loads(finetune_config.read_text()) if finetune_config else {}))
        path = train_spot_finetune(data, [s for s in sections.split(",") if s], resolve_genes(genes), out, config,
                                   cache_dir=cache)
        typer.echo(f"model: {path}")
        return

    config = SpotModelConfig(tile_sizes_um=tuple(float(v) for v in tile_sizes_um.split(",")), backbone=backbone,
                             alpha=alpha, n_components=components or None, context_radius=context_radius)
    model = train_spot_model(data, [s for s in sections.split(",") if s], resolve_genes(genes), config,
                             exclude_from_basis=[s for s in hold_out.split(",") if s], cache_dir=cache,
                             progress=lambda s: typer.echo(f"features: {s}"))
    typer.echo(f"model: {model.save(out)}")


@spatial_app.command("predict")
def predict(
    model: Path = typer.Option(..., help="model folder from `emo spatial train`"),
    data: Path = typer.Option(..., help=f"folder in the {LAYOUT}"),
    sections: str = typer.Option(..., help="comma-separated sections to predict (an image and spots/<S>.tsv each)"),
    out: Path = typer.Option(..., help="output folder: <S>.csv, spots × genes of normalised log1p expression, and <S>.h5ad for scanpy/squidpy"),
    cache: Path | None = typer.Option(None, help="feature cache folder"),
    allow_basis_sections: bool = typer.Option(False, help="predict sections whose counts shaped the target "
                                              "components (their scores are optimistic)"),
) -> None:
    """Predict every spot of each section with a trained spot-level model (no counts needed)."""
    from emo.models.model import read_manifest
    from emo.spot_models import SpotModel, predict_section, write_spot_predictions
    from emo.spot_models.finetune import predict_spot_finetune

    tuned = read_manifest(model).get("kind") == "finetune_cnn"
    fitted = None if tuned else SpotModel.load(model)
    for section in (s for s in sections.split(",") if s):
        pred, spots = (predict_spot_finetune(model, data, section, cache) if tuned
                       else predict_section(fitted, data, section, cache, allow_basis=allow_basis_sections))
        csv, h5ad = write_spot_predictions(out, section, pred, spots, model)
        typer.echo(f"{section}: {csv}, {h5ad}")
