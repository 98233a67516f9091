"""Spot-centred tiles cut from a plain (non-pyramidal) section image.

Stand-in until `emo.slides.tile_slide_at` lands: tile i is centred on spot i, spans `tile_size_um`
and is resampled to `out_px` pixels; the part of a tile outside the image is filled white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from emo.errors import EmoError

Image.MAX_IMAGE_PIXELS = None


def read_image(path: str | Path) -> Image.Image:
    try:
        return Image.open(path).convert("RGB")
    except (OSError, ValueError) as exc:
        raise EmoError(f"{path}: cannot read image ({exc}); give a JPEG/PNG/TIFF section image") from exc


def spot_tiles(image: Image.Image, centres_px: np.ndarray, tile_size_um: float, mpp: float,
               out_px: int = 224) -> np.ndarray:
    """uint8 [n, out_px, out_px, 3] tiles centred on `centres_px` (x, y) in full-resolution pixels."""
    half = tile_size_um / mpp / 2.0
    tiles = np.empty((len(centres_px), out_px, out_px, 3), np.uint8)
    for i, (x, y) in enumerate(np.asarray(centres_px, dtype=np.float64)):
        box = (x - half, y - half, x + half, y + half)
        box_i = tuple(int(round(v)) for v in box)
        tiles[i] = np.asarray(
            image.crop(box_i).resize((out_px, out_px), Image.Resampling.BILINEAR, reducing_gap=2.0)
        )
    return tiles
