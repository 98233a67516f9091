"""Per-tile sharpness: variance of the Laplacian of the grey tile at target µm/px.

Out-of-focus tiles have little high-frequency energy. Grey is the mean of R, G, B; the 4-neighbour
Laplacian is computed with array slicing over the whole batch at once (no per-tile Python work).
"""

from __future__ import annotations

import numpy as np

DEFAULT_MIN_SHARPNESS = 10.0


def sharpness(tiles: np.ndarray, step: int = 2) -> np.ndarray:
    """Variance of the Laplacian for uint8 tiles [k, h, w, 3] → float32 [k].

    `step` subsamples pixels (2 = every other row and column: a 4× cheaper estimate that is
    still a Laplacian at target resolution, on a sparser grid).
    """
    grey = tiles[..., :3].astype(np.float32).mean(axis=-1)
    c = grey[:, 1:-1:step, 1:-1:step]
    lap = (
        grey[:, :-2:step, 1:-1:step]
        + grey[:, 2::step, 1:-1:step]
        + grey[:, 1:-1:step, :-2:step]
        + grey[:, 1:-1:step, 2::step]
        - 4.0 * c
    )
    return lap.reshape(len(tiles), -1).var(axis=1).astype(np.float32)
