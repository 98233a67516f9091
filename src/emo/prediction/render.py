"""Pictures and viewer annotations of EMO-spatial predictions: heatmaps and QuPath GeoJSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emo.io import save_figure, write_text_atomic


def slide_extent(tile_attrs: dict, thumb_shape: tuple[int, int] | None, coords_px: np.ndarray, tile_level0: float):
    """Level-0 (width, height) that the thumbnail covers, from the tile store or the slide itself."""
    for wk, hk in (("slide_width", "slide_height"), ("width", "height")):
        if wk in tile_attrs and hk in tile_attrs:
            return float(tile_attrs[wk]), float(tile_attrs[hk])
    for key in ("level0_size", "dimensions", "slide_dimensions"):
        if key in tile_attrs:
            w, h = np.asarray(tile_attrs[key]).ravel()[:2]
            return float(w), float(h)
    if "thumbnail_downsample" in tile_attrs and thumb_shape is not None:
        ds = float(tile_attrs["thumbnail_downsample"])
        return thumb_shape[1] * ds, thumb_shape[0] * ds
    path = tile_attrs.get("slide_path")
    if path and Path(path).exists():
        try:
            import openslide

            with openslide.OpenSlide(str(path)) as s:
                return tuple(float(v) for v in s.dimensions)
        except Exception:  # plain JPEG/PNG: PIL reads the size from the header
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = None
            with Image.open(path) as im:
                return float(im.width), float(im.height)
    far = coords_px.max(axis=0) + tile_level0 if len(coords_px) else np.array([tile_level0, tile_level0])
    return float(far[0]), float(far[1])


def heatmap_png(out: Path, gene: str, values: np.ndarray, coords_px: np.ndarray, tile_level0: float,
                thumbnail: np.ndarray | None, extent: tuple[float, float], slide_id: str) -> Path:
    """Tiles drawn as squares of their physical size over the thumbnail, with a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    w, h = extent
    fig, ax = plt.subplots(figsize=(7, 7 * h / w + 0.6), dpi=110)
    if thumbnail is not None:
        ax.imshow(thumbnail, extent=(0, w, h, 0))
    patches = [Rectangle((x, y), tile_level0, tile_level0) for x, y in coords_px]
    coll = PatchCollection(patches, cmap="viridis", alpha=0.7, linewidths=0)
    coll.set_array(np.asarray(values, dtype=np.float64))
    ax.add_collection(coll)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    ax.set_title(f"{slide_id}: predicted {gene}")
    fig.colorbar(coll, ax=ax, fraction=0.04, pad=0.02, label="predicted expression")
    return save_figure(fig, out, dpi=100, bbox_inches="tight")


def qupath_geojson(out: Path, tile_ids, coords_px: np.ndarray, tile_level0: float, genes: list[str],
                   values: np.ndarray) -> Path:
    """FeatureCollection of tile squares (level-0 px) with `properties.measurements` {gene: value}."""
    s = float(tile_level0)
    feats = []
    for i, (tid, (x, y)) in enumerate(zip(tile_ids, coords_px.astype(float))):
        ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
        feats.append({
            "type": "Feature",
            "id": str(tid),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "tile",
                "name": str(tid),
                "measurements": {g: float(values[i, j]) for j, g in enumerate(genes)},
            },
        })
    return write_text_atomic(out, json.dumps({"type": "FeatureCollection", "features": feats}))
