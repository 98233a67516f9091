"""`emo train`: all-gene heads on cached features (default) or the paper's per-gene CNN protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emo.cli._apps import app


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Model directory to write (manifest.json + weights.safetensors)."),
    targets: Path = typer.Option(..., "--targets", help="targets.h5ad from `emo expression prepare` (or per-tile targets)."),
    features: Optional[Path] = typer.Option(None, "--features", help="Feature folder from `emo features` (default path)."),
    head: str = typer.Option("ridge", "--head", help="ridge (closed form, per-gene penalty), mlp, or attention_mil (gated attention over a slide's tiles)."),
    genes: Optional[str] = typer.Option(None, "--genes", help="Genes and/or panels, e.g. 'pam50,ESR1', or a file with one gene per line (default: all)."),
    level: str = typer.Option("slide", "--level", help="slide: bulk targets, slide = mean of tiles; tile: per-tile/spot targets."),
    seed: int = typer.Option(0, "--seed", help="Random seed (MLP init, data order, tile sampling)."),
    allow_missing_features: bool = typer.Option(False, "--allow-missing-features", help="Skip train/tune slides without features."),
    permute_labels: bool = typer.Option(
        False, "--permute-labels", help="Null baseline: shuffle the train/tune labels among samples (seeded by --seed) before fitting."
    ),
    protocol: str = typer.Option("default", "--protocol", help="default (shared backbone + heads), paper (one Inception V3 per gene) or finetune (one network for all genes, end to end)."),
    tiles: Optional[Path] = typer.Option(None, "--tiles", help="Tile-store folder (needed by --protocol paper)."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Paper protocol: maximum epochs (500)."),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", help="Paper protocol: steps per epoch (150)."),
    tuning_batches: Optional[int] = typer.Option(None, "--tuning-batches", help="Paper protocol: tuning batches per epoch (313)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Paper protocol: tiles per batch (32)."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Paper protocol: early-stopping patience in epochs (80)."),
    min_delta: Optional[float] = typer.Option(None, "--min-delta", help="Paper protocol: early-stopping min delta (0.003)."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Paper protocol: CNN input side in px (299)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Paper protocol: Adam learning rate (1e-6)."),
    keep_best: Optional[int] = typer.Option(None, "--keep-best", help="Paper protocol: best-epoch checkpoints kept (10)."),
    keep_random: Optional[int] = typer.Option(None, "--keep-random", help="Paper protocol: random-epoch checkpoints kept (10)."),
    workers: int = typer.Option(1, "--workers", help="Paper protocol: genes trained in parallel (local processes)."),
    executor: str = typer.Option("local", "--executor", help="Paper protocol: where gene jobs run: local | ray | slurm."),
    gpus: float = typer.Option(0, "--gpus", help="Paper protocol: GPUs per gene job (Ray num_gpus / SLURM gpus_per_node)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Paper protocol: initial CNN weights (imagenet, none, or a file)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Paper protocol: CNN (torchvision:inception_v3; others for tests)."),
    components: Optional[int] = typer.Option(None, "--components", help="Finetune: predict this many target principal components (default: every gene)."),
    hed_jitter: Optional[float] = typer.Option(None, "--hed-jitter", help="Finetune: σ of HED colour augmentation (0 = off)."),
) -> None:
    """Train a model predicting expression of all (or the chosen) genes from H&E tiles.

    Default: fits every gene together on cached tile features (`emo features`). `--protocol paper`
    trains one end-to-end Inception V3 per gene exactly as Wang et al. 2021 (slow; flags shrink it).
    """
    from emo.errors import EmoError
    from emo.run.lock import hold_folder
    from emo.training.train import train_config

    if protocol not in ("default", "paper", "finetune"):
        raise EmoError(f"unknown --protocol {protocol!r}; choose default, paper or finetune")
    hold_folder(out, "emo train")
    if protocol == "finetune":
        from emo.training.finetune import FinetuneConfig, train_finetune

        if tiles is None or permute_labels:
            raise EmoError("--protocol finetune needs --tiles TILE_DIR (and no --permute-labels)")
        overrides = {k: v for k, v in dict(
            max_epochs=max_epochs, steps_per_epoch=steps_per_epoch, tuning_batches=tuning_batches,
            batch_size=batch_size, patience=patience, min_delta=min_delta, input_size=input_size, lr=lr, seed=seed,
            weights=weights, backbone=backbone, n_components=components, hed_jitter=hed_jitter).items() if v is not None}
        path = train_finetune(tiles, targets, out, genes, FinetuneConfig(**overrides), executor=executor, level=level,
                              gpus=gpus)
        typer.echo(f"model written to {path}")
        return
    paper = {k: v for k, v in dict(
        max_epochs=max_epochs, steps_per_epoch=steps_per_epoch, tuning_batches=tuning_batches,
        batch_size=batch_size, patience=patience, min_delta=min_delta, input_size=input_size, lr=lr,
        keep_best=keep_best, keep_random=keep_random, weights=weights, backbone=backbone).items() if v is not None}
    config = train_config(protocol="paper" if protocol == "paper" else "features", head=head, level=level,
                          genes=genes, seed=seed, allow_missing_features=allow_missing_features,
                          permute_labels=permute_labels, paper=paper if protocol == "paper" else None)
    if protocol == "paper":
        from emo.training.paper import train_paper_protocol

        if tiles is None or genes is None:
            raise EmoError("--protocol paper needs --tiles TILE_DIR and --genes (one CNN per gene)")
        path = train_paper_protocol(tiles, targets, out, genes, config.paper_config(),
                                    executor=executor, workers=workers, gpus=gpus)
    else:
        from emo.training import train_model
        from emo.features import resolve_feature_dir

        if features is None:
            features = resolve_feature_dir(targets.parent / "features")
        path = train_model(features, targets, out, config)
    typer.echo(f"model written to {path}")
