"""Slide thumbnail with the kept tiles outlined: the picture that shows what was tiled."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_thumbnail(
    thumb: np.ndarray, coords_level0: np.ndarray, tile_size_level0: float, scale: float, out_path: Path
) -> Path:
    """Draw each kept tile (level-0 top-left coords) as a green box on `thumb` (scale = thumb px / level-0 px)."""
    from PIL import Image, ImageDraw

    from emo.io import atomic_path

    img = Image.fromarray(np.ascontiguousarray(thumb[..., :3]))
    draw = ImageDraw.Draw(img)
    size = tile_size_level0 * scale
    for x, y in np.asarray(coords_level0, dtype=np.float64).reshape(-1, 2) * scale:
        draw.rectangle([x, y, x + size - 1, y + size - 1], outline=(0, 160, 0), width=1)
    with atomic_path(out_path) as tmp:
        img.save(tmp, format="PNG")
    return out_path
