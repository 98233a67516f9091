"""Physical tile geometry and strip reads: level-0 boxes of `tile_size_um` resampled to target µm/px.

A tile is `tile_size_px = round(tile_size_um / target_mpp)` pixels at the target µm/px and spans
`tile_size_level0 = tile_size_px * target_mpp / mpp` level-0 pixels. Pixels come from the coarsest
pyramid level that is not coarser than the target. Horizontally adjacent tiles are read as one
strip and resampled in one call (libvips threads the decode), then cut into tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emo.slides.readers import SlideReader

MAX_STRIP_TILES = 16


@dataclass(frozen=True)
class TileGeometry:
    mpp: float  # level-0 µm/px
    target_mpp: float
    tile_size_um: float
    tile_size_px: int
    tile_size_level0: float
    level: int
    level_downsample: float

    @property
    def level_mpp(self) -> float:
        return self.mpp * self.level_downsample


def plan_geometry(reader: SlideReader, tile_size_um: float, target_mpp: float) -> TileGeometry:
    mpp = float(reader.mpp)
    tile_size_px = max(1, round(tile_size_um / target_mpp))
    downsamples = reader.level_downsamples
    ok = [i for i, d in enumerate(downsamples) if mpp * d <= target_mpp * (1 + 1e-3)]
    level = max(ok, key=lambda i: downsamples[i]) if ok else 0
    return TileGeometry(
        mpp=mpp,
        target_mpp=float(target_mpp),
        tile_size_um=float(tile_size_um),
        tile_size_px=tile_size_px,
        tile_size_level0=tile_size_px * target_mpp / mpp,
        level=level,
        level_downsample=float(downsamples[level]),
    )


def _runs(coords: np.ndarray, step: float) -> list[np.ndarray]:
    """Indices grouped into runs of horizontally adjacent tiles (same y, x one tile apart)."""
    order = np.lexsort((coords[:, 0], coords[:, 1]))
    runs, current = [], [order[0]] if len(order) else []
    for prev, idx in zip(order[:-1], order[1:]):
        adjacent = abs(coords[idx, 1] - coords[prev, 1]) < 1 and abs(coords[idx, 0] - coords[prev, 0] - step) <= 1
        if adjacent and len(current) < MAX_STRIP_TILES:
            current.append(idx)
        else:
            runs.append(np.array(current))
            current = [idx]
    if current:
        runs.append(np.array(current))
    return runs


def iter_tile_runs(reader: SlideReader, geom: TileGeometry, coords_level0: np.ndarray):
    """Yield (indices, tiles uint8 [k, s, s, 3]) for top-left level-0 coords, a strip at a time."""
    coords_level0 = np.asarray(coords_level0, dtype=np.float64).reshape(-1, 2)
    s, ds, step = geom.tile_size_px, geom.level_downsample, geom.tile_size_level0
    size_l = step / ds
    for run in _runs(coords_level0, step):
        x0, y0 = coords_level0[run[0]]
        n = len(run)
        lx, ly = round(x0 / ds), round(y0 / ds)
        lw = max(1, round((x0 + n * step) / ds) - lx)
        lh = max(1, round(size_l))
        strip = reader.read_scaled(geom.level, lx, ly, lw, lh, n * s, s)
        yield run, strip.reshape(s, n, s, 3).transpose(1, 0, 2, 3)


def read_tiles_at(reader: SlideReader, geom: TileGeometry, coords_level0: np.ndarray) -> np.ndarray:
    """Tiles for the given top-left level-0 coords, in the given order."""
    coords_level0 = np.asarray(coords_level0).reshape(-1, 2)
    out = np.empty((len(coords_level0), geom.tile_size_px, geom.tile_size_px, 3), np.uint8)
    for idx, tiles in iter_tile_runs(reader, geom, coords_level0):
        out[idx] = tiles
    return out
