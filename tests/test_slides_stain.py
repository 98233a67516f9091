"""Macenko: recover known stain vectors from a synthetic mixture; agree with torchstain on a real tile."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emo.slides.stain import (
    IO,
    REFERENCE,
    apply_normalization,
    estimate_stains,
    load_reference,
    normalization_matrix,
)


def _mixture(he: np.ndarray, n: int = 40_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conc = rng.uniform(0.6, 2.0, (2, n))
    conc[1, : n // 8] = 0.0  # pure hematoxylin pixels
    conc[0, n // 8 : n // 4] = 0.0  # pure eosin pixels
    od = he @ conc
    return np.clip(np.round(IO * np.exp(-od.T) - 1), 0, 255).astype(np.uint8).reshape(200, -1, 3), conc


def test_macenko_recovers_known_stain_vectors():
    he = np.array([[0.65, 0.25], [0.70, 0.85], [0.29, 0.46]])  # not the built-in reference
    he /= np.linalg.norm(he, axis=0)
    rgb, conc = _mixture(he)
    est = estimate_stains(rgb)
    cosines = np.sum(est.stain_matrix * he, axis=0) / np.linalg.norm(est.stain_matrix, axis=0)
    assert cosines.min() > 0.999  # H first, E second, each within ~2.5° of the truth
    np.testing.assert_allclose(est.max_concentrations, np.percentile(conc, 99, axis=1), rtol=0.02)


def test_agrees_with_torchstain_numpy_macenko(shared_data):
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    rgb = np.asarray(Image.open(shared_data("tiles/tissue-level0-7352-11762-7864-12274.png")).convert("RGB"))
    expected, _, _ = NumpyMacenkoNormalizer().normalize(rgb, stains=False)
    ours = apply_normalization(rgb, normalization_matrix(estimate_stains(rgb), REFERENCE))
    diff = np.abs(ours.astype(int) - expected.astype(int))
    assert diff.mean() < 0.5 and np.percentile(diff, 99.9) <= 2


def test_stain_reference_image(shared_data, tmp_path):
    path = shared_data("tiles/tcga-lung-rgb.png")
    params, name = load_reference(path)
    assert name == str(path.resolve()) and params.stain_matrix.shape == (3, 2)
    rgb = np.asarray(Image.open(path).convert("RGB"))
    to_itself = apply_normalization(rgb, normalization_matrix(estimate_stains(rgb), params))
    to_default = apply_normalization(rgb, normalization_matrix(estimate_stains(rgb), REFERENCE))
    assert np.abs(to_itself.astype(int) - rgb).mean() < np.abs(to_default.astype(int) - rgb).mean()
    assert np.abs(to_itself.astype(int) - rgb).mean() < 6


def test_blank_image_cannot_define_stains():
    from emo.errors import EmoError

    with pytest.raises(EmoError, match="stained pixels"):
        estimate_stains(np.full((50, 50, 3), 245, np.uint8))
