"""Slides → tile stores: tissue detection, ROI, sharpness QC, per-slide Macenko stain estimation.

`tile_slide` does one slide and raises `EmoError` on bad input; `tile_slides` fans a batch out
through the executor registry (local processes, Ray, SLURM), skips finished slides, records
failures per slide and writes `summary.csv`.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from emo.errors import EmoError
from emo.slides.geometry import TileGeometry, iter_tile_runs, plan_geometry
from emo.slides.config import TilingConfig
from emo.slides.quality import sharpness
from emo.slides.readers import SUPPORTED_SUFFIXES, SlideReader, _suffix, open_slide
from emo.slides.stain import estimate_stains, load_reference
from emo.slides.store import write_store
from emo.slides.thumbnails import save_thumbnail
from emo.slides.tissue import pen_mask, tissue_mask

if TYPE_CHECKING:
    from emo.executors import Executor

SUMMARY_COLUMNS = [
    "slide_id", "status", "n_kept", "n_dropped_tissue", "n_dropped_roi", "n_dropped_sharpness",
    "seconds", "reader", "mpp", "level", "error", "slide_path", "mpp_source", "warning",
]  # fmt: skip
STAIN_SAMPLE_PX = 100_000  # pixels the stain estimate uses (64 sampled tiles hold ~1.4 M; 300 k took 80 ms)
# no scanner is this much coarser than the target, or finer than MIN_SCAN_MPP: a wrong µm/px
MAX_UPSAMPLE, MIN_SCAN_MPP = 2.0, 0.1
MAX_MPP = 100.0  # µm/px beyond any microscope (a 271 µm tile would be under 3 px): a wrong --mpp


def slide_id_of(path: Path) -> str:
    """File name without its slide suffix; a DICOM WSI (one .dcm per level, UID-named) is its folder's name."""
    if _suffix(path) == ".dcm":
        return path.absolute().parent.name
    name = path.name
    return name[: -len(_suffix(path))] if name.lower().endswith(_suffix(path)) else path.stem


