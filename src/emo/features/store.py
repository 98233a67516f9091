"""Feature store: one HDF5 per slide with a pooled embedding per kept tile (tile-store row order)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from emo.errors import EmoError
from emo.io import params_hash, plain_attr


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
                        tile_ids: list[str], attrs: dict[str, Any]) -> Path:
    """Write one feature store atomically (datasets per the artifact contract; `attrs` as given)."""
    from emo.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("features", data=np.asarray(features, dtype=np.float32))
        h5.create_dataset("coords_px", data=np.asarray(coords_px, dtype=np.int64).reshape(-1, 2))
        h5.create_dataset("coords_um", data=np.asarray(coords_um, dtype=np.float64).reshape(-1, 2))
        h5.create_dataset("tile_id", data=np.asarray(list(tile_ids), dtype=object), dtype=h5py.string_dtype())
        h5.attrs.update(attrs)
    return path


class FeatureStore:
    """Read a feature file: `.features` float32 [n, dim], `.coords_px`, `.coords_um`, `.tile_ids`, `.attrs`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EmoError(f"{self.path}: feature store not found; run `emo features` on the tile store first")
        try:
            with h5py.File(self.path, "r") as h5:
                self.attrs = {k: plain_attr(v, arrays_as_lists=True) for k, v in h5.attrs.items()}
                self.coords_px = h5["coords_px"][:]
                self.coords_um = h5["coords_um"][:]
                self.tile_ids = [t.decode() if isinstance(t, bytes) else str(t) for t in h5["tile_id"][:]]
                self._n, self.dim = h5["features"].shape
        except (OSError, KeyError) as exc:
            raise EmoError(f"{self.path}: not a readable emo feature store ({exc}); delete it and re-run "
                           "`emo features`") from None
        self._features: np.ndarray | None = None

    @property
    def slide_id(self) -> str:
        return str(self.attrs.get("slide_id", self.path.stem))

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

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"FeatureStore({self.slide_id!r}, n={self._n}, dim={self.dim}, backbone={self.attrs.get('backbone')!r})"


def list_feature_stores(feature_dir: str | Path) -> list[FeatureStore]:
    """All per-slide feature files of one backbone folder, sorted by slide id."""
    feature_dir = Path(feature_dir)
    paths = sorted(feature_dir.glob("*.h5"))
    if not paths:
        raise EmoError(f"{feature_dir}: no feature files (*.h5); run `emo features TILE_DIR --out OUT` and pass "
                       "OUT/features/<backbone>")
    return [FeatureStore(p) for p in paths]
