"""Read what training needs beyond the feature stores and targets (`FeatureStore`, `read_targets`):
the genes to fit, the tile store features came from, its geometry, and the training-data identity."""

from __future__ import annotations

import json
from pathlib import Path

from emo.errors import EmoError
from emo.features.store import FeatureStore
from emo.io import content_hash, params_hash


def source_tile_store_attrs(store: FeatureStore) -> dict:
    """Attributes of the tile store a feature store was computed from (its `params_json.tile_store`)."""
    from emo.slides import TileStore

    try:
        path = json.loads(store.attrs.get("params_json", "{}")).get("tile_store")
    except (json.JSONDecodeError, AttributeError):
        return {}
    if not path or not Path(path).exists():
        return {}
    return TileStore(path).attrs


def tile_geometry(attrs: dict, tile_attrs: dict) -> tuple[dict, object]:
    """Tile geometry and stain reference for a model manifest: from the tile store's `tile_attrs`,
    else from a feature store's `attrs` (and their `params_json`)."""
    params = {}
    if isinstance(attrs.get("params_json"), str):
        try:
            params = json.loads(attrs["params_json"])
        except json.JSONDecodeError:
            params = {}
    flat = {**params, **attrs, **tile_attrs}
    keys = ("tile_size_um", "target_mpp", "tile_size_px", "normalize")
    return {k: flat[k] for k in keys if k in flat}, flat.get("stain_reference")


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
