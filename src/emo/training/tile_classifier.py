"""Tile classifier for the region of interest (the paper kept invasive-cancer tiles only).

A logistic-regression head on cached tile features, trained from per-tile labels that come from
annotations: GeoJSON polygons with class names (QuPath export; a tile takes the class of the polygon
containing its centre) or per-spot label tables (her2st `*_labeled_coordinates.tsv`, joined to
spot-centred tile stores by spot id). Its accuracy is measured on held-out slides (grouped
cross-validation), then it filters tile stores down to the chosen classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from emo.errors import EmoError
from emo.io import atomic_path, plain_attr, provenance, save_figure
from emo.features.store import feature_identity, open_feature_stores
from emo.models.tile_classifier import load_tile_classifier
from emo.models.model import write_manifest

LABEL_SUFFIXES = ("_labeled_coordinates.tsv", ".geojson", ".json", ".tsv", ".csv")


def label_slide_id(path: Path) -> str:
    name = Path(path).name
    for suffix in LABEL_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _class_name(props: dict) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, dict) and cls.get("name"):
        return str(cls["name"])
    if isinstance(cls, str):
        return cls
    for key in ("class", "label", "name"):
        if props.get(key):
            return str(props[key])
    return None


def labels_from_geojson(path: Path, centres_px: np.ndarray) -> np.ndarray:
    """Class of the polygon containing each tile centre (level-0 px); None outside every polygon."""
    import shapely
    from shapely.geometry import shape

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EmoError(f"{path}: not readable GeoJSON ({exc}); export annotations from QuPath as GeoJSON") from None
    features = data["features"] if isinstance(data, dict) and "features" in data else (data if isinstance(data, list) else [data])
    out = np.full(len(centres_px), None, dtype=object)
    centres_px = np.asarray(centres_px, dtype=np.float64)
    n_poly = 0
    for feat in features:
        name = _class_name(feat.get("properties") or {})
        geom = feat.get("geometry")
        if name is None or geom is None or geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        n_poly += 1
        inside = shapely.contains_xy(shape(geom), centres_px[:, 0], centres_px[:, 1])
        out[inside] = name
    if n_poly == 0:
        raise EmoError(f"{path}: no polygons with a class name (properties.classification.name); nothing to train on")
    return out


def labels_from_spots(path: Path, tile_ids: list[str]) -> np.ndarray:
    """Per-spot labels (columns x, y = array position, label) joined by spot id `"<x>x<y>"`."""
    table = pd.read_csv(path, sep="\t" if str(path).endswith(".tsv") else ",")
    if "label" not in table:
        raise EmoError(f"{path}: no 'label' column; expected her2st-style columns x, y, label")
    if {"x", "y"} <= set(table.columns):
        ids = [f"{int(round(x))}x{int(round(y))}" for x, y in zip(table["x"], table["y"])]
    else:
        ids = table.iloc[:, 0].astype(str).tolist()
    by_id = dict(zip(ids, table["label"].astype(str)))
    out = np.array([by_id.get(t) for t in tile_ids], dtype=object)
    if all(v is None for v in out):
        raise EmoError(f"{path}: no spot id matches the feature store's tile_id (e.g. {tile_ids[:2]}); "
                       "tile the slide spot-centred with spot ids '<x>x<y>'")
    return out


def _tile_size_level0(tiles: Path | None, slide_id: str) -> float:
    if tiles is None:
        raise EmoError(f"GeoJSON labels of {slide_id}: pass --tiles TILE_DIR (tile centres need the tile size)")
    from emo.slides import TileStore

    return float(TileStore(Path(tiles) / f"{slide_id}.h5").attrs["tile_size_level0"])


def collect_labels(feature_dir: Path, label_files: list[Path], tiles: Path | None = None):
    """(features, labels, slide per tile) for every labelled tile of slides that have a label file."""
    stores = open_feature_stores(feature_dir)
    xs, ys, groups, coords = [], [], [], []
    for path in label_files:
        slide_id = label_slide_id(path)
        if slide_id not in stores:
            raise EmoError(f"{path}: slide {slide_id} has no feature store in {feature_dir}; run `emo features` on it")
        store = stores[slide_id]
        if str(path).endswith((".geojson", ".json")):
            coords_px = store.coords_px
            labels = labels_from_geojson(path, coords_px + _tile_size_level0(tiles, slide_id) / 2)
        else:
            labels = labels_from_spots(path, store.tile_ids)
        keep = np.flatnonzero([v is not None for v in labels])
        xs.append(store.read(keep))
        ys.append(labels[keep].astype(str))
        groups += [slide_id] * len(keep)
        coords.append(store.coords_px[keep])
    if not xs or sum(len(y) for y in ys) == 0:
        raise EmoError("no labelled tiles: check that label files are named <slide_id>.geojson / <slide_id>_labeled_coordinates.tsv")
    return np.concatenate(xs), np.concatenate(ys), np.array(groups), np.concatenate(coords), stores


def _fit(x, y, seed, c):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, class_weight="balanced",
                                                              random_state=seed)).fit(x, y)


def train_tile_classifier(feature_dir: Path, label_files: list[Path], out_dir: Path, *, tiles: Path | None = None,
                          merge: dict[str, str] | None = None, min_count: int = 5, c: float = 0.1,
                          seed: int = 0, folds: int = 5) -> dict:
    """Fit the classifier, report held-out accuracy, write `manifest.json` + `weights.safetensors`.

    Held-out accuracy uses GroupKFold over slides when there are ≥2 labelled slides; with one slide
    it groups tiles into `folds` spatial blocks (bands along x), so neighbouring tiles never sit on
    both sides of a split.
    """
    from safetensors.numpy import save_file
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix
    from sklearn.model_selection import GroupKFold

    x, y, groups, coords, stores = collect_labels(feature_dir, [Path(p) for p in label_files], tiles)
    if merge:
        y = np.array([merge.get(v, v) for v in y])
    counts = pd.Series(y).value_counts()
    rare = counts[counts < min_count].index
    keep = ~np.isin(y, rare)
    x, y, groups, coords = x[keep], y[keep], groups[keep], coords[keep]
    classes = sorted(set(y))
    if len(classes) < 2:
        raise EmoError(f"labels: need ≥2 classes with ≥{min_count} tiles each (have {counts.to_dict()})")
    if len(set(groups)) >= 2:
        cv_groups, grouping = groups, "slide"
    else:
        edges = np.quantile(coords[:, 0], np.linspace(0, 1, folds + 1)[1:-1])
        cv_groups, grouping = np.searchsorted(edges, coords[:, 0]), f"{folds} spatial blocks along x (one slide)"
    n_splits = min(folds, len(set(cv_groups)))
    pred = np.empty(len(y), dtype=object)
    for tr, te in GroupKFold(n_splits=n_splits).split(x, y, cv_groups):
        if len(set(y[tr])) < 2:
            pred[te] = y[tr][0]
            continue
        pred[te] = _fit(x[tr], y[tr], seed, c).predict(x[te])
    pred = pred.astype(str)
    metrics = {
        "heldout_accuracy": float((pred == y).mean()),
        "heldout_balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "majority_baseline": float(counts.max() / counts[classes].sum()),
        "grouping": grouping,
        "n_tiles": int(len(y)),
        "n_slides": int(len(set(groups))),
        "class_counts": {k: int(v) for k, v in pd.Series(y).value_counts().items()},
        "confusion": {"classes": classes, "matrix": confusion_matrix(y, pred, labels=classes).tolist()},
        "dropped_rare_classes": [str(r) for r in rare],
    }
    final = _fit(x, y, seed, c)
    scaler, logreg = final.steps[0][1], final.steps[1][1]
    coef, intercept = logreg.coef_, logreg.intercept_
    if len(classes) == 2:  # sklearn's binary form → one row per class (softmax-equivalent)
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "weights.safetensors") as tmp:
        save_file({"mean": scaler.mean_.astype(np.float32), "scale": scaler.scale_.astype(np.float32),
                   "coef": coef.astype(np.float32), "intercept": intercept.astype(np.float32)}, str(tmp))
    prov = provenance(c=c, seed=seed, merge=merge, min_count=min_count, labels=[str(p) for p in label_files])
    _confusion_png(out_dir / "confusion.png", metrics)
    write_manifest(out_dir, {
        "emo_version": prov["emo_version"], "kind": "tile_classifier", "classes": list(logreg.classes_),
        "backbone": feature_identity(stores), "metrics": metrics, "provenance": prov,
    })
    return metrics


def _confusion_png(dest: Path, metrics: dict) -> None:
    import matplotlib.pyplot as plt

    classes, mat = metrics["confusion"]["classes"], np.array(metrics["confusion"]["matrix"])
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.0 * len(classes) + 2))
    ax.imshow(mat, cmap="Blues")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted (held out)", ylabel="annotated",
           title=f"accuracy {metrics['heldout_accuracy']:.2f}, balanced {metrics['heldout_balanced_accuracy']:.2f}")
    fig.tight_layout()
    save_figure(fig, dest, dpi=100)


def filter_tile_stores(classifier: Path, tile_dir: Path, out_dir: Path, keep: list[str],
                       feature_dir: Path | None = None) -> pd.DataFrame:
    """Write a copy of every tile store keeping only tiles classified as one of `keep` (inputs untouched)."""
    import shutil

    model = load_tile_classifier(classifier)
    unknown = [k for k in keep if k not in model.classes]
    if unknown:
        raise EmoError(f"--keep {', '.join(unknown)}: not a class of {classifier} (classes: {', '.join(model.classes)})")
    tile_dir, out_dir = Path(tile_dir), Path(out_dir)
    if feature_dir is None:
        feature_dir = tile_dir.parent / "features" / str(model.manifest["backbone"]["name"])
    stores = open_feature_stores(feature_dir)
    if int(next(iter(stores.values())).dim) != int(model.manifest["backbone"]["dim"]):
        raise EmoError(f"{feature_dir}: features have dim {next(iter(stores.values())).dim}, classifier expects "
                       f"{model.manifest['backbone']['dim']}; use the classifier's backbone")
    rows = []
    for path in sorted(tile_dir.glob("*.h5")):
        slide_id = path.stem
        if slide_id not in stores:
            raise EmoError(f"{path}: no features for slide {slide_id} in {feature_dir}; run `emo features` first")
        st = stores[slide_id]
        with h5py.File(path, "r") as src:
            n = len(src["coords_px"])
            if st.n_tiles != n or st.tile_ids != [plain_attr(t) for t in src["tile_id"][...]]:
                raise EmoError(f"{st.path}: rows differ from tile store {path}; re-run `emo features` on it")
            pred = model.predict_classes(st.read()) if n else np.array([], dtype=object)
            kept = np.flatnonzero(np.isin(pred, keep))
            dest = out_dir / path.name
            with atomic_path(dest) as tmp, h5py.File(tmp, "w") as dst:
                for name, ds in src.items():
                    data = ds[...]
                    dst.create_dataset(name, data=data[kept] if ds.shape and ds.shape[0] == n else data,
                                       dtype=ds.dtype)
                dst.attrs.update(dict(src.attrs))
                dst.attrs["n_dropped_classifier"] = int(n - len(kept))
                dst.attrs["classifier"] = str(Path(classifier).resolve())
                dst.attrs["classifier_keep"] = json.dumps(keep)
        if path.with_suffix(".png").exists():
            shutil.copyfile(path.with_suffix(".png"), out_dir / f"{slide_id}.png")
        rows.append({"slide_id": slide_id, "n_tiles": n, "n_kept": len(kept),
                     **{f"n_{c}": int((pred == c).sum()) for c in model.classes}})
    summary = pd.DataFrame(rows)
    from emo.io import write_table_atomic

    write_table_atomic(out_dir / "filter_summary.csv", summary)
    return summary
