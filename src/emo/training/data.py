"""Read what training needs: feature stores (one HDF5 per slide) and the targets AnnData.

Feature stores are read with h5py per the artifact contract so that only the rows asked for are
loaded; a 7,000-tile slide is reduced to its mean feature without holding other slides in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from emo.errors import EmoError
from emo.io import file_fingerprint, params_hash, plain_attr


def _decode(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]




@dataclass(frozen=True)
class SlideFeatures:
    """One slide's feature store: path, identity and shape (rows are read on demand)."""

    path: Path
    slide_id: str
    n_tiles: int
    dim: int
    attrs: dict

    def read(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            ds = f["features"]
            if rows is None:
                return ds[...].astype(np.float32, copy=False)
            if isinstance(rows, slice):
                return ds[rows].astype(np.float32, copy=False)
            order = np.argsort(rows)
            out = np.empty((len(rows), ds.shape[1]), dtype=np.float32)
            out[order] = ds[np.asarray(rows)[order]]
            return out

    def mean(self, chunk: int = 4096) -> np.ndarray:
        """Mean feature over tiles, accumulated in float64 chunk by chunk."""
        total = np.zeros(self.dim, dtype=np.float64)
        with h5py.File(self.path, "r") as f:
            ds = f["features"]
            for start in range(0, self.n_tiles, chunk):
                total += ds[start : start + chunk].sum(axis=0, dtype=np.float64)
        return total / max(self.n_tiles, 1)

    def tile_ids(self) -> list[str]:
        with h5py.File(self.path, "r") as f:
            return _decode(f["tile_id"][...])

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        with h5py.File(self.path, "r") as f:
            return f["coords_px"][...], f["coords_um"][...]


def resolve_feature_dir(feature_dir: Path) -> Path:
    """Accept `<out>/features/<backbone>` or `<out>/features` holding exactly one backbone folder."""
    feature_dir = Path(feature_dir)
    if not feature_dir.is_dir():
        raise EmoError(f"{feature_dir}: feature folder not found; run `emo features` first")
    if any(feature_dir.glob("*.h5")):
        return feature_dir
    subs = [d for d in sorted(feature_dir.iterdir()) if d.is_dir() and any(d.glob("*.h5"))]
    if len(subs) == 1:
        return subs[0]
    if not subs:
        raise EmoError(f"{feature_dir}: no feature stores (*.h5); run `emo features` first")
    raise EmoError(f"{feature_dir}: several backbones ({', '.join(d.name for d in subs)}); pass one of these folders")


def open_feature_stores(feature_dir: Path) -> dict[str, SlideFeatures]:
    """All feature stores of a folder by slide id, checked to share one backbone and dimension."""
    feature_dir = resolve_feature_dir(feature_dir)
    stores: dict[str, SlideFeatures] = {}
    ref: tuple | None = None
    for path in sorted(feature_dir.glob("*.h5")):
        try:
            with h5py.File(path, "r") as f:
                attrs = {k: plain_attr(v) for k, v in f.attrs.items()}
                n, dim = f["features"].shape
        except (OSError, KeyError) as exc:
            raise EmoError(f"{path}: not a readable feature store ({exc}); delete it and re-run `emo features`") from None
        slide_id = str(attrs.get("slide_id", path.stem))
        key = (attrs.get("backbone"), attrs.get("weights"), dim)
        if ref is None:
            ref = key
        elif key != ref:
            raise EmoError(
                f"{path}: backbone/dim {key} differs from {ref} of the other slides in {feature_dir}; "
                "extract all slides with one backbone"
            )
        stores[slide_id] = SlideFeatures(path, slide_id, int(n), int(dim), attrs)
    return stores


def feature_identity(stores: dict[str, SlideFeatures]) -> dict:
    """Backbone identity recorded in a model manifest (and checked again at prediction)."""
    import json

    first = next(iter(stores.values()))
    a = first.attrs
    full = json.loads(a["backbone_json"]) if isinstance(a.get("backbone_json"), str) else {}
    return {
        "name": a.get("backbone"),
        "weights": a.get("weights"),
        "input_size": a.get("input_size"),
        "dim": first.dim,
        "mean": full.get("mean", a.get("mean")),
        "std": full.get("std", a.get("std")),
        "pooling": full.get("pooling"),
    }


def source_tile_store_attrs(store: SlideFeatures) -> dict:
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


def training_hash(targets: Path, stores: dict[str, SlideFeatures], genes: list[str], extra: dict) -> str:
    """Identity of the training data: targets content + every feature store + genes + options."""
    return params_hash(
        {
            "targets": file_fingerprint(targets),
            "features": {s: file_fingerprint(st.path) for s, st in sorted(stores.items())},
            "genes": params_hash({"g": genes}),
            **extra,
        }
    )
