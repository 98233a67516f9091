"""Pictures and viewer annotations of predictions: expression maps over the H&E, QuPath GeoJSON."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from emo.io import save_figure, write_text_atomic

SPOT_UNIT = "log1p CP10k"  # spot targets: `emo.expression.normalize_spots`
SPOT_KINDS = ("spot_ridge", "finetune_cnn")


def expression_unit(targets_emo: dict | None) -> str:
    """The unit of bulk targets, and so of a head's predictions, from targets.h5ad `uns['emo']`:
    log2(CPM + 1) for count matrices, else the supplied matrix's own log scale (both cohort-offset)."""
    params = (targets_emo or {}).get("params", targets_emo or {})
    if len(params.get("counts_matrices", ())) and not len(params.get("matrices", ())):
        return str(params.get("counts_normalisation", "log2(CPM + 1)"))
    return "input log scale" if params else "target scale"


def model_unit(manifest: dict) -> str:
    """The unit of a model's predictions: spot models predict log1p CP10k, heads their targets' unit."""
    if manifest.get("kind") in SPOT_KINDS:
        return SPOT_UNIT
    targets = Path(str(manifest.get("targets", "")))
    if not targets.is_file():
        return "target scale"
    import anndata
    import h5py

    with h5py.File(targets, "r") as f:
        return expression_unit(anndata.io.read_elem(f["uns/emo"]) if "uns/emo" in f else None)


def _nice_length(span: float) -> float:
    """A round scale-bar length (1, 2 or 5 × 10^k) near a fifth of `span`."""
    target = span / 5
    k = 10 ** np.floor(np.log10(target))
    return float(max((m * k for m in (1, 2, 5) if m * k <= target), default=k))


def expression_map(ax, spatial_lib: dict | None, centres: np.ndarray, values: np.ndarray, *, square: bool,
                   mpp: float | None, label: str, title: str = "", clim: tuple[float, float] | None = None):
    """Spots (circles) or tiles (squares) coloured by `values` over the H&E thumbnail, with colour bar and
    µm scale bar; `centres` in full-resolution px, `spatial_lib` one library of `uns["spatial"]`."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle, Rectangle
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    sf = (spatial_lib or {}).get("scalefactors", {})
    d = float(sf.get("spot_diameter_fullres", 1.0))
    image = (spatial_lib or {}).get("images", {}).get("hires")
    if image is not None:
        scale = float(sf["tissue_hires_scalef"])
        ax.imshow(image, extent=(0, image.shape[1] / scale, image.shape[0] / scale, 0))
    if square:
        patches = [Rectangle((x - d / 2, y - d / 2), d, d) for x, y in centres]
    else:
        patches = [Circle((x, y), d / 2) for x, y in centres]
    values = np.asarray(values, dtype=np.float64)
    # the H&E shows through tiles; small spots are nearly opaque, with a white rim that sets dark (low)
    # values off against haematoxylin
    coll = PatchCollection(patches, cmap="viridis", alpha=0.65 if square else 0.9, linewidths=0 if square else 0.4,
                           edgecolors="white")
    coll.set_array(values)
    if clim is None and len(values):
        clim = tuple(np.nanpercentile(values, [2, 98]))
    if clim is not None:
        coll.set_clim(*clim)
    ax.add_collection(coll)
    lo, hi = (centres.min(axis=0) - 1.5 * d, centres.max(axis=0) + 1.5 * d) if len(centres) else ((0, 0), (d, d))
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(hi[1], lo[1])
    ax.set_aspect("equal")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    ax.figure.colorbar(coll, ax=ax, fraction=0.046, pad=0.02, label=label)
    if mpp and np.isfinite(mpp):
        um = _nice_length((hi[0] - lo[0]) * mpp)
        text = f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"
        ax.add_artist(AnchoredSizeBar(ax.transData, um / mpp, text, "lower right", pad=0.4, color="black",
                                      frameon=True, size_vertical=max(d / 6, (hi[1] - lo[1]) / 150)))
    return coll


def heatmap_png(out: Path, gene: str, values: np.ndarray, centres: np.ndarray, spatial_lib: dict, slide_id: str,
                mpp: float | None, unit: str) -> Path:
    """One gene's predicted expression per tile over the slide thumbnail (colour bar, scale bar)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    expression_map(ax, spatial_lib, centres, values, square=True, mpp=mpp, label=f"predicted {gene} ({unit})",
                   title=f"{slide_id}: predicted {gene}")
    return save_figure(fig, out, dpi=100, bbox_inches="tight")


TILE_ID_NAMESPACE = uuid.UUID("6b0c9e0e-3d1f-4c55-9a57-5f2f4b1f2a10")  # uuid5(namespace, slide/tile): stable ids
THIRDS = (("bottom third", [68, 1, 84]), ("middle third", [33, 145, 140]), ("top third", [253, 231, 37]))  # viridis
CLASS_SCOPES = {"slide": "in this slide", "cohort": "in the cohort"}


def tertile_cuts(values: np.ndarray) -> np.ndarray:
    """The 1/3 and 2/3 quantiles per column of tiles × genes: the class boundaries of `qupath_geojson`."""
    return np.quantile(np.asarray(values, dtype=np.float64), [1 / 3, 2 / 3], axis=0).T.reshape(-1, 2)


def qupath_geojson(out: Path, slide_id: str, tile_ids, coords_px: np.ndarray, tile_level0: float, genes: list[str],
                   values: np.ndarray, cuts: np.ndarray | None = None, scope: str = "slide") -> Path:
    """A FeatureCollection QuPath imports as tile objects (level-0 px squares, drag-and-drop or File ▸ Import).

    Each tile has a UUID (QuPath keeps it as the object id; stable across runs), `measurements` {gene:
    value} for `genes`, and a `classification` by the first gene's thirds, named for what they are
    ("POSTN: top third in this slide"; `scope` "cohort" with `cuts` from every slide's tiles: "… in the
    cohort"), so the viewer colours tiles by predicted level; without genes every tile is "EMO tile".
    """
    s = float(tile_level0)
    values = np.asarray(values, dtype=np.float64).reshape(len(coords_px), len(genes))
    if genes and len(values):
        cut = (tertile_cuts(values[:, :1]) if cuts is None else np.asarray(cuts, dtype=np.float64).reshape(-1, 2))[0]
        level = np.searchsorted(cut, values[:, 0], side="right")
    feats = []
    for i, (tid, (x, y)) in enumerate(zip(tile_ids, np.asarray(coords_px, dtype=float))):
        ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
        if genes:
            name, colour = THIRDS[int(level[i])]
            classification = {"name": f"{genes[0]}: {name} {CLASS_SCOPES[scope]}", "color": colour}
        else:
            classification = {"name": "EMO tile", "color": [0, 160, 0]}
        feats.append({
            "type": "Feature",
            "id": str(uuid.uuid5(TILE_ID_NAMESPACE, f"{slide_id}/{tid}")),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "tile",
                "name": str(tid),
                "classification": classification,
                "isLocked": True,
                "measurements": {g: float(values[i, j]) for j, g in enumerate(genes)},
            },
        })
    return write_text_atomic(out, json.dumps({"type": "FeatureCollection", "features": feats}))
