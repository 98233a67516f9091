"""Proliferation score: the mean expression of the 11 PAM50 proliferation genes (Nielsen et al. 2010).

Used on measured RNA-seq, on EMO-average predictions (slide level) and on EMO-spatial predictions
(tile level, for proliferation maps). Genes missing from the input are skipped and the number used is
recorded, because gene subsets (e.g. SCAN-B's 10,000-gene file) often lack some of the 11.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from emo.errors import EmoError
from emo.io import dense
from emo.panels import GENE_RENAMES, get_panel

__all__ = ["proliferation_genes", "proliferation_score", "proliferation_map"]


def proliferation_genes(available: list[str] | pd.Index) -> list[str]:
    """The proliferation genes found in `available` (old PAM50 names such as CDCA1 are accepted)."""
    names: dict[str, str] = {}
    for g in map(str, available):
        key = GENE_RENAMES.get(g, g)
        if key not in names or g == key:  # the current symbol wins over an old alias
            names[key] = g
    return [names[g] for g in get_panel("pam50_proliferation") if g in names]


def proliferation_score(expr: pd.DataFrame, *, what: str = "expression table") -> pd.Series:
    """Mean of the proliferation genes present in a samples × genes table (log-scale expression).

    The returned Series carries `attrs["genes"]` and `attrs["n_genes"]` (how many of the 11 were used).
    """
    genes = proliferation_genes(expr.columns)
    if not genes:
        raise EmoError(
            f"{what}: none of the 11 PAM50 proliferation genes ({', '.join(get_panel('pam50_proliferation'))}) "
            "is a column; pass a samples × genes table with HGNC symbols"
        )
    score = expr[genes].astype(np.float64).mean(axis=1, skipna=True)
    score.name = "proliferation_score"
    score.attrs.update(genes=genes, n_genes=len(genes))
    return score


def proliferation_map(adata: Any) -> np.ndarray:
    """Per-tile proliferation score of an EMO-spatial AnnData (tiles × genes) as a float32 array [n_tiles]."""
    genes = proliferation_genes(adata.var_names)
    if not genes:
        raise EmoError(
            "EMO-spatial predictions: none of the 11 PAM50 proliferation genes were predicted; "
            "predict them with `emo predict --panel pam50_proliferation`"
        )
    return dense(adata[:, genes].X).astype(np.float64).mean(axis=1).astype(np.float32)
