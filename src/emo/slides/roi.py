"""Regions of interest per slide: QuPath GeoJSON polygons (holes respected) or a binary mask image.

Coordinates are level-0 pixels (QuPath's export frame). A GeoJSON that does not fit the slide
(outside its bounds, or covering none of its tissue) is in another frame — µm, a downsampled
level, or another slide — and is rejected with a message rather than silently dropping every tile.
QuPath annotations keep their `classification`: the ROI is the union of the selected classes
(default: every class), less the areas of classes named `Ignore*` (QuPath's convention for regions
to leave out) unless those are selected by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emo.errors import EmoError

MASK_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
GEOJSON_SUFFIXES = (".geojson", ".json")
IGNORE_PREFIX = "Ignore"  # QuPath: classes named Ignore* mark regions to leave out
UNCLASSIFIED = "Unclassified"  # how QuPath shows annotations without a class; selectable by that name


@dataclass
class Roi:
    """Inside-test for level-0 points and tile boxes."""

    source: str
    classes: list[str] = field(default_factory=list)  # QuPath classes that make the ROI
    geometry: object | None = None  # shapely geometry (GeoJSON)
    mask: np.ndarray | None = None  # bool mask scaled to the slide by `mask_scale`
    mask_scale: float = 1.0  # mask px per level-0 px

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.geometry is not None:
            import shapely

            return shapely.contains_xy(self.geometry, x, y)
        h, w = self.mask.shape
        ix = np.clip((np.asarray(x) * self.mask_scale).astype(int), 0, w - 1)
        iy = np.clip((np.asarray(y) * self.mask_scale).astype(int), 0, h - 1)
        return self.mask[iy, ix]

    def fraction_inside(self, x0: np.ndarray, y0: np.ndarray, size: float, samples: int = 8) -> np.ndarray:
        """Fraction of each square box (top-left x0, y0; side `size`) inside, on a samples² grid."""
        offs = (np.arange(samples) + 0.5) / samples * size
        gx = (x0[:, None, None] + offs[None, None, :]).repeat(samples, 1)
        gy = (y0[:, None, None] + offs[None, :, None]).repeat(samples, 2)
        return self.contains(gx.ravel(), gy.ravel()).reshape(len(x0), -1).mean(axis=1)


def find_roi_file(roi: Path, slide_id: str) -> Path:
    """The ROI for a slide: the file itself, or `<slide_id>.geojson|.json|.png|_mask.png...` in a folder."""
    if roi.is_file():
        return roi
    if not roi.is_dir():
        raise EmoError(f"{roi}: ROI file or folder not found; pass a QuPath GeoJSON, a mask image or a folder of them to --roi")
    for stem in (slide_id, f"{slide_id}_mask", f"{slide_id}-mask"):
        for suffix in GEOJSON_SUFFIXES + MASK_SUFFIXES:
            if (roi / f"{stem}{suffix}").is_file():
                return roi / f"{stem}{suffix}"
    raise EmoError(f"{slide_id}: no ROI in {roi} (expected {slide_id}.geojson or {slide_id}_mask.png); add one or drop --roi")


def _class_name(item: dict) -> str:
    """QuPath's `properties.classification` ({"name": ...}, or a bare name in old exports)."""
    c = (item.get("properties") or {}).get("classification")
    name = c.get("name") if isinstance(c, dict) else c
    return str(name) if name else UNCLASSIFIED


