"""Synthetic cohorts cut from a real H&E image (her2st B4), for the training and prediction tests.

Tiles are real image regions; their features are a fixed random nonlinear projection of colour and
texture statistics (a stand-in backbone that needs no weights). Planted genes are known functions of
those statistics (per tile; a slide's bulk value is the mean over its tiles), noise genes are not.
Feature stores, tile stores and targets.h5ad are written exactly per docs/architecture.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

MPP = 0.688  # her2st full-resolution images (mpp_estimate.json)
DOWN = 4  # the image is decoded at 1/4 scale (JPEG draft mode); coordinates are level-0 px
TILE = 32  # tile side at the decoded scale → 128 level-0 px
BACKBONE = "colour-texture-projection"


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # a known 9k x 10k photograph
    img = Image.open(path)
    img.draft("RGB", (img.width // DOWN, img.height // DOWN))
    return np.asarray(img.convert("RGB"))


def tile_stats(tiles: np.ndarray) -> np.ndarray:
    """Colour and texture statistics per tile [n, 7]."""
    t = tiles.astype(np.float32) / 255.0
    gray = t.mean(axis=3)
    gx = np.abs(np.diff(gray, axis=2)).mean(axis=(1, 2))
    gy = np.abs(np.diff(gray, axis=1)).mean(axis=(1, 2))
    return np.column_stack([t.mean(axis=(1, 2)), t.std(axis=(1, 2)).mean(axis=1), gx + gy, gray.std(axis=(1, 2)),
                            (t[..., 0] - t[..., 2]).mean(axis=(1, 2))])


def project(z: np.ndarray, dim: int = 48) -> np.ndarray:
    """Fixed random nonlinear projection of standardised statistics: the stand-in backbone."""
    w = np.random.default_rng(1234).normal(size=(z.shape[1], dim)) / np.sqrt(z.shape[1])
    return np.tanh(z @ w).astype(np.float32)


def write_feature_store(path: Path, slide_id: str, feats, coords_px, tile_ids, backbone=BACKBONE):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["features"] = feats.astype(np.float32)
        f["coords_px"] = coords_px.astype(np.int64)
        f["coords_um"] = coords_px * MPP
        f["tile_id"] = np.array(tile_ids, dtype=object).astype("S")
        f.attrs.update(slide_id=slide_id, backbone=backbone, weights="fixed-seed", input_size=TILE, dim=feats.shape[1],
                       tile_store_params_hash="test", emo_version="0.1.0",
                       params_json=json.dumps({"tile_size_um": TILE * DOWN * MPP, "target_mpp": MPP}))


def write_tile_store(path: Path, slide_id: str, coords_px, tile_ids, thumb: np.ndarray):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(coords_px)
    with h5py.File(path, "w") as f:
        f["coords_px"] = coords_px.astype(np.int64)
        f["coords_um"] = coords_px * MPP
        f["tile_id"] = np.array(tile_ids, dtype=object).astype("S")
        f["tissue"] = np.ones(n, np.float32)
        f["sharpness"] = np.ones(n, np.float32)
        f["roi"] = np.ones(n, bool)
        f.attrs.update(slide_id=slide_id, slide_path="/work/shared/data/her2st/images/B4.jpg", mpp=MPP,
                       tile_size_um=TILE * DOWN * MPP, target_mpp=MPP, tile_size_px=TILE * DOWN,
                       tile_size_level0=float(TILE * DOWN), normalize=False, emo_version="0.1.0")
    Image.fromarray(thumb).save(path.with_suffix(".png"))


def make_cohort(root: Path, image_path: Path, n_slides=90, tiles_per_slide=24, n_planted=4, n_noise=16, seed=0,
                splits=(0.5, 0.2, 0.3)):
    """Slides = clusters of real tiles around random tissue centres; returns paths and the truth."""
    rng = np.random.default_rng(seed)
    img = load_image(image_path)
    h, w, _ = img.shape
    sat = img.max(axis=2).astype(int) - img.min(axis=2)
    ys, xs = np.nonzero(sat[: h - TILE, : w - TILE] > 40)
    thumb = img[::8, ::8]
    fdir, tdir = root / "features" / BACKBONE, root / "tiles"
    slide_ids, bulk, tile_rows = [], [], []
    for s in range(n_slides):
        c = rng.integers(len(xs))
        pick = rng.integers(len(xs), size=tiles_per_slide * 20)
        d = np.hypot(xs[pick] - xs[c], ys[pick] - ys[c])
        pick = pick[np.argsort(d)[:tiles_per_slide]]
        x0, y0 = xs[pick], ys[pick]
        stats = tile_stats(np.stack([img[y : y + TILE, x : x + TILE] for x, y in zip(x0, y0)]))
        coords = np.column_stack([x0, y0]) * DOWN
        slide_ids.append(f"S{s:03d}")
        tile_rows.append((slide_ids[-1], [f"{x}_{y}" for x, y in coords], stats, coords))
    all_stats = np.concatenate([t[2] for t in tile_rows])
    mu, sd = all_stats.mean(0), all_stats.std(0)
    planted_w = rng.normal(size=(n_planted, all_stats.shape[1]))
    for sid, tids, stats, coords in tile_rows:
        z = (stats - mu) / sd
        write_feature_store(fdir / f"{sid}.h5", sid, project(z), coords, tids)
        write_tile_store(tdir / f"{sid}.h5", sid, coords, tids, thumb)
        bulk.append((z @ planted_w.T).mean(axis=0))
    bulk = np.array(bulk)
    bulk = bulk / bulk.std(0)
    y = np.concatenate([bulk + 0.1 * rng.normal(size=bulk.shape), rng.normal(size=(n_slides, n_noise))], axis=1)
    genes = [f"PLANT{i}" for i in range(n_planted)] + [f"NOISE{i}" for i in range(n_noise)]
    n_tr, n_tu = int(splits[0] * n_slides), int(splits[1] * n_slides)
    split = ["train"] * n_tr + ["tune"] * n_tu + ["validation"] * (n_slides - n_tr - n_tu)
    targets = write_targets(root / "targets.h5ad", y, genes, slide_ids, split)
    return {"feature_dir": fdir, "tile_dir": tdir, "targets": targets, "genes": genes, "planted": genes[:n_planted],
            "noise": genes[n_planted:], "slides": slide_ids, "split": split, "y": y, "tile_rows": tile_rows,
            "planted_w": planted_w, "stats_mu": mu, "stats_sd": sd}


def write_targets(path: Path, y, genes, slide_ids, split, obs_extra=None, index=None):
    import anndata

    obs = pd.DataFrame({"patient_id": slide_ids, "cohort": "her2st", "split": split, "slide_id": slide_ids},
                       index=pd.Index(index if index is not None else [f"P{s}" for s in slide_ids], name="sample_id"))
    for k, v in (obs_extra or {}).items():
        obs[k] = v
    var = pd.DataFrame({"variance": np.var(y, axis=0), "kept": True, "offset_her2st": 0.0},
                       index=pd.Index(genes, name="gene"))
    ad = anndata.AnnData(X=np.asarray(y, dtype=np.float32), obs=obs, var=var)
    ad.uns["emo"] = {"version": "0.1.0"}
    ad.write_h5ad(path)
    return path


def cmu_tile_stores(root: Path, n_slides: int, tiles_per_slide: int, rng: np.random.Generator,
                    tile_ids: list[str] | None = None) -> list[str]:
    """Slides S0…S{n-1}, each a link to the real CMU H&E under root/slides with a store of
    `tiles_per_slide` random 48-µm tiles (0.5 µm/px, no stain normalisation) under root/tiles."""
    from conftest import require_data

    from emo.slides import TilingConfig
    from emo.slides.tiling import tile_slide_at

    svs = require_data("slides/CMU-1-Small-Region.svs")
    slide_ids = [f"S{i}" for i in range(n_slides)]
    for sid in slide_ids:
        link = root / "slides" / f"{sid}.svs"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(svs)
        centres = np.column_stack([rng.uniform(300, 1900, tiles_per_slide), rng.uniform(300, 2600, tiles_per_slide)])
        tile_slide_at(link, centres, root / "tiles" / f"{sid}.h5", tile_size_um=48, tile_ids=tile_ids,
                      config=TilingConfig(target_mpp=0.5, normalize=False))
    return slide_ids
