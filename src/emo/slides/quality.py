"""Per-tile sharpness: variance of the Laplacian of the grey tile at target µm/px.

Out-of-focus tiles have little high-frequency energy. The 4-neighbour Laplacian is evaluated on a
sparse grid of centres (every `step`-th row and column) at full target resolution, so the threshold
keeps its meaning (variance of the dense Laplacian; the sparse grid only samples it), while grey
values are formed only for the centres and their four neighbours (5/9 of the pixels at step 3),
with strided views over a whole strip of tiles at once (no per-tile Python work).
"""

from __future__ import annotations

import numpy as np

from emo.slides.config import TilingConfig

DEFAULT_MIN_SHARPNESS = TilingConfig.model_fields["min_sharpness"].default


def _grey(rgb: np.ndarray) -> np.ndarray:
    """R+G+B as int16 (0..765): integer grey without a float conversion."""
    grey = np.add(rgb[..., 0], rgb[..., 1], dtype=np.int16)
    grey += rgb[..., 2]
    return grey


def sharpness(tiles: np.ndarray, step: int = 3) -> np.ndarray:
    """Variance of the Laplacian of the grey (mean RGB) tiles, uint8 [k, h, w, 3] → float32 [k].

    `step` spaces the Laplacian's centres (1 = dense). 3 is coprime to JPEG's 8-px blocks, so the
    centres visit every position within a block: on resampled 598-px slide tiles it is within 3%
    of the dense value (median 0.6%), as close as step 2 and twice as fast; steps 4 and 8 sample
    only a few block positions and are biased on JPEG-compressed pixels.
    """
    inner = slice(1, -1, step)
    lap = _grey(tiles[:, : -2 : step, inner])  # above
    lap += _grey(tiles[:, 2::step, inner])  # below
    row = tiles[:, inner]
    lap += _grey(row[:, :, : -2 : step])  # left
    lap += _grey(row[:, :, 2::step])  # right
    lap -= 4 * _grey(row[:, :, inner])  # |values| ≤ 4 × 765: int16 holds them
    lap = lap.reshape(len(tiles), -1).astype(np.float32)
    return (lap.var(axis=1) / 9.0).astype(np.float32)  # /9: back to the scale of the mean of R, G, B
