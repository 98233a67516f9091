"""`emo spatial train|predict`: spot-level models on spatial-transcriptomics sections (her2st layout,
`emo.expression.her2st`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from emo.cli._apps import app
from emo.cli._options import config_option
from emo.expression.her2st import DESCRIPTION as LAYOUT
from emo.models.spot import SpotModelConfig

spatial_app = typer.Typer(help="Spot-level training and prediction on spatial-transcriptomics sections.",
                          no_args_is_help=True)
app.add_typer(spatial_app, name="spatial")


def spot_model_config(p: dict[str, Any]) -> SpotModelConfig:
    """The `SpotModelConfig` that `emo spatial train`'s parsed options mean (a study's `spots:` gives the same)."""
    from emo.errors import EmoError

    try:
        sizes = tuple(float(v) for v in p["tile_sizes_um"].split(",") if v.strip())
    except ValueError:
        raise EmoError(f"--tile-sizes-um {p['tile_sizes_um']!r}: give sizes in µm, e.g. 224,100,448") from None
    options = {k: p[k] for k in SpotModelConfig.model_fields if k not in {"tile_sizes_um", "n_components"}}
    return SpotModelConfig.build(what="emo spatial train", **options, tile_sizes_um=sizes, n_components=p["components"])


@spatial_app.command("train")
def train(
    ctx: typer.Context,
    data: Path = typer.Option(..., help=f"folder in the {LAYOUT}"),
    sections: str = typer.Option(..., help="comma-separated training sections (they need images and counts)"),
    genes: str = typer.Option(..., help="gene list file (one per line), panel name or comma-separated genes"),
    out: Path = typer.Option(..., help="model folder to write (manifest.json + weights.safetensors)"),
    hold_out: str = typer.Option("", help="sections whose counts must not shape the target components (the sections "
                                 "you will predict; `emo spatial predict` refuses sections that shaped them)"),
    tile_sizes_um: str = config_option(SpotModelConfig, "tile_sizes_um", "--tile-sizes-um", help="comma-separated",
                                       default=",".join(f"{v:g}" for v in SpotModelConfig.model_fields["tile_sizes_um"].default)),
    tile_px: int = config_option(SpotModelConfig, "tile_px", "--tile-px"),
    backbone: str = config_option(SpotModelConfig, "backbone", "--backbone"),
    alpha: float = config_option(SpotModelConfig, "alpha", "--alpha"),
    components: int = config_option(SpotModelConfig, "n_components", "--components"),
    section_standardize: bool = config_option(SpotModelConfig, "section_standardize", "--section-standardize/--no-section-standardize"),
    context_radius: float = config_option(SpotModelConfig, "context_radius", "--context-radius"),
    cache: Path | None = typer.Option(None, help="spot feature cache folder (default: $EMO_CACHE_DIR or ~/.cache/emo)"),
    finetune: bool = typer.Option(False, "--finetune", help="fine-tune one network for all genes end to end on 224 µm spot tiles instead"),
    finetune_config: Path | None = typer.Option(None, help="with --finetune: JSON of FinetuneConfig fields (epochs, steps, input_size, hed_jitter, ...)"),
) -> None:
    """Train a spot-level model over all genes at once on frozen multi-scale features (or --finetune).

    Sections, genes and the output folder are checked first; spot features are cached (`--cache`,
    default `$EMO_CACHE_DIR` or ~/.cache/emo), so a re-run or `emo run` on the same sections reuses them."""
    from emo.panels import resolve_genes
    from emo.spot_models import train_spot_model
    from emo.spot_models.sections import check_out_dir

    check_out_dir(out)
    train_sections = [s for s in sections.split(",") if s]
    if finetune:
        import json

        from emo.spot_models.finetune import train_spot_finetune
        from emo.training.finetune import FinetuneConfig

        config = FinetuneConfig(**(json.loads(finetune_config.read_text()) if finetune_config else {}))
        typer.echo(f"model: {train_spot_finetune(data, train_sections, resolve_genes(genes), out, config, cache=cache)}")
        return

    config = spot_model_config(ctx.params)
    summary = []
    model = train_spot_model(data, train_sections, resolve_genes(genes), config,
                             exclude_from_basis=[s for s in hold_out.split(",") if s], cache=cache,
                             on_done=summary.append)
    typer.echo(summary[0].line(model.save(out)))


@spatial_app.command("predict")
def predict(
    model: Path = typer.Option(..., help="model folder from `emo spatial train`"),
    data: Path = typer.Option(..., help=f"folder in the {LAYOUT}"),
    sections: str = typer.Option(..., help="comma-separated sections to predict (an image and spots/<S>.tsv each)"),
    out: Path = typer.Option(..., help="output folder: <S>.csv, spots × genes of normalised log1p expression, and <S>.h5ad for scanpy/squidpy"),
    cache: Path | None = typer.Option(None, help="spot feature cache folder (default: $EMO_CACHE_DIR or ~/.cache/emo)"),
    allow_basis_sections: bool = typer.Option(False, help="predict sections whose counts shaped the target "
                                              "components (their scores are optimistic)"),
) -> None:
    """Predict every spot of each section with a trained spot-level model (no counts needed)."""
    from emo.models import load
    from emo.spot_models import check_sections, predict_section, write_spot_predictions
    from emo.spot_models.sections import check_out_dir

    fitted = load(model)
    wanted = [s for s in sections.split(",") if s]
    check_sections(data, wanted, counts=False)
    check_out_dir(out)
    for section in wanted:
        pred, spots = predict_section(fitted, data, section, cache, allow_basis=allow_basis_sections)
        csv, h5ad = write_spot_predictions(out, section, pred, spots, model)
        typer.echo(f"{section}: {csv}, {h5ad}")