def find_slides(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand folders into their slide files (supported suffixes, not recursive; the .dcm files of a folder
    are one DICOM WSI); keep files as given."""
    slides: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and _suffix(f) in SUPPORTED_SUFFIXES)
            if not found:
                raise EmoError(f"{p}: no slides found (looked for {' '.join(SUPPORTED_SUFFIXES)})")
            dicom = [f for f in found if _suffix(f) == ".dcm"]  # the levels of one DICOM WSI: OpenSlide opens any
            found = [f for f in found if _suffix(f) != ".dcm"] + dicom[:1]
            slides.extend(found)
        else:
            slides.append(p)
    return slides


# --- thumbnail-level masks ---------------------------------------------------------------------


def _thumbnail(reader: SlideReader, config: TilingConfig) -> tuple[np.ndarray, float]:
    w0, h0 = reader.dimensions
    max_size = int(np.clip(max(w0, h0) * reader.mpp / config.thumbnail_mpp, 512, 4096))
    max_size = min(max_size, max(w0, h0))
    thumb = reader.thumbnail(max_size)
    return thumb, thumb.shape[1] / w0


def box_fraction(mask: np.ndarray, scale: float, coords_level0: np.ndarray, size_level0: float) -> np.ndarray:
    """Mean of a thumbnail mask over square level-0 boxes (integral image; boxes clipped to the mask)."""
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), np.float64)
    integral[1:, 1:] = mask.cumsum(0).cumsum(1)
    c = np.asarray(coords_level0, dtype=np.float64).reshape(-1, 2) * scale
    side = max(size_level0 * scale, 1.0)
    x0 = np.clip(np.round(c[:, 0]).astype(int), 0, w)
    y0 = np.clip(np.round(c[:, 1]).astype(int), 0, h)
    x1 = np.clip(np.round(c[:, 0] + side).astype(int), 0, w)
    y1 = np.clip(np.round(c[:, 1] + side).astype(int), 0, h)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.round(side) ** 2  # area outside the slide counts as no tissue
    return (total / area).astype(np.float32)


# --- one slide -----------------------------------------------------------------------------------


def _all_dropped(slide: Path, reader: SlideReader, geom: TileGeometry, what: str, fix: str) -> EmoError:
    """Every tile dropped: say how many slide pixels a tile spans, and blame --mpp when that is implausible."""
    scale = f"a {geom.tile_size_um:g} µm tile spans {geom.tile_size_level0:.0f} px at {geom.mpp:g} µm/px from {reader.mpp_source}"
    zoom = geom.mpp / geom.target_mpp  # > 1: level-0 pixels are upsampled to the target
    if zoom > MAX_UPSAMPLE or geom.mpp < MIN_SCAN_MPP:
        return EmoError(
            f"{slide}: {what}; {scale}, {'upsampled' if zoom > 1 else 'downsampled'} {max(zoom, 1 / zoom):.1f}× to "
            f"{geom.tile_size_px} px: implausible for a slide scan, so the µm/px is probably wrong; check --mpp"
        )
    return EmoError(f"{slide}: {what}; {scale}; {fix}")


def _check_scale(slide: Path, reader: SlideReader, geom: TileGeometry, whole_tiles: bool = True) -> None:
    """Refuse a µm/px no slide has (over MAX_MPP) or one making a tile larger than the slide, naming
    --mpp, the file's own value and the tile size it implies — before any grid is allocated."""
    w0, h0 = reader.dimensions
    if geom.mpp > MAX_MPP:
        problem = f"over {MAX_MPP:g} µm/px, beyond any microscope"
    elif whole_tiles and geom.tile_size_level0 > min(w0, h0):
        problem = f"larger than the slide ({w0} × {h0} px)"
    else:
        return
    scale = f"--mpp {geom.mpp:g}" if reader.mpp_source.startswith("--mpp") else f"{geom.mpp:g} µm/px from {reader.mpp_source}"
    own = f"the file says {reader.file_mpp:g} µm/px" if reader.file_mpp else "the file has no µm/px"
    raise EmoError(f"{slide}: {scale} ({own}) makes a {geom.tile_size_um:g} µm tile {geom.tile_size_level0:.3g} px "
                   f"of the slide: {problem}; check --mpp")


def _read_qc(reader, geom, coords, sample: set[int]):
    """Read tiles, return sharpness per tile and the pixels of the sampled tiles (for stain estimation)."""
    sharp = np.zeros(len(coords), np.float32)
    pixels = []
    for idx, tiles in iter_tile_runs(reader, geom, coords):
        sharp[idx] = sharpness(tiles)
        for k, i in enumerate(idx):
            if i in sample:
                pixels.append(tiles[k, ::4, ::4].reshape(-1, 3))
    return sharp, pixels


def _stains(pixels: list[np.ndarray], config: TilingConfig, slide: Path) -> dict[str, Any]:
    if not config.normalize:
        return {"normalize": False}
    reference, reference_name = load_reference(config.stain_reference)
    if not pixels:
        raise EmoError(f"{slide}: no tissue tiles to estimate stains from; use --no-normalize")
    rgb = np.concatenate(pixels)
    rgb = rgb[:: -(-len(rgb) // STAIN_SAMPLE_PX)]  # evenly strided: Macenko's percentiles are stable long before this
    # pen ink would pull the stain vectors; glass stays (the built-in reference's maxima include it)
    ink = pen_mask(rgb.reshape(-1, 1, 3), min_object_px=0, dilate_px=0).ravel()
    try:
        params = estimate_stains(rgb[~ink] if (~ink).sum() > 1000 else rgb)
    except EmoError as exc:
        raise EmoError(f"{slide}: {exc}") from None
    return {
        "normalize": True,
        "stain_matrix": params.stain_matrix,
        "max_concentrations": params.max_concentrations,
        "stain_reference": reference_name,
        "reference_stain_matrix": reference.stain_matrix,
        "reference_max_concentrations": reference.max_concentrations,
    }


def _store_attrs(slide, reader, geom: TileGeometry, config: TilingConfig, extra: dict[str, Any]) -> dict[str, Any]:
    from emo.io import provenance

    prov = provenance(**config.store_params())
    return {
        "slide_id": slide_id_of(slide),
        "slide_path": str(slide.resolve()),
        "mpp": geom.mpp,
        "tile_size_um": geom.tile_size_um,
        "target_mpp": geom.target_mpp,
        "tile_size_px": geom.tile_size_px,
        "tile_size_level0": geom.tile_size_level0,
        "level": geom.level,
        "level_downsample": geom.level_downsample,
        "reader": reader.name,
        "mpp_source": reader.mpp_source,
        "slide_width": reader.dimensions[0],
        "slide_height": reader.dimensions[1],
        "emo_version": prov["emo_version"],
        "created": prov["created"],
        "params_json": json.dumps(prov["params"], sort_keys=True),
        "params_hash": prov["params_hash"],
        **extra,
    }


def _write_outputs(out_path: Path, slide: Path, reader, geom, config, coords, tissue, sharp, roi_flag, thumb, scale, extra):
    coords_px = np.round(coords).astype(np.int64).reshape(-1, 2)
    data = {
        "coords_px": coords_px,
        "coords_um": coords_px * geom.mpp,
        "tile_id": extra.pop("tile_ids", None) or [f"{x}_{y}" for x, y in coords_px],
        "tissue": tissue.astype(np.float32),
        "sharpness": sharp.astype(np.float32),
        "roi": roi_flag.astype(bool),
    }
    attrs = _store_attrs(slide, reader, geom, config, extra)
    save_thumbnail(thumb, coords, geom.tile_size_level0, scale, out_path.with_suffix(".png"))
    write_store(out_path, data, attrs)
    if config.save_tiles:
        save_tile_jpegs(out_path)
    return attrs


def tile_slide(slide: str | Path, out_path: str | Path, config: TilingConfig | None = None) -> dict[str, Any]:
    """Tile one slide into `out_path` (HDF5 tile store + PNG thumbnail beside it); return its summary row."""
    config = config or TilingConfig()
    slide, out_path = Path(slide), Path(out_path)
    start = time.perf_counter()
    reader = open_slide(slide, mpp=config.mpp, target_mpp=config.target_mpp)
    try:
        geom = plan_geometry(reader, config.tile_size_um, config.target_mpp)
        _check_scale(slide, reader, geom)
        w0, h0 = reader.dimensions
        step = geom.tile_size_level0
        nx, ny = int(w0 // step), int(h0 // step)
        gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
        coords = np.stack([gx.ravel(), gy.ravel()], axis=1) * step

        thumb, scale = _thumbnail(reader, config)
        min_object = max(1, round((64 / (1 / scale * geom.mpp)) ** 2))  # specks < (64 µm)²
        mask = tissue_mask(thumb, min_object_px=min_object)
        if not mask.any():
            raise _all_dropped(slide, reader, geom, "no tissue found (blank, glass or pen only)", "check the slide or its --mpp")
        tissue = box_fraction(mask, scale, coords, step)
        keep = tissue >= config.min_tissue
        n_dropped = {"tissue": int((~keep).sum()), "roi": 0, "sharpness": 0}
        if not keep.any():
            raise _all_dropped(slide, reader, geom, f"no tile has ≥ {config.min_tissue:.0%} tissue", "lower --min-tissue or check the slide")

        roi_source, roi_classes = "", None
        if config.roi is not None:
            from emo.slides.roi import find_roi_file, load_roi

            roi_file = find_roi_file(Path(config.roi), slide_id_of(slide))
            roi = load_roi(roi_file, (w0, h0), mask, classes=config.roi_classes)
            roi_source, roi_classes = roi.source, json.dumps(roi.classes)
            c = coords[keep]
            if config.min_roi is None:
                inside = roi.contains(c[:, 0] + step / 2, c[:, 1] + step / 2)
            else:
                inside = roi.fraction_inside(c[:, 0], c[:, 1], step) >= config.min_roi
            n_dropped["roi"] = int((~inside).sum())
            keep[np.flatnonzero(keep)[~inside]] = False
            if not keep.any():
                raise EmoError(f"{slide}: no tissue tile inside the ROI {roi_file}; check that the ROI belongs to this slide")

        cand = np.flatnonzero(keep)
        rng = np.random.default_rng(config.seed)
        sample = set(rng.choice(len(cand), min(len(cand), config.stain_sample_tiles), replace=False).tolist()) if config.normalize else set()
        try:
            sharp, pixels = _read_qc(reader, geom, coords[cand], sample)
        except Exception as exc:  # the file opened but its pixel data does not decode
            raise EmoError(f"{slide}: corrupt or unreadable pixel data ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); re-export the slide") from None
        sharp_ok = sharp >= config.min_sharpness
        n_dropped["sharpness"] = int((~sharp_ok).sum())
        cand, sharp = cand[sharp_ok], sharp[sharp_ok]
        if len(cand) == 0:
            what = f"every tissue tile is blurrier than --min-sharpness {config.min_sharpness}"
            raise _all_dropped(slide, reader, geom, what, "lower --min-sharpness or rescan")

        extra = _stains(pixels, config, slide)
        extra.update({f"n_dropped_{k}": v for k, v in n_dropped.items()})
        extra.update({"n_tiles_grid": int(nx * ny), "roi_source": roi_source, "roi_classes": roi_classes})
        _write_outputs(out_path, slide, reader, geom, config, coords[cand], tissue[cand], sharp, np.ones(len(cand), bool), thumb, scale, extra)
        return {
            "slide_id": slide_id_of(slide), "status": "ok", "n_kept": len(cand),
            **{f"n_dropped_{k}": v for k, v in n_dropped.items()},
            "seconds": round(time.perf_counter() - start, 3), "reader": reader.name, "mpp": geom.mpp,
            "level": geom.level, "error": "", "slide_path": str(slide.resolve()), "mpp_source": reader.mpp_source,
            "warning": " | ".join(reader.warnings),
        }  # fmt: skip
    finally:
        reader.close()


def tile_slide_at(
    slide: str | Path,
    centres_px: np.ndarray,
    out_path: str | Path,
    tile_size_um: float = 271.0,
    tile_ids: list[str] | None = None,
    config: TilingConfig | None = None,
) -> Path:
    """Spot-centred store: tile i is centred on level-0 point i (e.g. a spatial-transcriptomics spot).

    Every point gets a row (no QC drops, so rows stay aligned with the spots); tissue and
    sharpness are recorded for the caller to filter on.
    """
    config = (config or TilingConfig()).model_copy(update={"tile_size_um": tile_size_um})
    slide, out_path = Path(slide), Path(out_path)
    centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    ids = [str(t) for t in tile_ids] if tile_ids is not None else None
    if ids is not None and len(ids) != len(centres):
        raise EmoError(f"{slide}: {len(ids)} tile ids for {len(centres)} centres; pass one id per centre")
    reader = open_slide(slide, mpp=config.mpp, target_mpp=config.target_mpp)
    try:
        geom = plan_geometry(reader, config.tile_size_um, config.target_mpp)
        _check_scale(slide, reader, geom, whole_tiles=False)
        coords = centres - geom.tile_size_level0 / 2
        thumb, scale = _thumbnail(reader, config)
        mask = tissue_mask(thumb, min_object_px=max(1, round((64 * scale / geom.mpp) ** 2)))
        tissue = box_fraction(mask, scale, coords, geom.tile_size_level0)
        rng = np.random.default_rng(config.seed)
        with_tissue = np.flatnonzero(tissue >= config.min_tissue)
        pool = with_tissue if len(with_tissue) else np.arange(len(coords))
        sample = set(rng.choice(pool, min(len(pool), config.stain_sample_tiles), replace=False).tolist()) if config.normalize else set()
        sharp, pixels = _read_qc(reader, geom, coords, sample)
        extra = _stains(pixels, config, slide)
        extra.update({"n_dropped_tissue": 0, "n_dropped_roi": 0, "n_dropped_sharpness": 0, "spot_centred": True})
        extra["tile_ids"] = ids or [f"{round(x)}_{round(y)}" for x, y in np.round(coords)]
        _write_outputs(out_path, slide, reader, geom, config, coords, tissue, sharp, np.ones(len(coords), bool), thumb, scale, extra)
    finally:
        reader.close()
    return out_path


def save_tile_jpegs(store_path: Path, quality: int = 90) -> Path:
    """Cache a store's (normalised) tiles as `<store dir>/<slide_id>/<tile_id>.jpg`, written atomically."""
    from PIL import Image

    from emo.io import atomic_dir
    from emo.slides.store import TileStore

    store = TileStore(store_path)
    final = store_path.parent / store.slide_id
    with atomic_dir(final) as tmp:
        for idx, tiles in store.iter_batches(32):
            for i, tile in zip(idx, tiles):
                Image.fromarray(tile).save(tmp / f"{store.tile_ids[i]}.jpg", quality=quality)
        store.close()
    return final


# --- batches -------------------------------------------------------------------------------------


#: per tile folder, the storage failure (full disk, read-only) this process met: its later slides are not tried
_STOPPED: dict[Path, str] = {}


def _tile_one(job: tuple[Path, Path, TilingConfig, int | None]) -> dict[str, Any]:
    """Tile one slide of a batch (a picklable top-level function for the executors); never raises: a
    failure becomes a summary row — `stopped` when the output folder cannot be written (the slide is
    not at fault), `failed` otherwise."""
    from emo.io import storage_error

    slide, out_path, config, vips_threads = job
    if vips_threads:  # pool workers share the cores: libvips, imported lazily, gets its share
        os.environ.setdefault("VIPS_CONCURRENCY", str(vips_threads))
    start = time.perf_counter()
    row = {c: None for c in SUMMARY_COLUMNS} | {"slide_id": slide_id_of(slide), "slide_path": str(slide.absolute()), "error": ""}
    if out_path.parent in _STOPPED:
        return row | {"status": "stopped", "error": _STOPPED[out_path.parent]}
    try:
        existing = _finished(out_path, config)
        if existing is not None:
            return row | existing
        return row | tile_slide(slide, out_path, config)
    except Exception as exc:
        if (error := storage_error(exc, out_path.parent)) is not None:
            _STOPPED[out_path.parent] = str(error)
            return row | {"status": "stopped", "error": str(error)}
        if isinstance(exc, EmoError):
            return row | {"status": "failed", "error": str(exc), "seconds": round(time.perf_counter() - start, 3)}
        # a library failing deep inside (corrupt data): report, never abort the batch
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if os.environ.get("EMO_DEBUG"):
            traceback.print_exc()
        return row | {"status": "failed", "error": f"{slide}: corrupt or unreadable slide ({msg})", "seconds": round(time.perf_counter() - start, 3)}


def _crashed(job: tuple, error: str) -> dict[str, Any]:
    slide = job[0]
    return {c: None for c in SUMMARY_COLUMNS} | {
        "slide_id": slide_id_of(slide), "slide_path": str(slide.absolute()), "status": "failed",
        "error": f"{slide}: {error}; corrupt slide? the other slides are done, re-run to retry it",
    }  # fmt: skip


def _finished(out_path: Path, config: TilingConfig) -> dict[str, Any] | None:
    """Summary of an existing store made with the same parameters, else None."""
    if not out_path.is_file():
        return None
    from emo.io import params_hash
    from emo.slides.store import TileStore

    try:
        store = TileStore(out_path)
    except EmoError:
        return None
    a, n = store.attrs, len(store)
    if a.get("params_hash") != params_hash(config.store_params()):
        return None
    return {
        "status": "skipped", "n_kept": n, "seconds": 0.0, "reader": a.get("reader"), "mpp": a.get("mpp"),
        "level": a.get("level"), "mpp_source": a.get("mpp_source", ""), **{f"n_dropped_{k}": int(a.get(f"n_dropped_{k}", 0)) for k in ("tissue", "roi", "sharpness")},
    }  # fmt: skip


def tile_slides(slides: list[Path], out_dir: Path, config: TilingConfig | None = None, *,
                executor: str | Executor | None = None, workers: int = 1,
                executor_options: dict[str, Any] | None = None):
    """Tile a batch into `out_dir` (the stage's folder, e.g. `<run>/tiles`); returns (and writes) the
    per-slide summary table.

    Slides fan out through `emo.executors` (`executor` = local with `workers` processes, ray, slurm
    with `executor_options`; SLURM job files go to `<out_dir>/.slurm` unless given). A slide
    that fails, or whose worker crashes, becomes a `failed` row; the batch always finishes.
    """
    import pandas as pd

    from emo.executors import map_isolated, stage_executor
    from emo.io import storage_errors, write_table_atomic

    config = config or TilingConfig()
    slides = [Path(s) for s in slides]
    missing = [s for s in slides if not s.exists()]
    if missing:  # before anything is written: no summary for slides that are not there
        raise EmoError(f"{missing[0]}: slide not found{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                       "check the path")
    ids = [slide_id_of(s) for s in slides]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise EmoError(f"slide ids must be unique, found {', '.join(dupes)} more than once; rename the files")
    if config.stain_reference:
        load_reference(config.stain_reference)  # fail once, before the batch, on a bad reference
    executor = executor or "local"
    tile_dir = Path(out_dir)
    with storage_errors(tile_dir):
        tile_dir.mkdir(parents=True, exist_ok=True)
    _STOPPED.pop(tile_dir, None)
    workers = min(workers, max(1, len(slides)))
    vips_threads = max(1, (os.cpu_count() or 1) // workers) if executor == "local" and workers > 1 else None
    jobs = [(s, tile_dir / f"{i}.h5", config, vips_threads) for s, i in zip(slides, ids)]
    with stage_executor(executor, workers=workers, folder=tile_dir / ".slurm", options=executor_options) as ex:
        rows, crashed = map_isolated(ex, _tile_one, jobs, desc="tiling slides")
    for i, error in crashed.items():
        rows[i] = _crashed(jobs[i], error)
    stopped = [r for r in rows if r["status"] == "stopped"]
    if stopped:  # the storage, not the slides: stop the run, keep the slides finished before
        raise EmoError(f"{stopped[0]['error']} ({len(rows) - len(stopped)} of {len(rows)} slides are done)")
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    write_table_atomic(tile_dir / "summary.csv", summary)
    return summary



