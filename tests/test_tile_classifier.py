"""Tile classifier: her2st pathologist spot labels → held-out accuracy → filtered tile store."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from emo.errors import EmoError
from emo.models.tile_classifier import load_tile_classifier
from emo.training.tile_classifier import labels_from_geojson, train_tile_classifier
from training_cohort import project, tile_stats, write_feature_store

pytestmark = pytest.mark.slow  # trains a tile classifier on real her2st sections


OTHER = {c: "other" for c in ("cancer in situ", "connective tissue", "adipose tissue", "immune infiltrate", "undetermined")}


@pytest.fixture(scope="module")
def section(tmp_path_factory):
    """Section A1: spot-centred tile store on its preview image, features of the real tile pixels.

    Label rows join to spots by array position (`"<x>x<y>"`, the tile ids); their own pixel columns
    are in another frame, so the spot table gives the centres.
    """
    from conftest import require_data

    from emo.slides import TileStore, TilingConfig
    from emo.slides.tiling import tile_slide_at

    labels = require_data("her2st/labels/A1_labeled_coordinates.tsv")
    image = require_data("her2st/images/A1_lowres.png")
    dims = json.loads(require_data("her2st/image_dims.json").read_text())["A1"]
    root = tmp_path_factory.mktemp("clf")
    table = pd.read_csv(require_data("her2st/spots/A1.tsv"), sep="\t")  # spot centres in full-resolution px
    scale = 2000 / dims["full_width"]
    mpp = 0.917 / scale  # her2st mpp_estimate.json, at the preview's scale
    (root / "images").mkdir()
    (root / "images" / "A1.png").symlink_to(image)
    ids = [f"{int(round(x))}x{int(round(y))}" for x, y in zip(table["x"], table["y"])]
    centres = np.column_stack([table["pixel_x"], table["pixel_y"]]) * scale
    tile_slide_at(root / "images" / "A1.png", centres, root / "tiles" / "A1.h5", tile_size_um=150, tile_ids=ids,
                  config=TilingConfig(mpp=mpp, target_mpp=mpp, normalize=False))
    store = TileStore(root / "tiles" / "A1.h5")
    stats = tile_stats(store.read_tiles(np.arange(len(store))))
    feats = project((stats - stats.mean(0)) / stats.std(0))
    write_feature_store(root / "features" / "colour-texture-projection" / "A1.h5", "A1", feats, store.coords_px,
                        store.tile_ids)
    (root / "labels").mkdir()
    (root / "labels" / "A1_labeled_coordinates.tsv").symlink_to(labels)
    return root


def test_spot_labels_give_heldout_accuracy_above_chance(section, tmp_path):
    m = train_tile_classifier(section / "features" / "colour-texture-projection",
                              [section / "labels" / "A1_labeled_coordinates.tsv"], tmp_path / "clf", merge=OTHER)
    assert m["n_slides"] == 1 and m["grouping"].startswith("5 spatial blocks")
    assert m["class_counts"]["invasive cancer"] == 284 and m["n_tiles"] == 348
    # balanced accuracy of a chance classifier is 0.5 whatever the class imbalance; the same run on
    # shuffled labels is the chance level measured here
    table = pd.read_csv(section / "labels" / "A1_labeled_coordinates.tsv", sep="\t")
    table["label"] = np.random.default_rng(0).permutation(table["label"].to_numpy())
    (tmp_path / "shuffled").mkdir()
    table.to_csv(tmp_path / "shuffled" / "A1_labeled_coordinates.tsv", sep="\t", index=False)
    null = train_tile_classifier(section / "features" / "colour-texture-projection",
                                 [tmp_path / "shuffled" / "A1_labeled_coordinates.tsv"], tmp_path / "null", merge=OTHER)
    assert m["heldout_balanced_accuracy"] > 0.58, m
    assert m["heldout_balanced_accuracy"] > null["heldout_balanced_accuracy"] + 0.05, (m, null)
    conf = np.array(m["confusion"]["matrix"])
    assert conf.sum() == m["n_tiles"] and np.trace(conf) / conf.sum() == pytest.approx(m["heldout_accuracy"])
    clf = load_tile_classifier(tmp_path / "clf")
    assert clf.classes == ["invasive cancer", "other"]
    assert (tmp_path / "clf" / "confusion.png").stat().st_size > 1000


def test_filter_writes_store_with_only_kept_class(section, tmp_path):
    from emo.slides import TileStore

    clf_dir = tmp_path / "clf"
    res = subprocess.run([sys.executable, "-m", "emo", "train-classifier", str(section / "labels" / "A1_labeled_coordinates.tsv"),
                          "--features", str(section / "features" / "colour-texture-projection"), "--out", str(clf_dir),
                          *sum((["--merge", f"{k}=other"] for k in OTHER), [])], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "held-out accuracy" in res.stdout
    res = subprocess.run([sys.executable, "-m", "emo", "filter", str(section / "tiles"), "--classifier", str(clf_dir),
                          "--keep", "invasive cancer", "--out", str(tmp_path / "roi")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    clf = load_tile_classifier(clf_dir)
    feats = h5py.File(section / "features" / "colour-texture-projection" / "A1.h5", "r")["features"][...]
    pred = clf.predict_classes(feats)
    original, kept = TileStore(section / "tiles" / "A1.h5"), TileStore(tmp_path / "roi" / "A1.h5")
    want = np.flatnonzero(pred == "invasive cancer")
    assert 0 < len(kept) == len(want) < len(original)
    assert list(kept.tile_ids) == [original.tile_ids[i] for i in want]
    np.testing.assert_array_equal(kept.coords_px, original.coords_px[want])
    assert kept.attrs["n_dropped_classifier"] == len(original) - len(want)
    np.testing.assert_array_equal(kept.read_tiles([0]), original.read_tiles([want[0]]))
    with pytest.raises(EmoError, match=r"--keep tumour: not a class"):
        from emo.training.tile_classifier import filter_tile_stores

        filter_tile_stores(clf_dir, section / "tiles", tmp_path / "x", ["tumour"])


def test_geojson_polygons_label_tiles_by_centre(tmp_path):
    geo = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]]}},
        {"type": "Feature", "properties": {"classification": {"name": "Stroma"}},
         "geometry": {"type": "Polygon", "coordinates": [[[200, 0], [300, 0], [300, 100], [200, 100], [200, 0]]]}},
    ]}
    (tmp_path / "S.geojson").write_text(json.dumps(geo))
    centres = np.array([[50, 50], [99, 1], [150, 50], [250, 99], [301, 50]])
    assert list(labels_from_geojson(tmp_path / "S.geojson", centres)) == ["Tumor", "Tumor", None, "Stroma", None]
    (tmp_path / "bad.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(EmoError, match="no polygons with a class name"):
        labels_from_geojson(tmp_path / "bad.geojson", centres)
