"""Spot-level training and prediction over her2st-layout sections (sections are the unit of splitting)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from emo.errors import EmoError
from emo.io import atomic_path, file_fingerprint, params_hash
from emo.expression import read_her2st
from emo.expression.st_readers import SPATIAL_KEY
from emo.spot_models.data import spot_targets
from emo.spot_models.model import SpotModel, SpotModelConfig, fit_spot_model, section_design, target_basis


def count_sections(data_dir: str | Path) -> list[str]:
    return sorted(p.name.removesuffix(".tsv.gz") for p in (Path(data_dir) / "counts").glob("*.tsv.gz"))


def grid_xy(adata: ad.AnnData) -> np.ndarray:
    return adata.obs[["array_x", "array_y"]].to_numpy(np.float64)


def section_features(adata: ad.AnnData, config: SpotModelConfig, cache_dir: str | Path | None = None) -> np.ndarray:
    """Frozen multi-scale features of every spot of a section: one spot-centred tile store per tile
    size (`emo.slides.tile_slide_at`, `tile_px` pixels a side) and its feature store (`emo.features`)."""
    import tempfile

    from emo.features import FeatureStore, extract_features
    from emo.slides import TilingConfig, tile_slide_at

    info = adata.uns[SPATIAL_KEY]
    section, image_path = info["section_id"], info["image_path"]
    if not image_path:
        raise EmoError(f"section {section}: no image under images/ (counts only); it cannot be a train or test section")
    parts = []
    with tempfile.TemporaryDirectory(prefix="emo-spatial-") as scratch:
        for size_um in config.tile_sizes_um:
            key = params_hash({"image": file_fingerprint(image_path), "spots": adata.obsm["spatial"].tolist(),
                               "tile_size_um": size_um, "tile_px": config.tile_px, "mpp": info["mpp"]})
            work = Path(cache_dir or scratch) / f"{section}_{key}"
            store = work / "tiles" / f"{section}.h5"
            if not store.exists():
                tiling = TilingConfig(mpp=info["mpp"], target_mpp=size_um / config.tile_px, normalize=False)
                tile_slide_at(image_path, adata.obsm["spatial"], store, size_um,
                              tile_ids=list(adata.obs_names), config=tiling)
            feature_dir = extract_features(work / "tiles", work, backbone=config.backbone, workers=0, progress=False)
            parts.append(FeatureStore(next(feature_dir.glob("*.h5"))).features)
    return np.concatenate(parts, axis=1)


def section_targets(data_dir: str | Path, section: str, genes: list[str],
                    cache_dir: str | Path | None = None) -> np.ndarray:
    """Normalised log1p targets of a count-only section, cached (reading 15k-gene TSVs dominates)."""
    counts = Path(data_dir) / "counts" / f"{section}.tsv.gz"
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


def train_spot_model(data_dir: str | Path, train_sections: list[str], genes: list[str],
                     config: SpotModelConfig = SpotModelConfig(), *, exclude_from_basis: list[str] = (),
                     basis_sections: list[str] | None = None, cache_dir: str | Path | None = None, progress=None) -> SpotModel:
    """Fit on the image sections `train_sections`; target components come from the counts of every
    section in `data_dir` (or of `basis_sections`) except `exclude_from_basis` (pass the test sections there)."""
    designs, targets = [], []
    for section in train_sections:
        adata = read_her2st(data_dir, section)
        designs.append(section_design(section_features(adata, config, cache_dir), grid_xy(adata), config))
        targets.append(spot_targets(adata, genes))
        if progress:
            progress(section)
    basis, pool = None, []
    if config.n_components:
        pool = [s for s in basis_sections or count_sections(data_dir) if s not in set(exclude_from_basis)]
        expression = list(targets)
        expression += [section_targets(data_dir, s, genes, cache_dir)
                       for s in pool if s not in train_sections]
        basis = target_basis(expression, config.n_components)
    meta = {"train_sections": list(train_sections), "basis_sections": sorted(set(pool) | set(train_sections)) if pool else []}
    return fit_spot_model(designs, targets, genes, config, basis, meta)


def predict_section(model: SpotModel, data_dir: str | Path, section: str,
                    cache_dir: str | Path | None = None) -> tuple[pd.DataFrame, ad.AnnData]:
    """Predicted normalised log1p expression, spots × genes (index = spot ids "<x>x<y>")."""
    adata = read_her2st(data_dir, section)
    pred = model.predict_section(section_features(adata, model.config, cache_dir), grid_xy(adata))
    return pd.DataFrame(pred, index=adata.obs_names, columns=model.genes), adata
