"""Benchmark `emo tile`: tiles/s against the raw-decode ceiling and a peer tiler, on the same slides.

Slides: the real CMU-1-Small-Region.svs and a generated 40,000 × 40,000 px pyramidal JPEG TIFF of
real H&E texture (mirror-tiled from the CMU slide, 0.25 µm/px, made once into --cache).
Measured, each in this run and on the same tiles:
  (a) ceiling: fastest raw read of the level-0 regions of the tiles `emo tile` reads (per-tile reads
      in --workers processes by each of pyvips, cuCIM and microtome-wsi, the fastest exact decoders of
      benchmarks/readers.py, or pyvips threaded strip reads), no resampling, no other work;
  (b) `tile_slide` without normalisation (thumbnail, tissue, resample to 598 px, sharpness, store);
  (c) `tile_slide` with Macenko estimation, and (e) `TileStore.read_tiles` of normalised tiles;
  (d) peers, each with its own tissue detection, 271 µm tiles at 0.453 µm/px (598 px):
      slideflow 3.0.2 (libvips backend: Otsu QC, `build_generator` with its white/grey-space filter)
      and tiatoolbox 2.1.3 (Otsu `tissue_mask` at 8 µm/px, `SlidingWindowPatchExtractor` at
      0.453 µm/px, ≥ 50 % tissue), on whole slides; histolab 0.7.0 GridTiler (writes PNGs; on the
      big slide restricted to a window of --peer-tiles² tiles: it takes minutes per slide).
      Installed only for the benchmark, beside emo's environment, without touching its torch/numpy:
      `pip install --no-deps --target ~/.cache/emo-bench/peers -r benchmarks/peers.txt`
      (every module the three import on a fresh `pip install emo`). A peer that does not import, or
      fails on a slide, is reported with its error and left out; the RESULT line names those that ran.
(a), (b), (c) run in --repeats interleaved rounds (the machine may be shared); ratio_to_ceiling is the
median of the per-round b/a, cpu_ratio_to_ceiling the median of the per-round ratio of CPU seconds per
tile (all threads), which load from other jobs barely moves.
(f) fixed per-slide cost: `tile_slide` on the CMU slide split into its steps (open + decode probe,
    thumbnail, tissue mask, tile reads + sharpness, stain estimate, outputs).
Last line: RESULT ratio_to_ceiling=<b/a> ratio_to_best_peer=<b / fastest peer> ratio_to_peer=<b/histolab>
peers_ran=<peers with a rate on the big slide> ...  (big slide; no timing asserts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CMU = Path(os.environ.get("EMO_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")) / "slides" / "CMU-1-Small-Region.svs"
if not CMU.exists():
    CMU = Path("/work/shared/data/slides/CMU-1-Small-Region.svs")


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
    i = idx % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def make_big_slide(path: Path, size: int = 40_000, mpp: float = 0.25, tile: int = 512) -> Path:
    """Pyramidal JPEG TIFF (levels 1, 4, 16) of the CMU slide's texture, mirror-tiled to size²."""
    import tifffile
    from PIL import Image

    if path.exists():
        return path
    import pyvips

    src = pyvips.Image.new_from_file(str(CMU)).numpy()[..., :3]
    h, w = (s // 16 * 16 for s in src.shape[:2])
    src = np.ascontiguousarray(src[:h, :w])
    tmp = path.with_suffix(".tmp")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for k, factor in enumerate((1, 4, 16)):
            level_src = src if factor == 1 else np.asarray(Image.fromarray(src).reduce(factor))
            lh, lw = level_src.shape[:2]
            n = size // factor

            def tiles(level_src=level_src, n=n, lh=lh, lw=lw):
                for y0 in range(0, n, tile):
                    ys = _mirror(np.arange(y0, y0 + tile), lh)
                    rows = level_src[ys]
                    for x0 in range(0, n, tile):
                        yield rows[:, _mirror(np.arange(x0, x0 + tile), lw)]

            kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if k == 0 else {"subfiletype": 1}
            tif.write(tiles(), shape=(n, n, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                      compression="jpeg", compressionargs={"level": 85}, **kw)  # fmt: skip
    os.replace(tmp, path)
    return path


# --- (a) ceiling -------------------------------------------------------------------------------------


CEILING_DECODERS = ("pyvips", "cucim", "microtome")  # the fastest exact decoders of benchmarks/readers.py
CEILING_SKIPPED: dict[str, str] = {}  # decoder → why it could not take part


def _raw_reads(args: tuple[str, str, np.ndarray, int]) -> int:
    import readers

    name, path, coords, size = args
    read = readers.readers()[name](Path(path))
    for x, y in coords:
        read(int(x), int(y), size)
    return len(coords)


def _warm(name: str) -> None:
    import readers

    readers.readers()[name](CMU)  # import the decoder's library before timing
    time.sleep(0.2)  # hold this worker so that the next task starts another


def ceiling(path: Path, coords: np.ndarray, size: int, workers: int) -> tuple[float, str]:
    results = {}
    CEILING_SKIPPED.clear()
    parts = [c for c in np.array_split(coords, workers) if len(c)]
    import multiprocessing as mp

    os.environ["VIPS_CONCURRENCY"] = "1"  # one decode thread per process: the processes are the parallelism
    for name in CEILING_DECODERS:  # per-tile region decodes in `workers` processes (libvips threads don't survive fork)
        try:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                list(pool.map(_warm, [name] * workers))
                start = time.perf_counter()
                list(pool.map(_raw_reads, [(name, str(path), p, size) for p in parts]))
                results[f"{name}-per-tile-x{workers}-processes"] = len(coords) / (time.perf_counter() - start)
        except Exception as exc:  # not installed, or not this format (microtome reads Aperio SVS only)
            CEILING_SKIPPED[name] = f"{type(exc).__name__}: {str(exc).strip()[:80]}"
    os.environ.pop("VIPS_CONCURRENCY")
    from concurrent.futures import ThreadPoolExecutor

    import pyvips

    from emo.slides.geometry import _runs

    # the same strips emo reads (adjacent tiles along x or y), raw, decoded in `workers` threads
    runs, axis = _runs(coords.astype(float), float(size))
    img = pyvips.Image.new_from_file(str(path), access="random")

    def read(run):
        x, y = (int(v) for v in coords[run[0]])
        n = len(run)
        w, h = (min(size * n, img.width - x), size) if axis == 0 else (size, min(size * n, img.height - y))
        return img.crop(x, y, w, h).numpy().shape

    cpu, start = _cpu(), time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(read, runs))
    results["pyvips-strips-x%d-threads" % workers] = len(coords) / (time.perf_counter() - start)
    CPU_MS["ceiling"] = (_cpu() - cpu) * 1000 / len(coords)
    best = max(results, key=results.get)
    return results[best], best


# --- (d) peer --------------------------------------------------------------------------------------


PEER_DIR = Path.home() / ".cache" / "emo-bench" / "peers"
PEERS_TXT = Path(__file__).with_name("peers.txt")


def use_peer_dir() -> None:
    """Put the peers' target directory first on sys.path (its pins match emo's environment where both have a package)."""
    if str(PEER_DIR) not in sys.path:
        sys.path.insert(0, str(PEER_DIR))


def _histolab(path: Path, tile_px: int, window: tuple[int, int, int, int] | None) -> tuple[int, float, str]:
    from histolab.masks import BinaryMask
    from histolab.slide import Slide
    from histolab.tiler import GridTiler

    class Window(BinaryMask):
        def _mask(self, slide):
            thumb = np.zeros(slide.thumbnail.size[::-1], bool)
            x0, y0, x1, y1 = window
            sx, sy = thumb.shape[1] / slide.dimensions[0], thumb.shape[0] / slide.dimensions[1]
            thumb[int(y0 * sy) : int(y1 * sy), int(x0 * sx) : int(x1 * sx)] = True
            return thumb

    out = Path(tempfile.mkdtemp(prefix="emo-bench-histolab-"))
    try:
        slide = Slide(str(path), processed_path=str(out))
        tiler = GridTiler(tile_size=(tile_px, tile_px), level=0, check_tissue=True, tissue_percent=50.0, suffix=".png")
        start = time.perf_counter()
        tiler.extract(slide, **({} if window is None else {"extraction_mask": Window()}))
        return len(list(out.glob("*.png"))), time.perf_counter() - start, "GridTiler"
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _slideflow(path: Path, tile_um: float = 271.0, tile_px: int = 598) -> tuple[int, float, str]:
    os.environ.setdefault("SF_SLIDE_BACKEND", "libvips")  # slideflow: libvips, not cuCIM
    os.environ.setdefault("SF_BACKEND", "torch")
    import slideflow as sf

    start = time.perf_counter()
    wsi = sf.WSI(str(path), tile_px=tile_px, tile_um=int(tile_um), verbose=False)
    wsi.qc("otsu")
    n = sum(1 for _ in wsi.build_generator(shuffle=False, img_format="numpy", deterministic=True)())
    return n, time.perf_counter() - start, "WSI.build_generator"


def _tiatoolbox(path: Path, tile_um: float = 271.0, target_mpp: float = 0.453) -> tuple[int, float, str]:
    from tiatoolbox.tools.patchextraction import get_patch_extractor
    from tiatoolbox.wsicore.wsireader import WSIReader

    size = round(tile_um / target_mpp)
    start = time.perf_counter()
    reader = WSIReader.open(path)
    mask = reader.tissue_mask(resolution=8.0, units="mpp")
    patches = get_patch_extractor(
        "slidingwindow", input_img=reader, input_mask=mask, patch_size=(size, size), stride=(size, size),
        resolution=target_mpp, units="mpp", min_mask_ratio=0.5,
    )  # fmt: skip
    n = sum(1 for _ in patches)
    return n, time.perf_counter() - start, f"SlidingWindowPatchExtractor ({type(reader).__name__})"


PEERS = {"slideflow": _slideflow, "tiatoolbox": _tiatoolbox, "histolab": _histolab}


def run_peer(name: str, path: Path, *args) -> float | None:
    """Kept tiles/s of a peer, or None, with its error printed, when it does not import or fails on `path`."""
    import logging
    import warnings

    use_peer_dir()
    warnings.filterwarnings("ignore")
    levels = {n: logging.getLogger(n).level for n in ("", "pyvips")}
    try:
        n, seconds, how = PEERS[name](path, *args)
    except ImportError as exc:  # not installed, or a dependency missing: see benchmarks/peers.txt
        print(f"  (d) {name} unavailable ({type(exc).__name__}: {exc}); install {PEERS_TXT.name} into {PEER_DIR}")
        return None
    except Exception as exc:  # e.g. slideflow's multi-page TIFF reader takes a label page for a level
        print(f"  (d) {name} failed on {path.name}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:120]}")
        return None
    finally:  # peers set the root logger to INFO, which makes libvips log every operation (and slows emo)
        for n_, level in levels.items():
            logging.getLogger(n_).setLevel(level)
        logging.getLogger("pyvips").setLevel(logging.WARNING)
    print(f"  (d) {name} {how}: {n} tiles in {seconds:.1f} s")
    return n / seconds if n else None


# --- (f) fixed per-slide cost ----------------------------------------------------------------------


def fixed_cost(path: Path, repeats: int = 3) -> dict[str, float]:
    """Median seconds of each step of `tile_slide` (Macenko on), by wrapping the functions it calls."""
    from emo.slides import TilingConfig, tile_slide
    from emo.slides import tiling as t

    steps = {"open+probe": "open_slide", "thumbnail": "_thumbnail", "tissue mask": "tissue_mask",
             "tile reads+sharpness": "_read_qc", "stain estimate": "_stains", "outputs": "_write_outputs"}  # fmt: skip
    originals = {name: getattr(t, name) for name in steps.values()}
    spent: dict[str, list[float]] = {k: [] for k in [*steps, "total"]}

    def timed(step, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[step][-1] += time.perf_counter() - start

        return wrapper

    workdir = Path(tempfile.mkdtemp(prefix="emo-bench-fixed-"))
    try:
        for name in steps.values():
            setattr(t, name, timed(next(k for k, v in steps.items() if v == name), originals[name]))
        for _ in range(repeats + 1):  # the first round pays imports
            for v in spent.values():
                v.append(0.0)
            start = time.perf_counter()
            tile_slide(path, workdir / "s.h5", TilingConfig())
            spent["total"][-1] = time.perf_counter() - start
    finally:
        for name, fn in originals.items():
            setattr(t, name, fn)
        shutil.rmtree(workdir, ignore_errors=True)
    med = {k: float(np.median(v[1:])) for k, v in spent.items()}
    med["other"] = med["total"] - sum(med[k] for k in steps)
    print(f"  (f) fixed cost of {path.name}, median of {repeats}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in med.items()))
    return med


# --- (b), (c), (e) emo ------------------------------------------------------------------------------


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


CPU_MS: dict[str, float] = {}  # CPU ms per tile (all threads of this process): load-independent cost


def run_emo(path: Path, normalize: bool, workdir: Path):
    from emo.slides import TileStore, TilingConfig, tile_slide

    out = workdir / f"{path.stem}-{int(normalize)}.h5"
    cpu, start = _cpu(), time.perf_counter()
    row = tile_slide(path, out, TilingConfig(normalize=normalize))
    seconds = time.perf_counter() - start
    n_read = row["n_kept"] + row["n_dropped_sharpness"]
    key = f"emo{'_macenko' if normalize else ''}"
    CPU_MS[key] = (_cpu() - cpu) * 1000 / n_read
    return TileStore(out), n_read / seconds, row, seconds


def bench_slide(path: Path, workers: int, peer_tiles: int | None, label: str, repeats: int) -> dict[str, float]:
    """(a), (b), (c) measured `repeats` times, interleaved (ceiling first on odd rounds) so that load from
    other jobs hits them alike; ratios are taken within a round and their median reported."""
    workdir = Path(tempfile.mkdtemp(prefix="emo-bench-"))
    try:
        with open(path, "rb") as fh:  # warm the page cache so every method reads from memory
            while fh.read(1 << 24):
                pass
        store = run_emo(path, False, workdir)[0]  # imports and first-touch costs out of the timings
        size0 = int(round(store.attrs["tile_size_level0"]))
        rounds = []
        for i in range(repeats):
            CPU_MS.clear()
            if i % 2:
                rate_a, how = ceiling(path, store.coords_px, size0, workers)
                store, rate_b, row, _ = run_emo(path, False, workdir)
            else:
                store, rate_b, row, _ = run_emo(path, False, workdir)
                rate_a, how = ceiling(path, store.coords_px, size0, workers)
            store_c, rate_c, _, _ = run_emo(path, True, workdir)
            rounds.append({"a": rate_a, "b": rate_b, "c": rate_c, "how": how, **{f"cpu_{k}": v for k, v in CPU_MS.items()}})
            print(f"  round {i + 1}: ceiling {rate_a:.1f} ({how}), emo {rate_b:.1f}, emo+Macenko {rate_c:.1f} tiles/s; "
                  f"b/a {rate_b / rate_a:.2f}; CPU ms/tile ceiling {CPU_MS['ceiling']:.1f}, emo {CPU_MS['emo']:.1f}, "
                  f"emo+Macenko {CPU_MS['emo_macenko']:.1f}; load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip

        def med(key):
            return float(np.median([r[key] for r in rounds]))

        a, b, c = med("a"), med("b"), med("c")
        ratio = float(np.median([r["b"] / r["a"] for r in rounds]))
        cpu_ratio = float(np.median([r["cpu_ceiling"] / r["cpu_emo"] for r in rounds]))
        print(f"[{label}] {path.name}: {row['n_kept']} kept + {row['n_dropped_sharpness']} blurry of "
              f"{store.attrs['n_tiles_grid']} grid tiles, reader {row['reader']}, level {row['level']}, median of {repeats}")  # fmt: skip
        print(f"  (a) ceiling, raw level-0 reads of the same tiles: {a:.1f} tiles/s"
              + "".join(f"; {k} not used ({v})" for k, v in CEILING_SKIPPED.items()))  # fmt: skip
        print(f"  (b) emo tile, no normalisation: {b:.1f} tiles/s  (median b/a {ratio:.2f})")
        print(f"  (c) emo tile, Macenko: {c:.1f} tiles/s")
        print(f"  CPU ms per tile: ceiling (raw strips) {med('cpu_ceiling'):.1f}, emo {med('cpu_emo'):.1f}, "
              f"emo+Macenko {med('cpu_emo_macenko'):.1f}  (median ceiling/emo {cpu_ratio:.2f})")  # fmt: skip
        start = time.perf_counter()
        for _ in store_c.iter_batches(32):
            pass
        e = len(store_c) / (time.perf_counter() - start)
        print(f"  (e) TileStore.read_tiles, normalised 598 px tiles: {e:.1f} tiles/s")
        window = None
        if peer_tiles:
            c0 = store.coords_px[len(store) // 2]
            window = (int(c0[0]), int(c0[1]), int(c0[0] + peer_tiles * size0), int(c0[1] + peer_tiles * size0))
        args = {"histolab": (size0, window)}
        peers = {name: run_peer(name, path, *args.get(name, ())) or float("nan") for name in PEERS}
        rated = {k: v for k, v in peers.items() if np.isfinite(v)}
        best = max(rated, key=rated.get) if rated else "none"
        print("  (d) peers: " + ", ".join(f"{k} {v:.2f}" for k, v in peers.items()) + f" tiles/s; fastest {best}; "
              f"b/a = {ratio:.2f}, b/fastest = {b / rated[best] if rated else float('nan'):.2f}")  # fmt: skip
        return {"a": a, "b": b, "c": c, "d": peers["histolab"], "peers": peers, "best_peer": best,
                "best": rated.get(best, float("nan")), "e": e, "ratio": ratio, "cpu_ratio": cpu_ratio}  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "emo-bench")
    parser.add_argument("--size", type=int, default=40_000, help="side of the generated slide in px")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--peer-tiles", type=int, default=4, help="peer window on the big slide, in tiles per side")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of (a), (b), (c); medians reported")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    big = args.cache / f"synthetic-he-{args.size}.tif"
    if not big.exists():
        start = time.perf_counter()
        make_big_slide(big, args.size)
        print(f"generated {big} in {time.perf_counter() - start:.0f} s")
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    real = bench_slide(CMU, args.workers, None, "real", args.repeats)
    fixed = fixed_cost(CMU, args.repeats)
    res = bench_slide(big, args.workers, args.peer_tiles, "big", args.repeats)
    p = res["peers"]
    print(
        f"RESULT ratio_to_ceiling={res['ratio']:.3f} ratio_to_best_peer={res['b'] / res['best']:.2f} best_peer={res['best_peer']} "
        f"peers_ran={','.join(k for k, v in p.items() if np.isfinite(v)) or 'none'} "
        f"ratio_to_peer={res['b'] / res['d']:.2f} tiles_per_s_slideflow={p['slideflow']:.2f} tiles_per_s_tiatoolbox={p['tiatoolbox']:.2f} "
        f"tiles_per_s_emo={res['b']:.1f} tiles_per_s_ceiling={res['a']:.1f} tiles_per_s_emo_macenko={res['c']:.1f} "
        f"tiles_per_s_peer={res['d']:.2f} tiles_per_s_read_normalised={res['e']:.1f} "
        f"cpu_ratio_to_ceiling={res['cpu_ratio']:.3f} load_average={os.getloadavg()[0]:.1f} "
        f"real_ratio_to_ceiling={real['ratio']:.3f} real_ratio_to_peer={real['b'] / real['d']:.2f} "
        f"real_ratio_to_best_peer={real['b'] / real['best']:.2f} real_fixed_s={fixed['total']:.3f}"
    )


if __name__ == "__main__":
    main()
