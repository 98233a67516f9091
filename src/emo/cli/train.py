"""`emo train`: all-gene heads on cached features (default) or a CNN protocol (paper, finetune) on tiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from emo.cli._apps import app
from emo.cli._options import config_option
from emo.training.config import FinetuneConfig, PaperProtocolConfig, TrainConfig

_CNN = {"paper": PaperProtocolConfig, "finetune": FinetuneConfig}


def _cnn_option(field: str, flag: str) -> Any:
    """An option of the CNN protocols' sub-configs: unset means each protocol's own default (listed)."""
    owners = [p for p, c in _CNN.items() if field in c.model_fields]
    info = _CNN[owners[0]].model_fields[field]
    defaults = "; ".join(f"{p}: {_CNN[p].model_fields[field].default}" for p in owners)
    return typer.Option(None, flag, help=f"{' and '.join(owners).capitalize()} protocol: {info.description} ({defaults}).")


def train_config(p: dict[str, Any]) -> TrainConfig:
    """The `TrainConfig` that `emo train`'s parsed options mean (a study's `training:` gives the same object)."""
    from emo.errors import EmoError

    fields = {f for c in _CNN.values() for f in c.model_fields} - {"seed"}  # seed is training.seed
    cnn = {k: v for k, v in {**p, "n_components": p["components"]}.items() if k in fields and v is not None}
    protocol = p["protocol"]
    if cnn and protocol not in _CNN:
        raise EmoError(f"--{next(iter(cnn)).replace('_', '-')}: an option of --protocol paper or finetune, not {protocol}")
    own = ("protocol", "head", "level", "genes", "seed", "allow_missing_features", "permute_labels")
    return TrainConfig.build(what="emo train", **{k: p[k] for k in own}, **({protocol: cnn} if cnn else {}))


@app.command()
def train(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Model directory to write (manifest.json + weights.safetensors)."),
    targets: Path = typer.Option(..., "--targets", help="targets.h5ad from `emo expression prepare` (or per-tile targets)."),
    features: Optional[Path] = typer.Option(None, "--features", help="Feature folder from `emo features` (default: beside the targets)."),
    tiles: Optional[Path] = typer.Option(None, "--tiles", help="Tile-store folder (needed by the paper and finetune protocols)."),
    protocol: str = config_option(TrainConfig, "protocol", "--protocol"),
    head: str = config_option(TrainConfig, "head", "--head"),
    genes: Optional[str] = config_option(TrainConfig, "genes", "--genes"),
    level: str = config_option(TrainConfig, "level", "--level"),
    seed: int = config_option(TrainConfig, "seed", "--seed"),
    allow_missing_features: bool = config_option(TrainConfig, "allow_missing_features", "--allow-missing-features"),
    permute_labels: bool = config_option(TrainConfig, "permute_labels", "--permute-labels", help="seeded by --seed"),
    max_epochs: Optional[int] = _cnn_option("max_epochs", "--max-epochs"),
    steps_per_epoch: Optional[int] = _cnn_option("steps_per_epoch", "--steps-per-epoch"),
    tuning_batches: Optional[int] = _cnn_option("tuning_batches", "--tuning-batches"),
    batch_size: Optional[int] = _cnn_option("batch_size", "--batch-size"),
    patience: Optional[int] = _cnn_option("patience", "--patience"),
    min_delta: Optional[float] = _cnn_option("min_delta", "--min-delta"),
    input_size: Optional[int] = _cnn_option("input_size", "--input-size"),
    lr: Optional[float] = _cnn_option("lr", "--lr"),
    keep_best: Optional[int] = _cnn_option("keep_best", "--keep-best"),
    keep_random: Optional[int] = _cnn_option("keep_random", "--keep-random"),
    weights: Optional[str] = _cnn_option("weights", "--weights"),
    backbone: Optional[str] = _cnn_option("backbone", "--backbone"),
    components: Optional[int] = _cnn_option("n_components", "--components"),
    hed_jitter: Optional[float] = _cnn_option("hed_jitter", "--hed-jitter"),
    workers: int = typer.Option(1, "--workers", help="Paper protocol: genes trained in parallel (local processes)."),
    executor: str = typer.Option("local", "--executor", help="Paper and finetune protocols: where the jobs run: local | ray | slurm."),
    gpus: float = typer.Option(0, "--gpus", help="Paper and finetune protocols: GPUs per job (Ray num_gpus / SLURM gpus_per_node)."),
) -> None:
    """Train a model predicting expression of all (or the chosen) genes from H&E tiles.

    Default: fits every gene together on cached tile features (`emo features`). `--protocol paper`
    trains one end-to-end Inception V3 per gene exactly as Wang et al. 2021 (slow; flags shrink it);
    `--protocol finetune` fine-tunes one network for all genes.
    """
    from emo.errors import EmoError
    from emo.run.lock import hold_folder
    from emo.training import train_protocol

    config = train_config(ctx.params)
    if config.reads_tiles:
        if tiles is None:
            raise EmoError(f"--protocol {protocol} needs --tiles TILE_DIR (it trains on tile pixels)")
        source = tiles
    else:
        from emo.features import resolve_feature_dir

        source = features or resolve_feature_dir(targets.parent / "features")
    hold_folder(out, "emo train")
    path = train_protocol(source, targets, out, config, executor=executor, workers=workers, gpus=gpus)
    typer.echo(f"model written to {path}")
