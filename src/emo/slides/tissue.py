"""Tissue detection on a low-resolution thumbnail: saturation Otsu minus pen ink and glass.

H&E pixels are purple to pink: red ≥ green and blue not far below red. Green/blue ink has green
above red; red ink has both green and blue far below red. Glass is unsaturated. Otsu on
saturation separates tissue from glass on a whole-slide thumbnail; its threshold is clipped to a
range so a thumbnail that is all tissue (or all glass) is not split in two.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

# Saturation (0..1) below which a pixel is always glass / above which it is always stained.
SATURATION_RANGE = (0.06, 0.16)


def _saturation(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b).astype(np.float32)
    mn = np.minimum(np.minimum(r, g), b)
    return (mx - mn) / np.maximum(mx, 1)


def pen_mask(rgb: np.ndarray, min_object_px: int = 4, dilate_px: int = 2) -> np.ndarray:
    """Pixels covered by red, green, blue or black marker ink (dilated to swallow blurred halos)."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    sat = _saturation(rgb)
    green_blue = (g > r + 8) & (sat > 0.12)
    red = (r > 90) & (g < 0.45 * r) & (b < 0.5 * r)
    dark_red = (r > 45) & (r < 140) & (b < 0.56 * r) & (g < 0.45 * r) & (g > 0.2 * r)
    black = (np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) < 60) & (sat < 0.35)
    ink = green_blue | red | dark_red | black
    if min_object_px > 0 and ink.any():
        ink = remove_small_objects(ink, max_size=min_object_px)
    if dilate_px > 0 and ink.any():
        ink = ndimage.binary_dilation(ink, iterations=dilate_px)
    return ink


def tissue_mask(rgb: np.ndarray, min_object_px: int = 16, pen: bool = True) -> np.ndarray:
    """Boolean mask of stained tissue in an RGB thumbnail (uint8 [h, w, 3])."""
    rgb = np.asarray(rgb)[..., :3]
    sat = _saturation(rgb)
    ink = pen_mask(rgb) if pen else np.zeros(sat.shape, bool)
    candidates = sat[~ink]
    lo, hi = SATURATION_RANGE
    thr = hi
    if candidates.size > 16 and np.ptp(candidates) > 0:
        thr = float(np.clip(threshold_otsu(candidates), lo, hi))
    # too bright to be stained tissue even if tinted (glass with a colour cast)
    not_glass = np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) < 235
    mask = (sat > thr) & not_glass & ~ink
    if min_object_px > 0:
        mask = remove_small_objects(mask, max_size=min_object_px)
        mask = remove_small_holes(mask, max_size=min_object_px)
    return mask
