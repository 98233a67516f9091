"""Benchmark slide readers: decode-only tiles/s on the same level-0 regions, and pixels against OpenSlide's.

Readers: emo's registry (`emo.slides.readers.READERS`: pyvips, tifffile + zarr, OpenSlide) and the
PyPI readers tried as candidates that did not join it: cuCIM's CPU reader, `fastslide` and
`microtome-wsi` (decodes stored Aperio SVS tiles; a region is stitched from its stored tiles), all
installed with the peers (benchmarks/peers.txt). A reader that is not installed or cannot open a
slide is reported as unavailable.
Regions: on the real CMU-1-Small-Region.svs its whole grid of --cmu-tile px squares (117 of 224 px:
emo keeps only 6 tiles there, too few to time); on the 40,000² px pyramid of benchmarks/tiling.py
(made there, cached) the level-0 squares of the tiles `emo tile` reads, i.e. the regions of its
decode ceiling. pyvips is timed as that ceiling reads (a crop of the page per region; emo's
PyvipsReader decodes a level this small whole, once). Each reader decodes every region in one
thread, then in --workers threads (each library's own threading set to one), best of --repeats
rounds; the page cache is warm.
Exactness: max and mean absolute difference of every region from OpenSlide's pixels (JPEG decoders
may differ by a few grey levels in rounding; a wrong region differs by tens).
Last line: RESULT fastest=<reader> tiles_per_s_<reader>=... (big slide, threaded) real_... (CMU slide)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("VIPS_CONCURRENCY", "1")  # threads are the benchmark's, not libvips' own
from tiling import CMU, make_big_slide, use_peer_dir

Read = Callable[[int, int, int], np.ndarray]  # (x, y, size) → uint8 RGB [size, size, 3] of level 0


def _registry(name: str) -> Callable[[Path], Read]:
    def open_(path: Path) -> Read:
        from emo.slides.readers import READERS

        reader = READERS[name](path)
        return lambda x, y, s: reader.read_region(0, x, y, s, s)

    return open_


def _pyvips(path: Path) -> Read:
    import pyvips

    img = pyvips.Image.new_from_file(str(path), access="random", fail=True)
    return lambda x, y, s: img.crop(x, y, s, s).numpy()[..., :3]


def _microtome(path: Path) -> Read:
    import microtome

    slide = microtome.open(str(path))
    level = slide.levels[0]
    tw, th, across = level["tile_width"], level["tile_height"], level["tiles_across"]

    def read(x: int, y: int, s: int) -> np.ndarray:
        tx0, ty0, tx1, ty1 = x // tw, y // th, (x + s - 1) // tw, (y + s - 1) // th
        nx, ny = tx1 - tx0 + 1, ty1 - ty0 + 1
        tiles = slide.read_batch(0, [ty * across + tx for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)], threads=1)
        mosaic = tiles.reshape(ny, nx, th, tw, 3).transpose(0, 2, 1, 3, 4).reshape(ny * th, nx * tw, 3)
        return mosaic[y - ty0 * th : y - ty0 * th + s, x - tx0 * tw : x - tx0 * tw + s]

    return read


def _cucim(path: Path) -> Read:
    """cuCIM's CPU reader: exact on sound files, but it conceals corrupt JPEG tiles (it prints the
    libjpeg error and returns pixels), so it is measured here and is not one of emo's readers."""
    from cucim import CuImage

    img = CuImage(str(path))
    return lambda x, y, s: np.asarray(img.read_region((x, y), (s, s), 0))[..., :3]


def _fastslide(path: Path) -> Read:
    import fastslide

    slide = fastslide.FastSlide.from_file_path(str(path))  # no tile cache unless given one
    return lambda x, y, s: slide.read_region((x, y), 0, (s, s)).numpy()[..., :3]


