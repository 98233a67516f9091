"""Feature store: one HDF5 per slide with a pooled embedding per kept tile (tile-store row order)."""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from pydantic import Field

from emo.errors import EmoError
from emo.formats import ArtifactAttrs
from emo.io import params_hash, plain_attr


class FeatureStoreAttrs(ArtifactAttrs):
    """The attributes a feature store is read back by (the rest are kept as written)."""

    WHAT = "feature store"
    FIX = "delete it and re-extract with `emo features`"

    backbone: str
    dim: int = Field(gt=0)


def tile_store_params_hash(store: Any) -> str:
    """Identity of a tile store's geometry, normalisation and tile set: features are valid only for it."""
    attrs = store.attrs
    keys = ("slide_path", "mpp", "tile_size_um", "target_mpp", "tile_size_px", "tile_size_level0",
            "normalize", "stain_matrix", "max_concentrations", "stain_reference", "reference_stain_matrix",
            "reference_max_concentrations", "level", "params_json")
    params = {k: plain_attr(attrs[k], arrays_as_lists=True) for k in keys if k in attrs}
    params["coords_sha256"] = hashlib.sha256(np.ascontiguousarray(store.coords_px, dtype=np.int64)).hexdigest()
    params["tile_ids_sha256"] = hashlib.sha256("\n".join(store.tile_ids).encode()).hexdigest()
    return params_hash(params)


def write_feature_store(path: str | Path, features: np.ndarray, coords_px: np.ndarray, coords_um: np.ndarray,
                        tile_ids: list[str], attrs: dict[str, Any], coords_attrs: dict[str, Any] | None = None) -> Path:
    """Write one feature store atomically (datasets per the artifact contract; `attrs` as given).

    `coords` (= `coords_px`, the name CLAM/TRIDENT tools read) carries `coords_attrs` (patch geometry)."""
    from emo.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("features", data=np.asarray(features, dtype=np.float32))
        h5.create_dataset("coords_px", data=np.asarray(coords_px, dtype=np.int64).reshape(-1, 2))
        h5.create_dataset("coords", data=np.asarray(coords_px, dtype=np.int64).reshape(-1, 2)).attrs.update(coords_attrs or {})
        h5.create_dataset("coords_um", data=np.asarray(coords_um, dtype=np.float64).reshape(-1, 2))
        h5.create_dataset("tile_id", data=np.asarray(list(tile_ids), dtype=object), dtype=h5py.string_dtype())
        h5.attrs.update({"format_version": FeatureStoreAttrs.FORMAT, **attrs})
    return path


class FeatureStore:
    """The one feature-file reader: `.features` float32 [n, dim], `.coords_px`, `.coords_um`, `.tile_ids`,
    `.attrs`; `read(rows)` and `mean()` load only the rows asked for (a 7,000-tile slide reduces to
    its mean feature without holding other slides in memory)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EmoError(f"{self.path}: feature store not found; run `emo features` on the tile store first")
        try:
            with h5py.File(self.path, "r") as h5:
                self.attrs = {k: plain_attr(v, arrays_as_lists=True) for k, v in h5.attrs.items()}
                self._n, self.dim = (int(v) for v in h5["features"].shape)
                for name in ("coords_px", "coords_um", "tile_id"):
                    h5[name]  # noqa: B018 - a store without them is not an emo feature store
        except (OSError, KeyError) as exc:
            raise EmoError(f"{self.path}: not a readable emo feature store ({exc}); delete it and re-run "
                           "`emo features`") from None
        FeatureStoreAttrs.check(self.path, self.attrs)
        if int(self.attrs["dim"]) != self.dim:
            raise EmoError(f"{self.path}: feature store field dim={self.attrs['dim']} but its features are "
                           f"{self.dim} wide; {FeatureStoreAttrs.FIX}")
        self._features: np.ndarray | None = None

    def _dataset(self, name: str) -> np.ndarray:
        with h5py.File(self.path, "r") as h5:
            return h5[name][:]

    @cached_property
    def coords_px(self) -> np.ndarray:
        return self._dataset("coords_px")

    @cached_property
    def coords_um(self) -> np.ndarray:
        return self._dataset("coords_um")

    @cached_property
    def tile_ids(self) -> list[str]:
        return [t.decode() if isinstance(t, bytes) else str(t) for t in self._dataset("tile_id")]

    @property
    def slide_id(self) -> str:
        return str(self.attrs.get("slide_id", self.path.stem))

    @property
    def n_tiles(self) -> int:
        return self._n

    @property
    def backbone(self) -> str:
        return str(self.attrs["backbone"])

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("params_json", "{}"))

    @property
    def features(self) -> np.ndarray:
        if self._features is None:
            with h5py.File(self.path, "r") as h5:
                self._features = h5["features"][:]
        return self._features

    def read(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """float32 rows of `features` (all, a slice, or indices in any order) without caching the matrix."""
        if self._features is not None:
            return np.asarray(self._features[slice(None) if rows is None else rows], dtype=np.float32)
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
            for start in range(0, self._n, chunk):
                total += ds[start : start + chunk].sum(axis=0, dtype=np.float64)
        return total / max(self._n, 1)

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"FeatureStore({self.slide_id!r}, n={self._n}, dim={self.dim}, backbone={self.attrs.get('backbone')!r})"


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


def open_feature_stores(feature_dir: Path) -> dict[str, FeatureStore]:
    """All feature stores of a folder by slide id, checked to share one backbone and dimension."""
    feature_dir = resolve_feature_dir(feature_dir)
    stores: dict[str, FeatureStore] = {}
    ref: tuple | None = None
    for path in sorted(feature_dir.glob("*.h5")):
        store = FeatureStore(path)
        key = (store.attrs.get("backbone"), store.attrs.get("weights"), store.dim)
        if ref is None:
            ref = key
        elif key != ref:
            raise EmoError(
                f"{path}: backbone/dim {key} differs from {ref} of the other slides in {feature_dir}; "
                "extract all slides with one backbone"
            )
        stores[store.slide_id] = store
    return stores


def feature_identity(stores: dict[str, FeatureStore]) -> dict:
    """Backbone identity recorded in a model manifest (and checked again at prediction)."""
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
