"""Physical tile geometry and strip reads: level-0 boxes of `tile_size_um` resampled to target µm/px.

A tile is `tile_size_px = round(tile_size_um / target_mpp)` pixels at the target µm/px and spans
`tile_size_level0 = tile_size_px * target_mpp / mpp` level-0 pixels. Pixels come from the coarsest
pyramid level that is not coarser than the target. Adjacent tiles (along x or y, whichever needs
fewer reads) are read as one strip, so JPEG tiles they share are decoded once, resampled in
one call and cut into tiles; strips are decoded ahead in threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from emo.slides.readers import SlideReader

MAX_STRIP_TILES = 16
# Strips decoded concurrently (libvips, OpenSlide and tifffile release the GIL): one per core.
READ_THREADS = min(4, os.cpu_count() or 1)


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
    level = reader.best_level(target_mpp)
    return TileGeometry(
        mpp=mpp,
        target_mpp=float(target_mpp),
        tile_size_um=float(tile_size_um),
        tile_size_px=tile_size_px,
        tile_size_level0=tile_size_px * target_mpp / mpp,
        level=level,
        level_downsample=float(reader.level_downsamples[level]),
    )


def _runs_along(coords: np.ndarray, step: float, axis: int) -> list[np.ndarray]:
    other = 1 - axis
    order = np.lexsort((coords[:, axis], coords[:, other]))
    runs, current = [], [order[0]] if len(order) else []
    for prev, idx in zip(order[:-1], order[1:]):
        adjacent = abs(coords[idx, other] - coords[prev, other]) < 1 and abs(coords[idx, axis] - coords[prev, axis] - step) <= 1
        if adjacent and len(current) < MAX_STRIP_TILES:
            current.append(idx)
        else:
            runs.append(np.array(current))
            current = [idx]
    if current:
        runs.append(np.array(current))
    return runs


def _runs(coords: np.ndarray, step: float) -> tuple[list[np.ndarray], int]:
    """Indices grouped into runs of adjacent tiles along x (axis 0) or y (axis 1), whichever gives fewer reads."""
    by_x, by_y = _runs_along(coords, step, 0), _runs_along(coords, step, 1)
    return (by_x, 0) if len(by_x) <= len(by_y) else (by_y, 1)


def iter_tile_runs(
    reader: SlideReader, geom: TileGeometry, coords_level0: np.ndarray, prefetch: bool = True, strips: bool = True
):
    """Yield (indices, tiles uint8 [k, s, s, 3]) for top-left level-0 coords, a strip at a time.

    A strip is resampled as one image, so a tile's edge pixels depend on its strip neighbours; with
    `strips=False` every tile is read and resampled alone, so its pixels never depend on which other
    tiles are read with it (what feature caches and training need).

    With `prefetch`, strips are decoded ahead in `READ_THREADS` background threads while the
    caller works on the current one; order is preserved.
    """
    coords_level0 = np.asarray(coords_level0, dtype=np.float64).reshape(-1, 2)
    s, ds, step = geom.tile_size_px, geom.level_downsample, geom.tile_size_level0
    size_l = step / ds

    def read(run: np.ndarray):
        x0, y0 = coords_level0[run[0]]
        n = len(run)
        lx, ly = round(x0 / ds), round(y0 / ds)
        if axis == 0:  # a row of tiles: [s, n*s, 3] → [n, s, s, 3]
            lw, lh = max(1, round((x0 + n * step) / ds) - lx), max(1, round(size_l))
            strip = reader.read_scaled(geom.level, lx, ly, lw, lh, n * s, s)
            return run, strip.reshape(s, n, s, 3).transpose(1, 0, 2, 3)
        lw, lh = max(1, round(size_l)), max(1, round((y0 + n * step) / ds) - ly)
        strip = reader.read_scaled(geom.level, lx, ly, lw, lh, s, n * s)
        return run, strip.reshape(n, s, s, 3)

    runs, axis = _runs(coords_level0, step) if strips else ([np.array([i]) for i in range(len(coords_level0))], 0)
    threads = READ_THREADS if prefetch else 0
    if threads < 1 or len(runs) < 2:
        yield from map(read, runs)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        pending = deque(pool.submit(read, run) for run in runs[: 2 * threads])
        for run in runs[2 * threads :]:
            current = pending.popleft().result()
            pending.append(pool.submit(read, run))
            yield current
        while pending:
            yield pending.popleft().result()


def read_tiles_at(
    reader: SlideReader, geom: TileGeometry, coords_level0: np.ndarray, strips: bool = True
) -> np.ndarray:
    """Tiles for the given top-left level-0 coords, in the given order."""
    coords_level0 = np.asarray(coords_level0).reshape(-1, 2)
    out = np.empty((len(coords_level0), geom.tile_size_px, geom.tile_size_px, 3), np.uint8)
    for idx, tiles in iter_tile_runs(reader, geom, coords_level0, strips=strips):
        out[idx] = tiles
    return out
