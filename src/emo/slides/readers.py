"""Slide readers behind one small interface, tried in the order of an explicit registry.

`READERS` lists them fastest first: pyvips (TIFF-family pyramids: .svs, .tif, generic tiled TIFF,
multi-threaded decode and resampling), tifffile (+zarr, any TIFF pyramid tifffile parses),
OpenSlide (the universal fallback: .ndpi, .mrxs, .scn, .vms, .bif, DICOM WSI .dcm, ...), then plain RGB images
(JPEG/PNG/non-pyramidal TIFF photographs) whose µm/px their resolution tag or the user supplies. Coordinates given to
`read_scaled` are in the pixels of the chosen level; everything returns uint8 RGB arrays: 16-bit
pixels are scaled to 8 bits, alpha is flattened onto white, palettes are expanded, and grayscale
images are refused with a message (tissue detection and stain estimation need colour).

A reader claims a slide only after it decodes a small region of level 0 and of the level tiling
will read (`SlideReader.probe`): libvips opens the header of, e.g., a JPEG 2000 Aperio SVS or a
zstd TIFF it cannot decode, and the next reader (tifffile + imagecodecs, OpenSlide) then serves.
Each reader says where its level-0 µm/px came from (`mpp_source`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np

from emo.errors import EmoError

TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".ptif", ".btf", ".qptiff", ".ome.tif", ".ome.tiff"}
OPENSLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
MPP_RANGE = (0.05, 20.0)  # plausible µm/px for microscopy; anything else is a screen dpi, not a scale
MPP_TOLERANCE = 0.10  # --mpp further than this from the file's own value is warned about
SMALL_LEVEL_PX = 32_000_000  # levels up to this size (~100 MB RGB) are decoded whole, once
PROBE_PX = 32  # side of the region a reader must decode before it claims a slide
# OME `UnitsLength` symbols → µm (the lengths a PhysicalSizeX is written in)
OME_UNIT_UM = {
    "m": 1e6, "dm": 1e5, "cm": 1e4, "mm": 1e3, "µm": 1.0, "μm": 1.0, "um": 1.0, "nm": 1e-3, "pm": 1e-6, "Å": 1e-4,
    "in": 25400.0, "thou": 25.4, "mil": 25.4,
}  # fmt: skip
TIFF_UNIT_UM = {2: ("inch", 25400.0), 3: ("cm", 10000.0), 4: ("mm", 1000.0), 5: ("µm", 1.0)}  # ResolutionUnit


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".ome.tif" if name.endswith(".ome.tif") else ".ome.tiff" if name.endswith(".ome.tiff") else path.suffix.lower()


def _plausible(mpp: float | None) -> float | None:
    return mpp if mpp is not None and MPP_RANGE[0] <= mpp <= MPP_RANGE[1] else None


class SlideReader:
    """A slide's pyramid: level sizes and downsamples, level-0 µm/px, pixel reads."""

    name: ClassVar[str] = ""
    suffixes: ClassVar[set[str]] = set()

    path: Path
    level_dimensions: list[tuple[int, int]]  # (width, height) per level
    mpp: float | None  # level-0 µm/px from the file, None when absent
    mpp_source: str = ""  # where `mpp` came from (a tag, the OME-XML, --mpp)
    file_mpp: float | None = None  # the file's own level-0 µm/px, also when --mpp overrides it
    warnings: list[str]  # problems worth telling the user (e.g. --mpp disagreeing with the file)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_downsamples(self) -> list[float]:
        w0 = self.level_dimensions[0][0]
        return [w0 / w for w, _ in self.level_dimensions]

    def best_level(self, target_mpp: float) -> int:
        """The coarsest level whose µm/px is not coarser than `target_mpp` (0 when none is)."""
        downsamples = self.level_downsamples
        ok = [i for i, d in enumerate(downsamples) if float(self.mpp) * d <= target_mpp * (1 + 1e-3)]
        return max(ok, key=lambda i: downsamples[i]) if ok else 0

    def probe(self, levels: list[int]) -> None:
        """Decode a small central region of each level; raises what the decoder raises."""
        for level in sorted(set(levels)):
            lw, lh = self.level_dimensions[level]
            w, h = min(PROBE_PX, lw), min(PROBE_PX, lh)
            region = self.read_region(level, (lw - w) // 2, (lh - h) // 2, w, h)
            if region.shape != (h, w, 3):
                raise ValueError(f"level {level} decodes to shape {region.shape}, not ({h}, {w}, 3)")

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 RGB [h, w, 3] of a region lying inside `level`."""
        raise NotImplementedError

    def read_scaled(self, level: int, x: int, y: int, w: int, h: int, out_w: int, out_h: int) -> np.ndarray:
        """Region of `level` resampled to (out_w, out_h); outside the slide is white."""
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if (x0, y0, x1, y1) == (x, y, x + w, y + h):
            region = self.read_region(level, x, y, w, h)
        else:
            region = np.full((h, w, 3), 255, np.uint8)
            if x1 > x0 and y1 > y0:
                region[y0 - y : y1 - y, x0 - x : x1 - x] = self.read_region(level, x0, y0, x1 - x0, y1 - y0)
        if (w, h) == (out_w, out_h):
            return region
        from PIL import Image

        return np.asarray(Image.fromarray(region).resize((out_w, out_h), Image.Resampling.BILINEAR, reducing_gap=2.0))

    def thumbnail(self, max_size: int) -> np.ndarray:
        """Whole slide, longest side ≤ max_size, from the smallest level that is large enough."""
        w0, h0 = self.dimensions
        scale = max_size / max(w0, h0)
        level = max((i for i, d in enumerate(self.level_downsamples) if d <= 1 / scale), default=0)
        lw, lh = self.level_dimensions[level]
        out_w, out_h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        return self.read_scaled(level, 0, 0, lw, lh, out_w, out_h)

    def close(self) -> None:
        pass


def _ome_mpp(ome_xml: str) -> tuple[float | None, str]:
    """Level-0 µm/px of the first image of an OME-XML (`PhysicalSizeX`, in its `PhysicalSizeXUnit`)."""
    import tifffile

    try:
        image = tifffile.xml2dict(ome_xml).get("OME", {}).get("Image", {})
        pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
    except Exception:  # malformed OME-XML: the pixels may still be fine, µm/px then comes from elsewhere
        return None, ""
    size = pixels.get("PhysicalSizeX")
    unit = str(pixels.get("PhysicalSizeXUnit", "µm"))  # µm is the OME default
    if size is None or unit not in OME_UNIT_UM:
        return None, ""
    return float(size) * OME_UNIT_UM[unit], f"OME-XML PhysicalSizeX ({size} {unit})"


def _tiff_levels(path: Path) -> tuple[list[tuple[int, int]], list[int | tuple[int, ...]], float | None, str]:
    """Level sizes, their TIFF page index, and the µm/px of the main series with its source, via tifffile."""
    import logging

    import tifffile

    # tifffile logs parse problems of corrupt files itself; they become one EmoError line instead
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        key = series.levels[0].keyframe
        axes = series.axes
        if "Y" not in axes or "X" not in axes or not (axes.endswith("S") and series.shape[-1] in (3, 4)):
            raise ValueError(f"main image is not RGB (axes {axes}, shape {series.shape})")
        base = key.index if isinstance(key.index, int) else 0
        main = {p.offset: i for i, p in enumerate(tif.pages)}
        subifds = list(tif.pages[base].subifds or ())
        dims, pages = [], []
        for level in series.levels:
            shape = dict(zip(level.axes, level.shape))
            dims.append((int(shape["X"]), int(shape["Y"])))
            offset = level.keyframe.offset
            # libvips addresses a level by main-IFD page, or by (page, SubIFD) for OME-style pyramids
            pages.append(main[offset] if offset in main else (base, subifds.index(offset)))
        mpp, source = None, ""
        if tif.is_svs:
            mpp = tifffile.tifffile.svs_description_metadata(tif.pages[0].description).get("MPP")
            source = "Aperio ImageDescription MPP" if mpp else ""
        if mpp is None and tif.is_ome:
            mpp, source = _ome_mpp(tif.ome_metadata)
        if mpp is None and "XResolution" in key.tags:
            num, den = key.tags["XResolution"].value
            unit = int(key.tags["ResolutionUnit"].value) if "ResolutionUnit" in key.tags else 2
            if num and unit in TIFF_UNIT_UM:
                name, per_unit_um = TIFF_UNIT_UM[unit]
                mpp, source = per_unit_um * den / num, f"TIFF XResolution ({num / den:g} px/{name})"
    mpp = _plausible(float(mpp) if mpp else None)
    return dims, pages, mpp, source if mpp else ""


def _vips_scaled(img, out_w: int, out_h: int) -> np.ndarray:
    """Resample a libvips image to (out_w, out_h): `reduce` when shrinking, `resize` otherwise.

    Linear kernel, as PIL's BILINEAR in `SlideReader.read_scaled`: libvips widens it by the shrink
    factor, so it averages every source pixel (no aliasing) and costs about half of lanczos3, which
    was a fifth of a tile's CPU (decode being the rest).
    """
    w, h = img.width, img.height
    if (w, h) != (out_w, out_h):
        if out_w <= w and out_h <= h:
            img = img.reduce(w / out_w, h / out_h, kernel="linear")
        else:
            img = img.resize(out_w / w, vscale=out_h / h, kernel="linear")
        if (img.width, img.height) != (out_w, out_h):  # rounding in libvips: pad/crop by ≤ 1 px
            img = img.embed(0, 0, out_w, out_h, extend="copy")
    return img.numpy()


def _rgb8(img, path: Path):
    """A libvips image as 8-bit RGB: 16-bit scaled (not clipped to 255), alpha flattened onto white;
    grayscale and float images refused (tissue detection and stain estimation need H&E colour)."""
    if img.bands in (1, 2):
        raise EmoError(f"{path}: a grayscale image; emo needs a colour (RGB) H&E scan; re-export it in colour")
    if img.format not in ("uchar", "ushort"):
        raise EmoError(f"{path}: {img.format} pixels; emo reads 8- and 16-bit RGB; re-export as 8-bit RGB")
    if img.bands == 4:  # onto white of the image's own depth (libvips scales alpha by it)
        img = img.flatten(background=[65535 if img.format == "ushort" else 255] * 3)
    if img.format == "ushort":
        img = (img >> 8).cast("uchar")
    if img.bands != 3:
        raise EmoError(f"{path}: {img.bands} colour channels; emo reads RGB (or RGBA); re-export as RGB")
    return img


class PyvipsReader(SlideReader):
    """TIFF-family pyramids decoded by libvips (threaded JPEG decode, fast resampling)."""

    name = "pyvips"
    suffixes = TIFF_SUFFIXES

    def __init__(self, path: Path):
        import pyvips

        self.path, self.warnings = path, []
        self.level_dimensions, self._pages, self.mpp, self.mpp_source = _tiff_levels(path)
        self._pyvips = pyvips
        self._images: dict[int, object] = {}
        self._decoded: set[int] = set()
        img = self._level(0, decode=False)  # header only: corrupt pixel data surfaces when read
        if (img.width, img.height) != self.level_dimensions[0]:
            raise ValueError("libvips and tifffile disagree on the image size")

    def _level(self, level: int, decode: bool = True):
        img = self._images.get(level)
        if img is None or (decode and level not in self._decoded):
            page = self._pages[level]
            kwargs = {"page": page} if isinstance(page, int) else {"page": page[0], "subifd": page[1]}
            img = _rgb8(self._pyvips.Image.new_from_file(str(self.path), access="random", fail=True, **kwargs), self.path)
            if decode and img.width * img.height <= SMALL_LEVEL_PX:  # decode once: thumbnail and tiles share it
                img = img.copy_memory()
            if decode:
                self._decoded.add(level)
            self._images[level] = img
        return img

    def read_region(self, level, x, y, w, h):
        return self._level(level).crop(x, y, w, h).numpy()

    def read_scaled(self, level, x, y, w, h, out_w, out_h):
        lw, lh = self.level_dimensions[level]
        if x < 0 or y < 0 or x + w > lw or y + h > lh:
            return super().read_scaled(level, x, y, w, h, out_w, out_h)
        return _vips_scaled(self._level(level).crop(x, y, w, h), out_w, out_h)


class TifffileReader(SlideReader):
    """Any TIFF pyramid tifffile parses, decoded per tile through its zarr store."""

    name = "tifffile"
    suffixes = TIFF_SUFFIXES

    def __init__(self, path: Path):
        import tifffile
        import zarr

        self.path, self.warnings = path, []
        self.level_dimensions, _, self.mpp, self.mpp_source = _tiff_levels(path)
        self._tif = tifffile.TiffFile(path)
        series = self._tif.series[0]
        self._arrays = [zarr.open(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]

    def read_region(self, level, x, y, w, h):
        arr = np.asarray(self._arrays[level][y : y + h, x : x + w])[..., :3]
        return (arr >> 8).astype(np.uint8) if arr.dtype == np.uint16 else arr.astype(np.uint8, copy=False)

    def close(self):
        self._tif.close()


class OpenSlideReader(SlideReader):
    """Everything OpenSlide reads; the universal fallback."""

    name = "openslide"
    suffixes = OPENSLIDE_SUFFIXES

    def __init__(self, path: Path):
        import openslide

        self.path, self.warnings = path, []
        self._slide = openslide.OpenSlide(str(path))
        self.level_dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]
        props = self._slide.properties
        mpp = props.get(openslide.PROPERTY_NAME_MPP_X)
        self.mpp = _plausible(float(mpp)) if mpp else None
        if self.mpp:  # OpenSlide reads each vendor's own field (DICOM PixelSpacing, Aperio MPP, ...)
            self.mpp_source = f"OpenSlide {openslide.PROPERTY_NAME_MPP_X} ({props.get(openslide.PROPERTY_NAME_VENDOR, 'unknown')})"

    @property
    def level_downsamples(self):
        return [float(d) for d in self._slide.level_downsamples]

    def read_region(self, level, x, y, w, h):
        ds = self.level_downsamples[level]
        rgba = self._slide.read_region((round(x * ds), round(y * ds)), level, (w, h))
        if rgba.mode == "RGBA":
            from PIL import Image

            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgba = Image.alpha_composite(white, rgba)
        return np.asarray(rgba.convert("RGB"))

    def close(self):
        self._slide.close()


class ImageReader(SlideReader):
    """A plain RGB photograph (JPEG/PNG/flat TIFF): one level, µm/px from the user."""

    name = "image"
    suffixes = IMAGE_SUFFIXES

    def __init__(self, path: Path):
        import pyvips

        self.path, self.warnings = path, []
        self._pyvips = pyvips
        img = pyvips.Image.new_from_file(str(path), access="random", fail=True)
        self._img = _rgb8(img, path)
        self.level_dimensions = [(img.width, img.height)]
        # libvips reads PNG pHYs, JPEG JFIF/EXIF and TIFF resolution as px/mm (1.0 when absent);
        # screen densities (72, 300 dpi) are far outside MPP_RANGE and give None
        self.mpp = _plausible(1000.0 / img.xres) if img.xres > 0 else None
        self.mpp_source = f"image resolution tag ({img.xres:g} px/mm)" if self.mpp else ""

    def read_region(self, level, x, y, w, h):
        return self._img.crop(x, y, w, h).numpy()

    def read_scaled(self, level, x, y, w, h, out_w, out_h):
        if x < 0 or y < 0 or x + w > self._img.width or y + h > self._img.height or (w, h) == (out_w, out_h):
            return super().read_scaled(level, x, y, w, h, out_w, out_h)
        return _vips_scaled(self._img.crop(x, y, w, h), out_w, out_h)

    def thumbnail(self, max_size):
        return _rgb8(self._pyvips.Image.thumbnail(str(self.path), max_size, height=max_size), self.path).numpy()


READERS: dict[str, type[SlideReader]] = {
    "pyvips": PyvipsReader,
    "tifffile": TifffileReader,
    "openslide": OpenSlideReader,
    "image": ImageReader,
}
SUPPORTED_SUFFIXES = sorted(set().union(*(r.suffixes for r in READERS.values())))


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def open_slide(
    path: str | Path, mpp: float | None = None, readers: list[str] | None = None, target_mpp: float | None = None
) -> SlideReader:
    """Open a slide with the first reader of the registry that opens and decodes it; level-0 µm/px is required.

    `mpp` overrides the file's µm/px (and is required for images without one); a value more than
    10 % off the file's own is kept but noted in `reader.warnings`. A reader must decode level 0 and,
    given `target_mpp`, the level tiling at that µm/px reads; otherwise the next one is tried.
    """
    path = Path(path)
    if not path.exists():
        raise EmoError(f"{path}: slide not found; check the path")
    if path.is_dir():
        raise EmoError(f"{path}: is a folder, not a slide; pass slide files or a folder of slides to `emo tile`")
    if mpp is not None and (not mpp > 0 or not math.isfinite(mpp)):
        raise EmoError(f"{path}: --mpp must be a positive number of µm per pixel, got {mpp}")
    suffix = _suffix(path)
    names = [n for n in (readers or READERS) if suffix in READERS[n].suffixes]
    if not names:
        raise EmoError(f"{path}: unsupported format '{suffix}'; emo reads {' '.join(SUPPORTED_SUFFIXES)}")
    errors, undecodable = [], False
    for name in names:
        try:
            reader = READERS[name](path)
        except EmoError:  # the file is read, and what it holds is unusable (e.g. a grayscale image)
            raise
        except Exception as exc:  # each library words failure differently; the next one may succeed
            errors.append(f"{name}: {_first_line(exc)}")
            continue
        reader.file_mpp = reader.mpp
        if mpp is not None:
            _override_mpp(reader, float(mpp))
        if reader.mpp is None:
            reader.close()
            raise EmoError(f"{path}: no µm/px (mpp) in the file; pass it with --mpp (e.g. --mpp 0.5 for a 20× scan)")
        try:
            reader.probe([0] if target_mpp is None else [0, reader.best_level(target_mpp)])
        except Exception as exc:  # opened but cannot decode its tiles (a codec it lacks, damaged data)
            errors.append(f"{name}: cannot decode ({_first_line(exc)})")
            undecodable = True
            reader.close()
            continue
        return reader
    what = "pixel data" if undecodable else "slide"
    raise EmoError(f"{path}: corrupt or unreadable {what} ({'; '.join(errors)[:300]}); re-export or re-copy the file")


def _override_mpp(reader: SlideReader, mpp: float) -> None:
    """Apply --mpp, noting a disagreement with the file's own value."""
    own, source = reader.mpp, reader.mpp_source
    if own is not None and abs(mpp - own) > MPP_TOLERANCE * own:
        reader.warnings.append(
            f"{reader.path}: --mpp {mpp:g} differs by {abs(mpp / own - 1):.0%} from the file's {own:g} µm/px ({source}); "
            "using --mpp — drop it to use the file's value"
        )
    reader.mpp = mpp
    reader.mpp_source = "--mpp" + (f" (the file says {own:g}, {source})" if own is not None else "")