def _geojson_geometry(path: Path, classes: list[str] | None = None):
    """Union of the polygons of the selected classes, less the Ignore* ones; and the classes used."""
    import shapely
    from shapely.geometry import shape

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EmoError(f"{path}: not valid GeoJSON ({exc}); export annotations from QuPath as GeoJSON") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        items = data.get("features", [])
    elif isinstance(data, list):
        items = data
    else:
        items = [data]
    polys: dict[str, list] = {}
    for item in items:
        geom = item.get("geometry", item) if isinstance(item, dict) else None
        if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        try:
            polys.setdefault(_class_name(item), []).append(shapely.make_valid(shape(geom)))
        except Exception as exc:
            raise EmoError(f"{path}: invalid polygon ({exc}); re-export the annotation from QuPath") from None
    if not polys:
        raise EmoError(f"{path}: no Polygon or MultiPolygon annotations; draw the region in QuPath and export it as GeoJSON")
    wanted = [c for c in polys if not c.startswith(IGNORE_PREFIX)] if classes is None else [c for c in classes if c in polys]
    if not wanted:
        found = ", ".join(f"{c} ({len(p)})" for c, p in sorted(polys.items()))
        asked = f"of class {', '.join(classes)}" if classes is not None else "outside Ignore* classes"
        raise EmoError(f"{path}: no annotation {asked} (found {found}); choose classes with --roi-classes")
    geom = shapely.union_all([p for c in wanted for p in polys[c]])
    ignored = [p for c, ps in polys.items() if c.startswith(IGNORE_PREFIX) and c not in wanted for p in ps]
    if ignored:
        geom = shapely.difference(geom, shapely.union_all(ignored))
    shapely.prepare(geom)
    return geom, sorted(wanted)


def load_roi(
    path: Path, slide_dims: tuple[int, int], tissue_mask: np.ndarray | None = None, classes: list[str] | None = None
) -> Roi:
    """Load and check a ROI against the slide (level-0 size `slide_dims`, thumbnail `tissue_mask`).

    `classes` selects QuPath annotation classes (GeoJSON only); default: all but Ignore*.
    """
    w0, h0 = slide_dims
    suffix = path.suffix.lower()
    if suffix in GEOJSON_SUFFIXES:
        geom, used = _geojson_geometry(path, classes)
        minx, miny, maxx, maxy = geom.bounds
        tol = 0.02 * max(w0, h0)
        if minx < -tol or miny < -tol or maxx > w0 + tol or maxy > h0 + tol:
            raise EmoError(
                f"{path}: ROI bounds ({minx:.0f}, {miny:.0f})–({maxx:.0f}, {maxy:.0f}) lie outside the slide "
                f"({w0} × {h0} level-0 px): wrong coordinate frame or wrong slide; export from QuPath in full-resolution pixels"
            )
        roi = Roi(source=str(path.resolve()), classes=used, geometry=geom)
    elif suffix in MASK_SUFFIXES:
        from PIL import Image

        if classes is not None:
            raise EmoError(f"{path}: --roi-classes selects QuPath annotation classes, but this ROI is a mask image; drop --roi-classes")

        try:
            mask = np.asarray(Image.open(path).convert("L")) > 0
        except Exception as exc:
            raise EmoError(f"{path}: cannot read ROI mask image ({exc}); use a binary PNG") from None
        mh, mw = mask.shape
        if abs(mw / mh - w0 / h0) > 0.02 * (w0 / h0):
            raise EmoError(
                f"{path}: mask is {mw} × {mh} px but the slide is {w0} × {h0}: aspect ratios differ, so it belongs to "
                "another image; make the mask from this slide's thumbnail"
            )
        roi = Roi(source=str(path.resolve()), mask=mask, mask_scale=mw / w0)
    else:
        raise EmoError(f"{path}: unsupported ROI format '{suffix}'; use a QuPath GeoJSON or a binary mask image (.png)")
    if tissue_mask is not None and tissue_mask.any():
        th, tw = tissue_mask.shape
        ys, xs = np.nonzero(tissue_mask)
        sel = np.linspace(0, len(xs) - 1, min(len(xs), 20000)).astype(int)
        inside = roi.contains((xs[sel] + 0.5) * w0 / tw, (ys[sel] + 0.5) * h0 / th)
        if not inside.any():
            raise EmoError(
                f"{path}: ROI covers none of the slide's tissue: wrong coordinate frame (µm or a downsampled level "
                "instead of level-0 pixels?) or wrong slide"
            )
    return roi
