"""Spot-level training and prediction over her2st-layout sections (sections are the unit of splitting)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from emo.errors import EmoError
from emo.io import atomic_path, file_fingerprint, params_hash
from emo.expression import read_her2st
from emo.expression.her2st import Her2stLayout
from emo.expression.st_readers import SPATIAL_KEY
from emo.spot_models.data import spot_targets
from emo.spot_models.model import SpotModel, SpotModelConfig, fit_spot_model, section_design, target_basis


def count_sections(data_dir: str | Path) -> list[str]:
    return Her2stLayout(data_dir).count_sections()


def grid_xy(adata: ad.AnnData) -> np.ndarray:
    return adata.obs[["array_x", "array_y"]].to_numpy(np.float64)


def centred_tile_store(image_path: str | Path, centres_px: np.ndarray, mpp: float, tile_ids: list[str],
                       size_um: float, tile_px: int, work_root: str | Path, name: str = "section") -> Path:
    """A tile store of `size_um` tiles (`tile_px` pixels a side) centred on `centres_px` (level-0 px of
    `image_path`; `emo.slides.tile_slide_at`), made once under `work_root` in a folder keyed by
    image, centres and geometry."""
    from emo.slides import TilingConfig, tile_slide_at

    centres = np.asarray(centres_px, np.float64).reshape(-1, 2)
    key = params_hash({"image": file_fingerprint(image_path), "spots": centres.tolist(),
                       "tile_size_um": size_um, "tile_px": tile_px, "mpp": mpp})
    store = Path(work_root) / f"{name}_{key}" / "tiles" / f"{name}.h5"
    if not store.exists():
        tiling = TilingConfig(mpp=mpp, target_mpp=size_um / tile_px, normalize=False)
        tile_slide_at(image_path, centres, store, size_um, tile_ids=list(tile_ids), config=tiling)
    return store


def spot_features(image_path: str | Path, centres_px: np.ndarray, mpp: float, tile_ids: list[str],
                  config: SpotModelConfig, cache_dir: str | Path | None = None, name: str = "section") -> np.ndarray:
    """Frozen multi-scale features around each centre: one `centred_tile_store` per tile size and
    its feature store."""
    import tempfile

    from emo.features import FeatureStore, extract_features
    from emo.features.config import ExtractionConfig

    parts = []
    with tempfile.TemporaryDirectory(prefix="emo-spatial-") as scratch:
        for size_um in config.tile_sizes_um:
            work = centred_tile_store(image_path, centres_px, mpp, tile_ids, size_um, config.tile_px,
                                      cache_dir or scratch, name).parents[1]
            feature_dir = extract_features(work / "tiles", work / "features", ExtractionConfig(backbone=config.backbone, workers=0),
                                           progress=False)
            parts.append(FeatureStore(next(feature_dir.glob("*.h5"))).features)
    return np.concatenate(parts, axis=1)


def _section_image(adata: ad.AnnData) -> tuple[str, str, float]:
    """The section id, its image path and level-0 µm/px; a section without an image is an error."""
    info = adata.uns[SPATIAL_KEY]
    section, image_path = info["section_id"], info["image_path"]
    if not image_path:
        raise EmoError(f"section {section}: no image under images/ (counts only); it cannot be a train or test section")
    return section, image_path, info["mpp"]


def section_features(adata: ad.AnnData, config: SpotModelConfig, cache_dir: str | Path | None = None) -> np.ndarray:
    """`spot_features` of every spot of a section read by `emo.expression.read_spatial`."""
    section, image_path, mpp = _section_image(adata)
    return spot_features(image_path, adata.obsm["spatial"], mpp, list(adata.obs_names), config, cache_dir, section)


def spot_tile_store(adata: ad.AnnData, size_um: float, tile_px: int, work_root: str | Path) -> Path:
    """The section's spot-centred tile store (fine-tuning trains and predicts on its pixels)."""
    section, image_path, mpp = _section_image(adata)
    return centred_tile_store(image_path, adata.obsm["spatial"], mpp, list(adata.obs_names), size_um, tile_px,
                              work_root, section)


def tile_store_features(store, config: SpotModelConfig, cache_dir: str | Path | None = None) -> np.ndarray:
    """`spot_features` around the tile centres of any tile store, at the model's own tile sizes
    (pixels are read from the store's slide at its level-0 µm/px)."""
    centres = np.asarray(store.coords_px, np.float64) + float(store.attrs["tile_size_level0"]) / 2.0
    return spot_features(store.attrs["slide_path"], centres, float(store.mpp), list(store.tile_ids), config,
                         cache_dir, store.slide_id)


