"""Macenko stain normalisation with stain vectors estimated per slide and applied per tile.

Follows Macenko et al. (ISBI 2009) as implemented in HEnorm_python / torchstain (the paper used
StainTools-style Macenko): optical density, drop near-transparent pixels, plane of the two main
eigenvectors, extreme angles (1st/99th percentile) give the H and E vectors, 99th percentile of
concentrations gives the max concentrations. Normalisation is one 3×3 linear map in OD space,
so applying it to a tile costs a lookup, a matmul and an exp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emo.errors import EmoError

IO = 240.0  # transmitted light intensity
BETA = 0.15  # OD below which a pixel is treated as transparent
ALPHA = 1.0  # percentile of extreme angles

# Built-in reference (HEnorm_python / torchstain defaults): H and E OD vectors as columns.
REFERENCE_STAIN_MATRIX = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
REFERENCE_MAX_CONCENTRATIONS = np.array([1.9705, 1.0308])

_OD_LUT = -np.log((np.arange(256, dtype=np.float64) + 1.0) / IO)


@dataclass(frozen=True)
class StainParams:
    stain_matrix: np.ndarray  # [3, 2] H, E optical-density vectors (columns)
    max_concentrations: np.ndarray  # [2]


REFERENCE = StainParams(REFERENCE_STAIN_MATRIX, REFERENCE_MAX_CONCENTRATIONS)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """OD of uint8 RGB pixels, [n, 3] float64."""
    return _OD_LUT[np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)]


def estimate_stains(rgb: np.ndarray, alpha: float = ALPHA, beta: float = BETA) -> StainParams:
    """Macenko stain matrix + 99th-percentile concentrations from the pixels of `rgb` (any shape [..., 3])."""
    od = optical_density(rgb)
    od_hat = od[~np.any(od < beta, axis=1)]
    if len(od_hat) < 100:
        raise EmoError("too few stained pixels to estimate the stain matrix; check the tissue mask or use --no-normalize")
    _, eigvecs = np.linalg.eigh(np.cov(od_hat.T))
    plane = eigvecs[:, 1:3]
    proj = od_hat @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v_min = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_max = plane @ np.array([np.cos(hi), np.sin(hi)])
    # hematoxylin first: it has the larger red OD
    he = np.stack([v_min, v_max] if v_min[0] > v_max[0] else [v_max, v_min], axis=1)
    he *= np.sign(he.sum(axis=0, keepdims=True))  # eigenvectors have arbitrary sign; OD is positive
    # least squares via the pseudo-inverse: lstsq's answer, without LAPACK's per-column cost for 10⁶ pixels
    conc = np.linalg.pinv(he) @ od.T
    max_c = np.percentile(conc, 99, axis=1)
    return StainParams(he, max_c)


def normalization_matrix(source: StainParams, target: StainParams = REFERENCE) -> np.ndarray:
    """3×3 map M with OD_normalised = M @ OD (unmix with source, rescale, remix with target)."""
    scale = target.max_concentrations / source.max_concentrations
    return target.stain_matrix @ np.diag(scale) @ np.linalg.pinv(source.stain_matrix)


def apply_normalization(tiles: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Normalise uint8 RGB pixels [..., 3] with a matrix from `normalization_matrix`.

    Works through the pixels in chunks so temporaries stay small (cache-friendly at any batch size).
    """
    tiles = np.asarray(tiles, dtype=np.uint8)
    lut = _OD_LUT.astype(np.float32)
    m = np.ascontiguousarray(matrix.T, dtype=np.float32)
    out = np.empty(tiles.shape, np.uint8)
    flat_in, flat_out = tiles.reshape(-1, 3), out.reshape(-1, 3)
    chunk = 1 << 16
    for start in range(0, len(flat_in), chunk):
        value = np.take(lut, flat_in[start : start + chunk]) @ m  # take: same values, 2× faster than lut[...]
        np.negative(value, out=value)
        np.exp(value, out=value)
        value *= np.float32(IO)
        np.clip(value, 0, 255, out=value)
        flat_out[start : start + chunk] = value
    return out


def load_reference(image: str | Path | None) -> tuple[StainParams, str]:
    """Reference stains: the built-in one (None/"macenko-default") or estimated from an RGB image file."""
    if image is None or str(image) == "macenko-default":
        return REFERENCE, "macenko-default"
    path = Path(image)
    if not path.is_file():
        raise EmoError(f"{path}: stain reference image not found; pass an RGB image file to --stain-reference")
    from PIL import Image

    try:
        rgb = np.asarray(Image.open(path).convert("RGB"))
    except Exception as exc:
        raise EmoError(f"{path}: cannot read stain reference image ({exc}); use a PNG/JPEG/TIFF RGB image") from None
    try:
        return estimate_stains(rgb), str(path.resolve())
    except EmoError as exc:
        raise EmoError(f"{path}: {exc}") from None
