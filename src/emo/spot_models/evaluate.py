"""Per-gene agreement between predicted and measured spot expression within one section."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests


def gene_correlations(predicted: np.ndarray, measured: np.ndarray, genes: list[str]) -> pd.DataFrame:
    """Pearson r across spots per gene with its two-sided P and BH-FDR (constant genes: r=0, P=1)."""
    p = predicted - predicted.mean(0)
    m = measured - measured.mean(0)
    denom = np.sqrt((p * p).sum(0) * (m * m).sum(0))
    r = np.divide((p * m).sum(0), denom, out=np.zeros(len(genes)), where=denom > 0)
    n = len(predicted)
    t = r * np.sqrt((n - 2) / np.clip(1 - r * r, 1e-12, None))
    pval = np.where(denom > 0, 2 * stats.t.sf(np.abs(t), n - 2), 1.0)
    fdr = multipletests(pval, method="fdr_bh")[1]
    return pd.DataFrame({"gene": genes, "r": r, "p": pval, "fdr_bh": fdr})


def score_spearman(predicted: pd.DataFrame, measured: pd.DataFrame, genes: list[str]) -> tuple[float, float]:
    """Spearman ρ (and P) between predicted and measured mean expression of a gene set per spot."""
    res = stats.spearmanr(predicted[genes].mean(axis=1), measured[genes].mean(axis=1))
    return float(res.statistic), float(res.pvalue)