def section_targets(data_dir: str | Path, section: str, genes: list[str],
                    cache_dir: str | Path | None = None) -> np.ndarray:
    """Normalised log1p targets of a count-only section, cached (reading 15k-gene TSVs dominates)."""
    counts = Her2stLayout(data_dir).counts(section)
    key = params_hash({"counts": file_fingerprint(counts), "genes": list(genes)}) if counts.exists() else ""
    cached = Path(cache_dir) / f"{section}_targets_{key}.npy" if cache_dir and key else None
    if cached is not None and cached.exists():
        return np.load(cached)
    y = spot_targets(read_her2st(data_dir, section), genes)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp, open(tmp, "wb") as fh:
            np.save(fh, y)
    return y


def check_held_out(train_sections: list[str], held_out: list[str], what: str = "held-out") -> None:
    """Leakage guards: a section both trained on and held out is an error; sections of one her2st
    patient (same letter) on both sides are a warning (their spots are not independent)."""
    import warnings

    from emo.expression.her2st import her2st_patient

    overlap = sorted(set(train_sections) & set(held_out))
    if overlap:
        raise EmoError(f"sections {', '.join(overlap)}: both training and {what} sections; hold them out of training")
    shared = sorted({her2st_patient(s) for s in held_out} & {her2st_patient(s) for s in train_sections})
    if shared:
        pairs = "; ".join(f"patient {p}: train {','.join(s for s in train_sections if her2st_patient(s) == p)}"
                          f" vs {what} {','.join(s for s in held_out if her2st_patient(s) == p)}" for p in shared)
        warnings.warn(f"{pairs}: training and {what} sections of one patient; scores may be optimistic",
                      stacklevel=3)


def train_spot_model(data_dir: str | Path, train_sections: list[str], genes: list[str],
                     config: SpotModelConfig = SpotModelConfig(), *, exclude_from_basis: list[str] = (),
                     basis_sections: list[str] | None = None, cache_dir: str | Path | None = None, progress=None) -> SpotModel:
    """Fit on the image sections `train_sections`; target components come from the counts of every
    section in `data_dir` (or of `basis_sections`) except `exclude_from_basis` (pass the test sections there)."""
    check_held_out(list(train_sections), list(exclude_from_basis))
    leaked = sorted(set(basis_sections or []) & set(exclude_from_basis))
    if leaked:
        raise EmoError(f"basis_sections {', '.join(leaked)}: also held out; held-out sections must not shape the "
                       "target components")
    designs, targets, pitches = [], [], []
    for section in train_sections:
        adata = read_her2st(data_dir, section)
        designs.append(section_design(section_features(adata, config, cache_dir), grid_xy(adata), config))
        targets.append(spot_targets(adata, genes))
        pitches.append(float(adata.uns[SPATIAL_KEY]["spot_pitch_um"]))
        if progress:
            progress(section)
    basis, pool = None, []
    if config.n_components:
        pool = [s for s in basis_sections or count_sections(data_dir) if s not in set(exclude_from_basis)]
        expression = list(targets)
        expression += [section_targets(data_dir, s, genes, cache_dir)
                       for s in pool if s not in train_sections]
        basis = target_basis(expression, config.n_components)
    pitch = float(np.median(pitches))
    meta = {"train_sections": list(train_sections),
            "basis_sections": sorted(set(pool) | set(train_sections)) if pool else [],
            "spot_pitch_um": pitch, "context_radius_um": config.context_radius * pitch}
    return fit_spot_model(designs, targets, genes, config, basis, meta)


def predict_section(model: SpotModel, data_dir: str | Path, section: str, cache_dir: str | Path | None = None,
                    *, allow_basis: bool = False) -> tuple[pd.DataFrame, ad.AnnData]:
    """Predicted normalised log1p expression, spots × genes (index = spot ids "<x>x<y>").

    The section needs an image and `spots/<S>.tsv` only (with counts, their spots are predicted).
    A section whose counts shaped the model's target components is refused unless `allow_basis`."""
    check_held_out(list(model.meta.get("train_sections", [])), [section], "predicted")
    if section in set(model.meta.get("basis_sections", [])) and not allow_basis:
        raise EmoError(f"section {section}: its counts shaped the model's target components (basis_sections); "
                       f"retrain with --hold-out {section}, or allow it explicitly (--allow-basis-sections)")
    adata = read_her2st(data_dir, section, require_counts=False)
    pred = model.predict_section(section_features(adata, model.config, cache_dir), grid_xy(adata))
    return pd.DataFrame(pred, index=adata.obs_names, columns=model.genes), adata
