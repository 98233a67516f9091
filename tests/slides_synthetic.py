"""Generated pyramidal TIFFs with known content (H&E-like texture, glass, dark markers) for slide tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MPP = 0.25
MARKER_PX = 24  # marker side in level-0 px (6 µm)


def synthetic_rgb(width: int = 2400, height: int = 1600, tissue_until: int = 1800, seed: int = 0):
    """Pink textured 'tissue' left of `tissue_until`, glass right of it; dark squares at known centres."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((height, width, 3), np.uint8)
    noise = rng.integers(-25, 26, (height, width, 1))
    rgb[:] = np.clip(np.array([215, 140, 185]) + noise * np.array([1, 1.3, 1]), 0, 255).astype(np.uint8)
    rgb[:, tissue_until:] = np.clip(242 + rng.integers(-2, 3, (height, width - tissue_until, 1)), 0, 255)
    markers = [(600.0, 600.0), (1400.0, 1000.0)]
    h = MARKER_PX // 2
    for mx, my in markers:
        rgb[int(my) - h : int(my) + h, int(mx) - h : int(mx) + h] = (40, 30, 90)
    return rgb, markers


def write_pyramid(path: Path, rgb: np.ndarray, mpp: float = MPP, levels: int = 3, compression: str = "zlib") -> Path:
    """Classic tiled TIFF pyramid (main IFDs, reduced levels flagged), readable by libvips, tifffile and OpenSlide."""
    import tifffile
    from PIL import Image

    with tifffile.TiffWriter(path) as tif:
        level = rgb
        for i in range(levels):
            kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if i == 0 else {"subfiletype": 1}
            tif.write(level, tile=(256, 256), photometric="rgb", compression=compression, **kw)
            h, w = level.shape[:2]
            level = np.asarray(Image.fromarray(level).reduce(2)) if i + 1 < levels else level
    return path
