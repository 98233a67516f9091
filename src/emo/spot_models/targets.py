"""Spot targets from the shared spatial representation (`emo.expression.read_her2st` and friends)."""

from __future__ import annotations


import numpy as np
import pandas as pd

from emo.errors import EmoError
from emo.expression import normalize_spots
from emo.expression.st_readers import SPATIAL_KEY


def spot_targets(adata, genes: list[str]) -> np.ndarray:
    """float32 [spots, genes]: counts normalised to 1e4 per spot, log1p; a gene the section does not
    measure is an error naming it (never a silent 0)."""
    norm = normalize_spots(adata)
    pos = pd.Index(norm.var_names).get_indexer(genes)
    if (pos < 0).any():
        missing = [g for g, p in zip(genes, pos) if p < 0]
        section = adata.uns.get(SPATIAL_KEY, {}).get("section_id", "section")
        raise EmoError(f"section {section}: {len(missing)} gene(s) not measured: {', '.join(missing[:10])}; "
                       "drop them from the gene list")
    return np.asarray(norm.X[:, pos].toarray(), np.float32)
