"""Per-gene association statistics, vectorised over genes (columns).

Every function takes `measured` and `predicted` as [n_samples, n_genes] arrays and returns one value
per gene. Missing values (NaN) are dropped pairwise per gene, so a gene measured in fewer samples is
still scored on the samples it has. Results agree with the per-gene references the paper used
(`scipy.stats.spearmanr`, `scipy.stats.pearsonr`, `sklearn.metrics.r2_score`, statsmodels
`multipletests`); the tests check that.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = ["spearman", "pearson", "r2_score", "adjust_pvalues", "pairwise_n"]


def _pair(measured: ArrayLike, predicted: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(measured, dtype=np.float64)
    y = np.asarray(predicted, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if y.ndim == 1:
        y = y[:, None]
    if x.shape != y.shape:
        raise ValueError(f"measured {x.shape} and predicted {y.shape} must have the same shape")
    ok = np.isfinite(x) & np.isfinite(y)
    return np.where(ok, x, np.nan), np.where(ok, y, np.nan), ok


def pairwise_n(measured: ArrayLike, predicted: ArrayLike) -> np.ndarray:
    """Number of samples with both values present, per gene."""
    return _pair(measured, predicted)[2].sum(axis=0)


def _corr(x: np.ndarray, y: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r per column over the rows where `ok`; constant columns give NaN."""
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xc = np.where(ok, x - np.nansum(x, axis=0) / n, 0.0)
        yc = np.where(ok, y - np.nansum(y, axis=0) / n, 0.0)
        sxx = np.einsum("ij,ij->j", xc, xc)
        syy = np.einsum("ij,ij->j", yc, yc)
        r = np.einsum("ij,ij->j", xc, yc) / np.sqrt(sxx * syy)
    r = np.where((sxx > 0) & (syy > 0) & (n >= 2), np.clip(r, -1.0, 1.0), np.nan)
    return r, n


def _t_pvalue(r: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Two-sided P of a correlation from Student's t with n − 2 df, as scipy.stats.spearmanr does."""
    dof = (n - 2).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt((dof / ((r + 1.0) * (1.0 - r))).clip(0))
        p = 2.0 * stats.t.sf(np.abs(t), dof)
    return np.where((n > 2) & np.isfinite(r), np.minimum(p, 1.0), np.nan)


def spearman(measured: ArrayLike, predicted: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Spearman ρ and its two-sided P per gene (ties get average ranks)."""
    x, y, ok = _pair(measured, predicted)
    policy = "propagate" if ok.all() else "omit"  # "omit" ranks around NaNs but is slower
    rx = stats.rankdata(x, axis=0, nan_policy=policy)
    ry = stats.rankdata(y, axis=0, nan_policy=policy)
    rho, n = _corr(rx, ry, ok)
    return rho, _t_pvalue(rho, n)


def pearson(measured: ArrayLike, predicted: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r and its two-sided P per gene (the t test is exact under bivariate normality)."""
    x, y, ok = _pair(measured, predicted)
    r, n = _corr(x, y, ok)
    return r, _t_pvalue(r, n)


def r2_score(measured: ArrayLike, predicted: ArrayLike) -> np.ndarray:
    """R²pred per gene: sklearn.metrics.r2_score(measured, predicted) with its force_finite rule."""
    x, y, ok = _pair(measured, predicted)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(x, axis=0) / n
        ss_res = np.nansum((x - y) ** 2, axis=0)
        ss_tot = np.nansum((x - mean) ** 2, axis=0)
        r2 = 1.0 - ss_res / ss_tot
    # sklearn: a constant target scores 1 if predicted perfectly, else 0.
    r2 = np.where(ss_tot == 0, np.where(ss_res == 0, 1.0, 0.0), r2)
    return np.where(n >= 2, r2, np.nan)


def adjust_pvalues(p: ArrayLike, method: str = "fdr_bh") -> np.ndarray:
    """Multiple-testing adjustment over the non-missing P values (statsmodels `multipletests`)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method=method)[1]
    return out


def permutation_p(observed: ArrayLike, null: ArrayLike) -> np.ndarray:
    """Empirical P per column, (1 + #{null ≥ observed}) / (K + 1) over the K rows of `null` (Phipson &
    Smyth 2010: never 0, as the observed labelling is one of the permutations); NaN where observed is."""
    observed = np.atleast_1d(np.asarray(observed, dtype=np.float64))
    null = np.asarray(null, dtype=np.float64).reshape(-1, observed.size)
    p = (1 + (null >= observed).sum(axis=0)) / (len(null) + 1)
    return np.where(np.isfinite(observed), p, np.nan)
