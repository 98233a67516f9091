"""Spot targets from the shared spatial representation (`emo.expression.read_her2st` and friends)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emo.expression import normalize_spots


def section_has_image(data_dir: str | Path, section: str) -> bool:
    """Whether `read_her2st` will find an image (full resolution or preview) for the section."""
    images = Path(data_dir) / "images"
    return (images / f"{section}.jpg").exists() or (images / f"{section}_lowres.png").exists()


def spot_targets(adata, genes: list[str]) -> np.ndarray:
    """float32 [spots, genes]: counts normalised to 1e4 per spot, log1p (genes absent from the section are 0)."""
    norm = normalize_spots(adata)
    pos = pd.Index(norm.var_names).get_indexer(genes)
    have = pos >= 0
    out = np.zeros((norm.n_obs, len(genes)), np.float32)
    out[:, have] = norm.X[:, pos[have]].toarray()
    return out
