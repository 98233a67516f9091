"""The `uns["spatial"]` block scanpy and squidpy plot from: H&E thumbnails plus their scale factors.

One builder for measured spots (`emo expression spatial`) and predictions (EMO-spatial tiles, spot
models), so every `.h5ad` emo writes opens in `sc.pl.spatial` / `sq.pl.spatial_scatter` as is.
Convention (Space Ranger / scanpy): `obsm["spatial"]` holds centres in full-resolution pixels, and
`images[k]` is that frame scaled by `scalefactors[f"tissue_{k}_scalef"]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from emo.errors import EmoError

HIRES_PX, LOWRES_PX = 2000, 600  # Space Ranger's sizes of the two images


def _shrink(image: np.ndarray, max_size: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    if max(h, w) <= max_size:
        return image
    f = max_size / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def spatial_uns(library_id: str, image: np.ndarray | None, image_scale: float, spot_diameter_fullres: float,
                metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """`{library_id: {images: {hires, lowres}, scalefactors, metadata}}` for `adata.uns["spatial"]`.

    `image` is uint8 RGB of the full-resolution frame scaled by `image_scale` (image px per full-res
    px); without one the block holds scale factors only and plots draw spots on a blank canvas.
    """
    if not spot_diameter_fullres > 0:
        raise EmoError(f"{library_id}: spot diameter must be positive (got {spot_diameter_fullres}); check µm/px")
    images: dict[str, np.ndarray] = {}
    scalefactors = {"spot_diameter_fullres": float(spot_diameter_fullres), "tissue_hires_scalef": float(image_scale),
                    "tissue_lowres_scalef": float(image_scale)}
    if image is not None:
        rgb = np.ascontiguousarray(np.asarray(image)[..., :3], dtype=np.uint8)
        for key, size in (("hires", HIRES_PX), ("lowres", LOWRES_PX)):
            images[key] = _shrink(rgb, size)
            scalefactors[f"tissue_{key}_scalef"] = float(image_scale) * images[key].shape[1] / rgb.shape[1]
    meta = {"software_version": _version(), **{k: v for k, v in (metadata or {}).items() if v is not None}}
    return {str(library_id): {"images": images, "scalefactors": scalefactors, "metadata": meta}}


def image_spatial_uns(library_id: str, image_path: str | Path | None, full_width: float | None,
                      spot_diameter_fullres: float,
                      metadata: dict[str, Any] | None = None, *, fallback: np.ndarray | None = None) -> dict[str, Any]:
    """`spatial_uns` with the thumbnail read from the slide or photo the coordinates are pixels of;
    when it is gone, `fallback` (e.g. the tile store's PNG) covering `full_width` level-0 px is used."""
    from emo.slides.readers import open_slide

    image = None
    if image_path and Path(image_path).is_file():
        reader = open_slide(image_path, mpp=1.0)  # µm/px is not needed for a thumbnail
        try:
            image = reader.thumbnail(HIRES_PX)
            full_width = reader.dimensions[0]
        finally:
            reader.close()
    elif fallback is not None and full_width:
        image = fallback
    scale = image.shape[1] / float(full_width) if image is not None else 1.0
    meta = {"source_image_path": str(image_path) if image_path else None, **(metadata or {})}
    return spatial_uns(library_id, image, scale, spot_diameter_fullres, meta)


def _version() -> str:
    from emo import __version__

    return f"emo {__version__}"
