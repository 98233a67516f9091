"""`TileStore`: one slide's kept tiles (coordinates, QC, stain parameters); pixels read on demand.

The HDF5 layout is the tile-store contract in docs/architecture.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from emo.errors import EmoError
from emo.formats import ArtifactAttrs
from emo.io import plain_attr
from emo.slides.geometry import TileGeometry, read_tiles_at
from emo.slides.stain import StainParams, apply_normalization, normalization_matrix

DATASETS = ("coords_px", "coords_um", "tile_id", "tissue", "sharpness", "roi")


class TileStoreAttrs(ArtifactAttrs):
    """The attributes a tile store is read back by (the rest are kept as written)."""

    WHAT = "tile store"
    FIX = "delete it and re-tile the slide with `emo tile`"

    slide_id: str
    slide_path: str
    mpp: float = Field(gt=0)
    target_mpp: float = Field(gt=0)
    tile_size_um: float = Field(gt=0)
    tile_size_px: int = Field(gt=0)
    tile_size_level0: float = Field(gt=0)
    level: int = Field(0, ge=0)


def write_store(path: Path, data: dict[str, np.ndarray], attrs: dict[str, Any]) -> Path:
    """Write a tile store atomically (HDF5)."""
    import h5py

    from emo.io import atomic_path

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, values in data.items():
            if name == "tile_id":
                f.create_dataset(name, data=np.asarray(values, dtype=object), dtype=h5py.string_dtype())
            else:
                f.create_dataset(name, data=values)
        f.attrs["format_version"] = TileStoreAttrs.FORMAT
        for key, value in attrs.items():
            if value is not None:
                f.attrs[key] = value
    return path


class TileStore:
    """Read a tile store: `.coords_px`, `.tile_ids`, `.read_tiles(indices)`, `.iter_batches(n)`."""

    def __init__(self, path: str | Path, slide_path: str | Path | None = None):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise EmoError(f"{self.path}: tile store not found; run `emo tile` first")
        try:
            with h5py.File(self.path, "r") as f:
                self.attrs: dict[str, Any] = {k: plain_attr(v) for k, v in f.attrs.items()}
                self.coords_px = f["coords_px"][()].reshape(-1, 2).astype(np.int64)
                self.coords_um = f["coords_um"][()].reshape(-1, 2)
                self.tile_ids = [t.decode() if isinstance(t, bytes) else str(t) for t in f["tile_id"][()]]
                self.tissue = f["tissue"][()]
                self.sharpness = f["sharpness"][()]
                self.roi = f["roi"][()]
        except (OSError, KeyError) as exc:
            raise EmoError(f"{self.path}: not a valid tile store ({exc}); delete it and re-run `emo tile`") from None
        TileStoreAttrs.check(self.path, self.attrs)
        rows = {len(self.coords_px), len(self.coords_um), len(self.tile_ids), len(self.tissue), len(self.sharpness), len(self.roi)}
        if len(rows) > 1:
            raise EmoError(f"{self.path}: tile store datasets disagree on the number of tiles ({sorted(rows)}); "
                           f"{TileStoreAttrs.FIX}")
        self.slide_path = Path(slide_path or self.attrs["slide_path"])
        self._reader = None
        self._geometry = None

    slide_id = property(lambda self: self.attrs["slide_id"])
    mpp = property(lambda self: float(self.attrs["mpp"]))
    tile_size_px = property(lambda self: int(self.attrs["tile_size_px"]))
    normalize = property(lambda self: bool(self.attrs.get("normalize", False)))

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("params_json", "{}"))

    def __len__(self) -> int:
        return len(self.coords_px)

    @property
    def normalization_matrix(self) -> np.ndarray | None:
        """The 3×3 OD map `read_tiles` applies (None when the store is not stain-normalised), so raw
        tiles can be normalised elsewhere, e.g. batched on the GPU (`emo.features.preprocess`)."""
        if not self.normalize:
            return None
        source = StainParams(np.asarray(self.attrs["stain_matrix"]), np.asarray(self.attrs["max_concentrations"]))
        target = StainParams(np.asarray(self.attrs["reference_stain_matrix"]),
                             np.asarray(self.attrs["reference_max_concentrations"]))
        return normalization_matrix(source, target)

    def __repr__(self) -> str:
        return f"TileStore({self.slide_id!r}, {len(self)} tiles of {self.tile_size_px} px at {self.attrs['target_mpp']} µm/px)"

    def __getstate__(self):  # picklable for worker processes: the slide handle is reopened there
        state = self.__dict__.copy()
        state["_reader"] = state["_geometry"] = None
        return state

    def _open(self):
        if self._reader is None:
            from emo.slides.readers import READERS, open_slide

            if not self.slide_path.exists():
                raise EmoError(
                    f"{self.path}: its slide {self.slide_path} is missing; restore it or pass slide_path= to TileStore"
                )
            served = self.attrs.get("reader")  # the reader that tiled the slide serves its tiles again
            order = [served, *(n for n in READERS if n != served)] if served in READERS else None
            reader = open_slide(self.slide_path, mpp=self.mpp, readers=order, target_mpp=float(self.attrs["target_mpp"]))
            self._matrix = self.normalization_matrix
            self._reader = reader
        if self._geometry is None:
            reader = self._reader
            level = int(self.attrs.get("level", 0))
            if level >= len(reader.level_downsamples):
                level = 0
            self._geometry = TileGeometry(
                mpp=self.mpp,
                target_mpp=float(self.attrs["target_mpp"]),
                tile_size_um=float(self.attrs["tile_size_um"]),
                tile_size_px=self.tile_size_px,
                tile_size_level0=float(self.attrs["tile_size_level0"]),
                level=level,
                level_downsample=float(reader.level_downsamples[level]),
            )
        return self._reader

    def centred_view(self, tile_size_um: float, tile_px: int) -> TileStore:
        """The same tile centres read as `tile_size_um` tiles of `tile_px` pixels (not stain-normalised)
        through this store's slide reader, in memory: the pixels `tile_slide_at` would store, nothing
        written (spot models read their own scales around any store's tiles)."""
        import copy

        from emo.slides.geometry import plan_geometry

        reader = self._open()
        geom = plan_geometry(reader, tile_size_um, tile_size_um / tile_px)
        centres = self.coords_px.astype(np.float64) + float(self.attrs["tile_size_level0"]) / 2.0
        view = copy.copy(self)
        view.attrs = {**self.attrs, "tile_size_um": geom.tile_size_um, "tile_size_px": geom.tile_size_px,
                      "target_mpp": geom.target_mpp, "tile_size_level0": geom.tile_size_level0,
                      "level": geom.level, "normalize": False}
        view.coords_px = np.round(centres - geom.tile_size_level0 / 2).astype(np.int64)
        view.coords_um = view.coords_px * geom.mpp
        view._geometry, view._matrix = geom, None
        return view

    def read_tiles(self, indices: Sequence[int] | np.ndarray, normalize: bool | None = None) -> np.ndarray:
        """uint8 [k, tile_size_px, tile_size_px, 3] at target µm/px, stain-normalised when the store says so.

        Each tile is resampled alone, so its pixels do not depend on which tiles are read with it.
        """
        reader = self._open()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        tiles = read_tiles_at(reader, self._geometry, self.coords_px[idx].astype(np.float64), strips=False)
        if (self.normalize if normalize is None else normalize) and self._matrix is not None:
            tiles = apply_normalization(tiles, self._matrix)
        return tiles

    def iter_batches(self, batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (indices, tiles) in store order."""
        for start in range(0, len(self), batch_size):
            idx = np.arange(start, min(start + batch_size, len(self)))
            yield idx, self.read_tiles(idx)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