def readers() -> dict[str, Callable[[Path], Read]]:
    """Name → opener of every reader measured: emo's registry, then the PyPI readers that did not join it."""
    from emo.slides.readers import READERS, ImageReader

    use_peer_dir()  # cucim, fastslide and microtome-wsi are installed with the peers (benchmarks/peers.txt)
    found = {name: _registry(name) for name, cls in READERS.items() if cls is not ImageReader}
    return {**found, "pyvips": _pyvips, "cucim": _cucim, "fastslide": _fastslide, "microtome": _microtome}


def regions(path: Path, grid: int | None) -> tuple[np.ndarray, int]:
    """Level-0 (x, y) and side of the squares of a `grid`-px grid, or of the tiles `emo tile` reads on `path`."""
    from emo.slides import TileStore, TilingConfig, open_slide, tile_slide

    if grid:
        w, h = open_slide(path).dimensions
        ys, xs = np.mgrid[0 : h - grid + 1 : grid, 0 : w - grid + 1 : grid]
        return np.stack([xs.ravel(), ys.ravel()], 1), grid

    with tempfile.TemporaryDirectory(prefix="emo-bench-readers-") as tmp:
        tile_slide(path, Path(tmp) / "s.h5", TilingConfig(normalize=False))
        store = TileStore(Path(tmp) / "s.h5")
        return store.coords_px.astype(int), int(round(store.attrs["tile_size_level0"]))


def bench_slide(path: Path, workers: int, repeats: int, grid: int | None = None) -> dict[str, dict[str, float]]:
    coords, size = regions(path, grid)
    with open(path, "rb") as fh:  # warm the page cache
        while fh.read(1 << 24):
            pass
    print(f"{path.name}: {len(coords)} regions of {size}² px, load average {os.getloadavg()[0]:.1f}", flush=True)
    reference = None
    rows: dict[str, dict[str, float]] = {}
    for name, open_ in readers().items():
        try:
            read = open_(path)
            first = [read(int(x), int(y), size) for x, y in coords]  # also pays first-touch costs
        except Exception as exc:  # not installed, or cannot read this format
            print(f"  {name}: unavailable ({type(exc).__name__}: {str(exc).strip()[:120]})")
            continue
        if name == "openslide":
            reference = first
        rates = {}
        for threads in (1, workers):
            best = 0.0
            for _ in range(repeats):
                start = time.perf_counter()
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(lambda c: read(int(c[0]), int(c[1]), size).shape, coords))
                best = max(best, len(coords) / (time.perf_counter() - start))
            rates[threads] = best
        rows[name] = {"serial": rates[1], "threads": rates[workers], "first": first}
    for name, row in rows.items():
        first = row.pop("first")
        if reference is not None:
            diff = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(first, reference)]
            row["max_diff"] = float(max(d.max() for d in diff))
            row["mean_diff"] = float(np.mean([d.mean() for d in diff]))
        print(f"  {name:10s} {row['serial']:7.1f} tiles/s serial, {row['threads']:7.1f} with {workers} threads; "
              f"vs OpenSlide max |Δ| {row.get('max_diff', float('nan')):.0f}, mean |Δ| {row.get('mean_diff', float('nan')):.3f}")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "emo-bench")
    parser.add_argument("--size", type=int, default=40_000, help="side of the generated slide in px")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cmu-tile", type=int, default=224, help="side of the grid squares read on the CMU slide")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    real = bench_slide(CMU, args.workers, args.repeats, args.cmu_tile)
    big = bench_slide(make_big_slide(args.cache / f"synthetic-he-{args.size}.tif", args.size), args.workers, args.repeats)
    fastest = max(big, key=lambda n: big[n]["threads"])
    print(f"RESULT fastest={fastest} " + " ".join(f"tiles_per_s_{n}={r['threads']:.1f}" for n, r in big.items()) + " "
          + " ".join(f"real_tiles_per_s_{n}={r['threads']:.1f}" for n, r in real.items()) + f" load_average={os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
