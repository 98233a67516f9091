"""Fitting the spot model (`emo.models.spot.SpotModel`): target components and one ridge solve for
all genes (dual form, spots ≪ features)."""

from __future__ import annotations

import numpy as np

from emo.errors import EmoError
from emo.models.spot import SpotModel, SpotModelConfig


def target_basis(expression: list[np.ndarray], n_components: int) -> np.ndarray:
    """Top principal axes [genes, k] of section-centred expression pooled over sections."""
    pooled = np.concatenate([np.asarray(y, np.float64) - y.mean(0) for y in expression])
    _, _, vt = np.linalg.svd(pooled, full_matrices=False)
    if n_components > vt.shape[0]:
        raise EmoError(f"n_components={n_components}: only {vt.shape[0]} components available from the counts")
    return vt[:n_components].T


def fit_spot_model(designs: list[np.ndarray], targets: list[np.ndarray], genes: list[str],
                   config: SpotModelConfig, basis: np.ndarray | None = None, meta: dict | None = None) -> SpotModel:
    """Ridge over all genes (or their component scores) on the stacked section designs."""
    x = np.concatenate(designs)
    y = np.concatenate(targets).astype(np.float64)
    if len(x) != len(y):
        raise EmoError(f"{len(x)} spots with features but {len(y)} with targets; sections are misaligned")
    x_mean, x_std = x.mean(0), x.std(0) + 1e-6
    x = (x - x_mean) / x_std
    y_mean = y.mean(0)
    t = (y - y_mean) @ basis if basis is not None else y - y_mean
    lam = config.alpha * x.shape[1]
    dual = np.linalg.solve(x @ x.T + lam * np.eye(len(x)), t)
    tensors = {"x_mean": x_mean, "x_std": x_std, "coef": x.T @ dual, "y_mean": y_mean}
    if basis is not None:
        tensors["basis"] = basis
    return SpotModel(list(genes), config, tensors, meta)
