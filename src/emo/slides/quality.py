"""Per-tile sharpness: variance of the Laplacian of the grey tile at target µm/px.

Out-of-focus tiles have little high-frequency energy. The 4-neighbour Laplacian is computed with array
slicing over a whole strip of tiles at once (no per-tile Python work).
"""

from __future__ import annotations

import numpy as np

DEFAULT_MIN_SHARPNESS = 10.0


def sharpness(tiles: np.ndarray, step: int = 2) -> np.ndarray:
    """Variance of the Laplacian of the grey (mean RGB) tiles, uint8 [k, h, w, 3] → float32 [k].

    `step` subsamples the Laplacian (2 = every other row and column: 4× cheaper, still the
    Laplacian at target resolution). Integer arithmetic on R+G+B keeps it a few ms per tile.
    """
    grey = tiles[..., 0].astype(np.int16)
    grey += tiles[..., 1]
    grey += tiles[..., 2]
    c = grey[:, 1:-1:step, 1:-1:step]
    neighbours = grey[:, :-2:step, 1:-1:step] + grey[:, 2::step, 1:-1:step] + grey[:, 1:-1:step, :-2:step] + grey[:, 1:-1:step, 2::step]
    lap = (neighbours.astype(np.int32) - 4 * c).reshape(len(tiles), -1).astype(np.float32)
    return (lap.var(axis=1) / 9.0).astype(np.float32)  # /9: back to the scale of the mean of R, G, B
