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


APERIO_JP2000_RGB = 33005  # TIFF compression of JPEG 2000 Aperio SVS (many older TCGA slides)


def write_svs_like(path: Path, rgb: np.ndarray, mpp: float = 0.499, compression: str | int = "jpeg") -> Path:
    """Aperio-style TIFF: baseline, thumbnail page, a 4× level, label and macro (levels are pages 0 and 2).

    `compression=APERIO_JP2000_RGB` writes the levels as Aperio's JPEG 2000 (via imagecodecs).
    """
    import tifffile
    from PIL import Image

    head = "Aperio Image Library v12.0.15\n"
    h, w = rgb.shape[:2]
    kw = {"photometric": "rgb", "compression": "jpeg", "metadata": None}
    lv = kw | {"compression": compression}
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), description=f"{head}{w}x{h} (256x256) JPEG/RGB Q=70|AppMag = 20|MPP = {mpp}", **lv)
        tif.write(np.ascontiguousarray(rgb[::8, ::8]), description=f"{head}{w}x{h} -> thumbnail |MPP = {mpp}", **kw)
        tif.write(np.asarray(Image.fromarray(rgb).reduce(4)), tile=(256, 256), description=f"{head}{w}x{h} -> level 1 |MPP = {mpp}", **lv)
        tif.write(np.zeros((100, 200, 3), np.uint8), subfiletype=1, description=f"{head}label 200x100", **kw)
        tif.write(np.zeros((100, 300, 3), np.uint8), subfiletype=9, description=f"{head}macro 300x100", **kw)
    return path


def write_ome_tiff(path: Path, rgb: np.ndarray, size: float, unit: str, levels: int = 3) -> Path:
    """OME-TIFF pyramid (reduced levels in SubIFDs) whose µm/px is only in the OME-XML PhysicalSizeX/Y."""
    import tifffile
    from PIL import Image

    pyramid = [rgb]
    for _ in range(levels - 1):
        pyramid.append(np.asarray(Image.fromarray(pyramid[-1]).reduce(2)))
    meta = {"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit, "PhysicalSizeY": size, "PhysicalSizeYUnit": unit}
    kw = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(rgb, subifds=levels - 1, metadata=meta, **kw)
        for level in pyramid[1:]:
            tif.write(level, subfiletype=1, **kw)
    return path


def write_dicom_wsi(folder: Path, source: Path) -> list[Path]:
    """DICOM WSI (one .dcm per level, UID-named) converted from `source` by wsidicomizer (tiffslide source)."""
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.wsidicomizer import SourceIdentifier

    files = WsiDicomizer.convert(
        source, folder, include_label=False, include_overview=False, include_thumbnail=False,
        preferred_source=SourceIdentifier.TIFFSLIDE,
    )  # fmt: skip
    return sorted(Path(f) for f in files)
