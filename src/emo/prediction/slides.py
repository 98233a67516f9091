"""`predict`: a trained model + cached features → EMO-spatial per slide and EMO-average per cohort.

Slides stream one at a time and tiles in chunks: predictions are written float32 chunk by chunk
into the slide's `.h5ad`, so memory is bounded by `chunk_tiles × genes` whatever the slide size.
A slide's `.h5ad` is renamed into place last, so a restarted run skips finished slides and redoes
the interrupted one from scratch, giving the same files as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from emo.errors import EmoError
from emo.io import atomic_path, plain_attr
from emo.log import warn
from emo.features.store import FeatureStore, feature_identity, open_feature_stores
from emo.prediction.average import write_average
from emo.prediction.config import PredictionConfig
from emo.prediction.render import heatmap_png, model_unit, qupath_geojson, tertile_cuts
from emo.slides.spatial_uns import image_spatial_uns


def _chosen_genes(model_genes: list[str], genes, panel) -> list[str]:
    from emo.panels import get_panel, resolve_genes

    chosen: list[str] = []
    if genes:
        wanted = resolve_genes(genes)
        missing = [g for g in wanted if g not in model_genes]
        if missing:
            raise EmoError(f"gene(s) {', '.join(missing[:10])} not predicted by this model; choose from its manifest genes")
        chosen += wanted
    if panel:
        members = [g for g in resolve_genes(get_panel(panel)) if g in model_genes]
        if not members:
            raise EmoError(f"panel {panel!r}: none of its genes is predicted by this model; train it with --genes {panel}")
        chosen += [g for g in members if g not in chosen]
    return chosen


def tile_size_note(model_dir: Path, manifest: dict, store_sizes_um: set[float]) -> str | None:
    """One line when the tiles predicted differ (> 5 %) in size from those the model was trained on
    (spot models: their smallest, the spot's, tile)."""
    sizes = (manifest.get("config") or {}).get("tile_sizes_um") or [(manifest.get("tile_geometry") or {}).get("tile_size_um")]
    trained = min((float(v) for v in sizes if v), default=None)
    other = sorted(v for v in store_sizes_um if trained and abs(v - trained) > 0.05 * trained)
    if not other:
        return None
    return (f"{Path(model_dir).name} was trained on {trained:g} µm tiles but predicts "
            f"{', '.join(f'{v:g}' for v in other)} µm tiles here; re-tile with --tile-um {trained:g} to match")


def geojson_genes(model, chosen: list[str], n: int) -> list[str]:
    """The GeoJSON measurements: the chosen genes, else the model's `n` best by tuning-split ρ
    (`tuning.csv`, the split the model was selected on); none when the model records no such ρ."""
    tuning = Path(model.path) / "tuning.csv"
    if chosen or n == 0 or not tuning.is_file():
        return chosen
    per_gene = pd.read_csv(tuning)
    if "tune_spearman" not in per_gene:
        return []
    best = per_gene.dropna(subset=["tune_spearman"]).sort_values("tune_spearman", ascending=False)
    return [g for g in best["gene"].astype(str) if g in model.genes][:n]


def spatial_columns(path: Path, genes: list[str], images: bool = False) -> dict:
    """`genes`' columns of one EMO-spatial file with its tile ids, corners and `uns['emo']`, read with
    h5py (the rest of X stays on disk); `images` adds the tile centres and `uns['spatial']` (the
    thumbnails a map is drawn over), which the GeoJSON writer does not need."""
    import anndata

    with h5py.File(path, "r") as f:
        names = [plain_attr(g) for g in f["var"][f["var"].attrs["_index"]][...]]
        cols = [names.index(g) for g in genes]
        order = np.argsort(cols)
        values = np.empty((f["X"].shape[0], len(cols)), np.float32)
        if cols:
            values[:, order] = f["X"][:, sorted(cols)]
        obs = f["obs"]
        out = {"tile_ids": [plain_attr(t) for t in obs[obs.attrs["_index"]][...]],
               "coords_px": np.stack([obs["x_px"][...], obs["y_px"][...]], axis=1), "values": values,
               "uns": anndata.io.read_elem(f["uns/emo"]) if "uns/emo" in f else {}}
        if images:
            out["centres"] = f["obsm/spatial"][...]
            out["spatial"] = anndata.io.read_elem(f["uns/spatial"]) if "uns/spatial" in f else {}
        return out


def write_geojson(out_dir: Path, slide_ids: list[str], genes: list[str], classes: str = "slide") -> None:
    """`<out>/geojson/<slide>.geojson` for every slide from its EMO-spatial file; `classes` "cohort" cuts
    the thirds on all slides' tiles together, "slide" on each slide's own."""
    def columns(slide_id: str) -> dict:
        return spatial_columns(out_dir / "spatial" / f"{slide_id}.h5ad", genes)

    cuts = None  # one slide in memory at a time; the cohort's cuts read only the chosen genes' columns first
    if classes == "cohort" and genes:
        cuts = tertile_cuts(np.concatenate([columns(s)["values"] for s in slide_ids]))
    for slide_id in slide_ids:
        d = columns(slide_id)
        qupath_geojson(out_dir / "geojson" / f"{slide_id}.geojson", slide_id, d["tile_ids"], d["coords_px"],
                       float(d["uns"]["tile_size_level0"]), genes, d["values"], cuts, classes)


def _tile_store_info(tiles: Path | None, store) -> tuple[dict, np.ndarray | None]:
    """Attributes, coordinates and thumbnail of the slide's tile store (--tiles, else the features' source)."""
    import json

    if tiles is not None:
        path = Path(tiles) / f"{store.slide_id}.h5"
        if not path.exists():
            raise EmoError(f"{path}: no tile store for slide {store.slide_id}; pass the --tiles folder used by `emo features`")
    elif store.feature_store is None:
        return {}, None
    else:
        try:
            path = Path(json.loads(store.feature_store.attrs.get("params_json", "{}")).get("tile_store") or "")
        except json.JSONDecodeError:
            return {}, None
        if not path.is_file():
            return {}, None
    from emo.slides import TileStore

    tile_store = TileStore(path)
    attrs = {**tile_store.attrs, "_coords_px": tile_store.coords_px}
    thumb_path = path.with_suffix(".png")
    thumb = None
    if thumb_path.exists():
        from PIL import Image

        thumb = np.asarray(Image.open(thumb_path).convert("RGB"))
    return attrs, thumb


def _tile_level0(manifest: dict, where: Path, coords_px, coords_um, tile_attrs: dict) -> float:
    if "tile_size_level0" in tile_attrs:
        return float(tile_attrs["tile_size_level0"])
    size_um = manifest.get("tile_geometry", {}).get("tile_size_um")
    if size_um and len(coords_px):
        nz = coords_px != 0
        if nz.any():
            mpp = float(np.median(coords_um[nz] / coords_px[nz]))
            return float(size_um) / mpp
    raise EmoError(f"{where}: tile size unknown (model has no tile geometry); pass --tiles TILE_DIR")


@dataclass
class _SlideSource:
    """What one slide contributes: tile identity and coordinates, and predictions for a row range."""

    slide_id: str
    path: Path
    tile_ids: list[str]
    coords_px: np.ndarray
    coords_um: np.ndarray
    mpp: float
    predict_rows: Callable[[slice], np.ndarray]
    feature_store: FeatureStore | None = None
    pool: Callable[[], np.ndarray] | None = None  # the head's own slide pooling (EMO-average), else the mean


def _feature_sources(model, feature_dir: Path, tiles: Path | None) -> dict[str, Callable[[], _SlideSource]]:
    from emo.models.model import check_features

    stores = open_feature_stores(feature_dir)
    check_features(model, feature_identity(stores), str(next(iter(stores.values())).path.parent))
    if tiles is not None:
        without = sorted(p.stem for p in Path(tiles).glob("*.h5") if p.stem not in stores)
        if without:
            raise EmoError(f"{tiles}: {len(without)} slide(s) have no features (e.g. {', '.join(without[:3])}); "
                           f"run `emo features` on {tiles}")

    def source(st: FeatureStore) -> _SlideSource:
        head = getattr(model, "head", None)
        pool = None if getattr(head, "slide_pooling", "mean") == "mean" else (lambda: head.pool(st.read()))
        return _SlideSource(st.slide_id, st.path, st.tile_ids, st.coords_px, st.coords_um,
                            float(st.attrs.get("mpp", np.nan)), lambda rows: model.predict(st.read(rows)), st, pool)

    return {sid: (lambda st=st: source(st)) for sid, st in stores.items()}


def _tile_sources(model, tiles: Path) -> dict[str, Callable[[], _SlideSource]]:
    """Each tile store predicted whole by `model.predict(TileStore)` (models that read pixels, or a
    head embedding the tiles with its own backbone), then written in chunks like features."""
    from emo.features import embed
    from emo.slides import TileStore

    paths = sorted(Path(tiles).glob("*.h5"))
    if not paths:
        raise EmoError(f"{tiles}: no tile stores (*.h5); run `emo tile` first")

    def source(path: Path) -> _SlideSource:
        ts = TileStore(path)
        pred = np.asarray(model.predict(ts, embed), dtype=np.float32)
        ts.close()
        if pred.shape != (len(ts), len(model.genes)):
            raise EmoError(f"{path}: model {model.path} gave {list(pred.shape)} for {len(ts)} tiles × "
                           f"{len(model.genes)} genes")
        return _SlideSource(ts.slide_id, path, list(ts.tile_ids), np.asarray(ts.coords_px), np.asarray(ts.coords_um),
                            ts.mpp, lambda sl: pred[sl])

    return {p.stem: (lambda p=p: source(p)) for p in paths}


def _write_spatial(dest: Path, genes: list[str], src: _SlideSource, obs: pd.DataFrame, centres: np.ndarray,
                   uns: dict, chunk_tiles: int, chosen: list[str], spatial: dict) -> np.ndarray:
    """Write the slide's AnnData skeleton with anndata, then fill X in float32 chunks with h5py (into the
    caller's temporary `dest`)."""
    import anndata

    var = pd.DataFrame({"mean": np.zeros(len(genes))}, index=pd.Index(genes, name="gene"))
    skeleton = anndata.AnnData(obs=obs, var=var, obsm={"spatial": centres}, uns={"emo": uns, "spatial": spatial})
    col = [genes.index(g) for g in chosen]
    picked = np.zeros((len(obs), len(col)), dtype=np.float32)
    skeleton.write_h5ad(dest)
    total = np.zeros(len(genes), dtype=np.float64)
    with h5py.File(dest, "a") as f:
        ds = f.create_dataset("X", shape=(len(obs), len(genes)), dtype="float32",
                              chunks=(max(1, min(len(obs), 256)), min(len(genes), 2048)))
        ds.attrs["encoding-type"] = "array"
        ds.attrs["encoding-version"] = "0.2.0"
        for start in range(0, len(obs), chunk_tiles):
            pred = np.asarray(src.predict_rows(slice(start, start + chunk_tiles)), dtype=np.float32)
            ds[start : start + len(pred)] = pred
            total += pred.sum(axis=0, dtype=np.float64)
            picked[start : start + len(pred)] = pred[:, col]
        f["var/mean"][...] = src.pool() if src.pool is not None else total / max(len(obs), 1)
    return picked


def predict(
    model_dir: Path,
    feature_dir: Path | None,
    out_dir: Path,
    config: PredictionConfig | None = None,
    *,
    tiles: Path | None = None,
    **options: Any,
) -> Path:
    """Predict every gene for every tile of every slide; the config's `genes`/`panel` choose heatmaps
    and GeoJSON measurements (none chosen: the `geojson_top` best by tuning ρ are measured), `classes`
    whether the GeoJSON's thirds are cut per slide or on the whole cohort. Keyword options override
    `PredictionConfig` fields.

    Any model `emo.models.load` reads: models on cached features read `feature_dir` (or, given only
    `tiles`, embed the tiles with their backbone); models that read pixels (paper-protocol CNNs,
    spot models) predict each tile store in `tiles`.
    """
    from emo import __version__
    from emo.models import load

    cfg = PredictionConfig.build(config, what="predict", **options)
    out_dir = Path(out_dir)
    model = load(model_dir)
    manifest = model.manifest
    if model.reads_pixels or feature_dir is None:
        if tiles is None:
            what = "reads tile pixels" if model.reads_pixels else "predicts from features or tiles"
            raise EmoError(f"{model_dir}: a {model.kind} model {what}; pass --tiles TILE_DIR"
                           + ("" if model.reads_pixels else " or --features FEATURE_DIR"))
        sources = _tile_sources(model, tiles)
    else:
        sources = _feature_sources(model, feature_dir, tiles)
    chosen = _chosen_genes(model.genes, cfg.genes, cfg.panel)
    model_id = model.model_id
    unit = model_unit(manifest)
    from emo.progress import track

    store_sizes: set[float] = set()
    for slide_id in track(sorted(sources), "predicting slides", "slide"):
        dest = out_dir / "spatial" / f"{slide_id}.h5ad"
        if dest.exists() and _finished_with(dest, model_id):
            continue
        src = sources[slide_id]()
        tile_attrs, thumb = _tile_store_info(tiles, src)
        if "_coords_px" in tile_attrs and not np.array_equal(tile_attrs["_coords_px"], src.coords_px):
            raise EmoError(f"{src.path}: coordinates differ from the tile store of slide {slide_id}; "
                           "re-run `emo features` on this tile store")
        size = _tile_level0(manifest, src.path, src.coords_px, src.coords_um, tile_attrs)
        if "tile_size_um" in tile_attrs:
            store_sizes.add(float(tile_attrs["tile_size_um"]))
        obs = pd.DataFrame({"x_px": src.coords_px[:, 0], "y_px": src.coords_px[:, 1],
                            "x_um": src.coords_um[:, 0], "y_um": src.coords_um[:, 1]},
                           index=pd.Index(src.tile_ids, name="tile_id"))
        uns = {"slide_id": slide_id, "emo_version": __version__, "model": str(Path(model_dir).resolve()),
               "model_kind": manifest["kind"], "model_hash": model_id,
               "backbone": str(model.backbone.get("name")), "tile_size_level0": size,
               "mpp": float(tile_attrs.get("mpp", src.mpp)), "spatial_units": "level-0 px (tile centres)",
               "unit": unit}
        spatial = image_spatial_uns(slide_id, tile_attrs.get("slide_path"), tile_attrs.get("slide_width"), size,
                                    {"mpp": uns["mpp"]}, fallback=thumb)
        with atomic_path(dest) as part:  # renamed onto dest last: the slide's completion marker
            picked = _write_spatial(part, model.genes, src, obs, src.coords_px + size / 2.0, uns, cfg.chunk_tiles, chosen,
                                    spatial)
            for j, gene in enumerate(chosen):
                heatmap_png(out_dir / "heatmaps" / slide_id / f"{gene}.png", gene, picked[:, j], src.coords_px + size / 2.0,
                            spatial[slide_id], slide_id, uns["mpp"], unit)
    note = tile_size_note(model_dir, manifest, store_sizes)
    if note:
        warn(note)
    write_geojson(out_dir, sorted(sources), geojson_genes(model, chosen, cfg.geojson_top), cfg.classes)
    return write_average(out_dir, model.genes, sorted(sources))


def _finished_with(path: Path, model_id: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return plain_attr(f["uns/emo/model_hash"][()]) == model_id
    except (OSError, KeyError):
        return False
