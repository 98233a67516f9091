"""`train_protocol`: the one entry point to every training protocol, so the CLI and `emo run` branch on
`TrainConfig.protocol` in one place."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from emo.training.config import TrainConfig

if TYPE_CHECKING:
    from emo.executors import Executor


def train_protocol(source: Path, targets: Path, out_dir: Path, config: TrainConfig, *,
          executor: str | Executor | None = None, workers: int = 1, gpus: float = 0) -> Path:
    """Train `config.protocol` into `out_dir` and return it. `source` is the tile-store folder for the
    CNN protocols (`config.reads_tiles`), else the feature folder; `workers`/`gpus` size the CNN jobs."""
    executor = executor or "local"
    if config.protocol == "paper":
        from emo.training.paper import train_paper_protocol

        return train_paper_protocol(source, targets, out_dir, config.genes, config.paper_config(), executor,
                                    workers=workers, gpus=gpus)
    if config.protocol == "finetune":
        from emo.training.finetune import train_finetune

        return train_finetune(source, targets, out_dir, config.genes, config.finetune_config(), executor,
                              level=config.level, gpus=gpus)
    from emo.training.train import train_model

    return train_model(source, targets, out_dir, config)
