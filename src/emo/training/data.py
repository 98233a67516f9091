"""Read what training needs beyond the feature stores (`emo.features.FeatureStore`): the targets
AnnData, the genes to fit, the tile store features came from, and the training-data identity."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from emo.errors import EmoError
from emo.features.store import FeatureStore
from emo.io import content_hash, params_hash, plain_attr


def source_tile_store_attrs(store: FeatureStore) -> dict:
    """Attributes of the tile store a feature store was computed from (its `params_json.tile_store`)."""
    import json

    try:
        path = json.loads(store.attrs.get("params_json", "{}")).get("tile_store")
    except (json.JSONDecodeError, AttributeError):
        return {}
    if not path or not Path(path).exists():
        return {}
    with h5py.File(path, "r") as f:
        return {k: plain_attr(v) for k, v in f.attrs.items()}


def load_targets(path: Path):
    import anndata

    path = Path(path)
    if not path.exists():
        raise EmoError(f"{path}: targets file not found; run `emo expression prepare` first")
    adata = anndata.read_h5ad(path)
    if "split" not in adata.obs:
        raise EmoError(f"{path}: obs has no 'split' column (train/tune/validation/test); re-run `emo expression prepare`")
    return adata


def select_genes(adata, genes, path: Path) -> list[str]:
    if genes is None:
        if "kept" in adata.var:  # genes dropped for low training variance are not targets
            return [str(g) for g, k in zip(adata.var_names, adata.var["kept"].astype(bool)) if k]
        return list(map(str, adata.var_names))
    from emo.panels import resolve_genes

    wanted = resolve_genes(genes)
    present = set(map(str, adata.var_names))
    missing = [g for g in wanted if g not in present]
    if missing:
        raise EmoError(
            f"{path}: gene(s) {', '.join(missing[:10])} not in targets; choose genes from its var_names "
            "or leave --genes out to train all"
        )
    return wanted


def training_hash(targets: Path, stores: dict[str, FeatureStore], genes: list[str], extra: dict) -> str:
    """Identity of the training data: targets content + every feature store's content + genes + options."""
    return params_hash(
        {
            "targets": content_hash(targets),
            "features": {s: content_hash(st.path) for s, st in sorted(stores.items())},
            "genes": params_hash({"g": genes}),
            **extra,
        }
    )
