"""`emo predict`: EMO-spatial h5ad round-trips, EMO-average is the tile mean, runs resume identically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest

import emo.prediction.slides as predict_mod
from emo.errors import EmoError
from emo.prediction import predict
from emo.training import train_model
from scverse_plots import assert_scanpy_and_squidpy_plot
from training_cohort import make_cohort, write_feature_store


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import require_data

    root = tmp_path_factory.mktemp("pred")
    cohort = make_cohort(root, require_data("her2st/images/B4.jpg"), n_slides=8, tiles_per_slide=20,
                         splits=(0.5, 0.25, 0.25))
    cohort["model"] = train_model(cohort["feature_dir"], cohort["targets"], root / "model")
    return cohort


def test_spatial_h5ad_round_trips_and_average_is_tile_mean(trained, tmp_path):
    out = predict(trained["model"], trained["feature_dir"], tmp_path, genes="PLANT0", tiles=trained["tile_dir"],
                  chunk_tiles=7)
    avg = anndata.read_h5ad(out / "average.h5ad")
    csv = pd.read_csv(out / "average.csv", index_col=0)
    assert list(avg.obs_names) == trained["slides"] and list(avg.var_names) == trained["genes"]
    np.testing.assert_array_equal(csv.to_numpy(dtype=np.float32), avg.X)
    for i, slide_id in enumerate(trained["slides"]):
        ad = anndata.read_h5ad(out / "spatial" / f"{slide_id}.h5ad")
        with h5py.File(trained["tile_dir"] / f"{slide_id}.h5", "r") as f:
            coords_px, coords_um, size = f["coords_px"][...], f["coords_um"][...], f.attrs["tile_size_level0"]
            tile_ids = [t.decode() for t in f["tile_id"][...]]
        assert ad.X.dtype == np.float32 and ad.shape == (len(coords_px), len(trained["genes"]))
        assert list(ad.obs_names) == tile_ids
        np.testing.assert_array_equal(ad.obs[["x_px", "y_px"]].to_numpy(), coords_px)
        np.testing.assert_allclose(ad.obs[["x_um", "y_um"]].to_numpy(), coords_um)
        np.testing.assert_allclose(ad.obsm["spatial"], coords_px + size / 2)
        np.testing.assert_allclose(avg.X[i], ad.X.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-6)
        assert ad.uns["emo"]["slide_id"] == slide_id
    assert_scanpy_and_squidpy_plot(ad, "PLANT0")
    sf = ad.uns["spatial"][slide_id]["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(size)
    assert ad.uns["spatial"][slide_id]["images"]["lowres"].shape[1] <= 600
    ad = anndata.read_h5ad(out / "spatial" / f"{trained['slides'][0]}.h5ad")
    from emo.models import load

    direct = load(trained["model"]).predict(
        h5py.File(trained["feature_dir"] / f"{trained['slides'][0]}.h5", "r")["features"][...])
    np.testing.assert_array_equal(ad.X, direct)
    geo = json.loads((out / "geojson" / f"{trained['slides'][0]}.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == ad.n_obs
    first = geo["features"][0]
    x, y = ad.obs.iloc[0][["x_px", "y_px"]]
    assert first["geometry"]["coordinates"][0][2] == [x + size, y + size]
    assert first["properties"]["measurements"]["PLANT0"] == pytest.approx(float(ad[0, "PLANT0"].X[0, 0]))
    _check_qupath_tiles(geo, ad, size, out / "geojson" / f"{trained['slides'][0]}.geojson")
    from PIL import Image

    png = Image.open(out / "heatmaps" / trained["slides"][0] / "PLANT0.png")
    assert png.size[0] > 300 and np.asarray(png).std() > 10


def _check_qupath_tiles(geo: dict, ad: anndata.AnnData, size: float, path) -> None:
    """What QuPath's GeoJSON importer needs (UUID ids, objectType, classification name + RGB colour,
    measurements) and a round trip of the geometry through the tiling stage's ROI reader."""
    import uuid

    from emo.slides.roi import load_roi

    ids = [f["id"] for f in geo["features"]]
    assert len(set(ids)) == len(ids) and all(str(uuid.UUID(i)) == i for i in ids)
    props = [f["properties"] for f in geo["features"]]
    assert {p["objectType"] for p in props} == {"tile"}
    values = ad[:, "PLANT0"].X.ravel()
    classes = [p["classification"]["name"] for p in props]
    names = [f"PLANT0: {third} third in this slide" for third in ("bottom", "middle", "top")]
    assert set(classes) == set(names)
    assert all(len(p["classification"]["color"]) == 3 for p in props)
    high, low = values[np.array(classes) == names[2]], values[np.array(classes) == names[0]]
    assert high.min() >= low.max()  # classes are tertiles of the predicted value
    w, h = ad.obs[["x_px", "y_px"]].to_numpy().max(axis=0) + size
    roi = load_roi(path, (int(w), int(h)))
    centres = ad.obsm["spatial"]
    assert roi.contains(centres[:, 0], centres[:, 1]).all()
    import shapely

    boxes = shapely.union_all([shapely.box(x, y, x + size, y + size) for x, y in ad.obs[["x_px", "y_px"]].to_numpy()])
    assert roi.geometry.symmetric_difference(boxes).area < 1e-6 * boxes.area  # same region as the tiles
    assert not roi.contains(np.array([-size]), np.array([-size])).any()


def test_geojson_without_genes_measures_the_best_tuned_genes_and_cohort_classes(trained, tmp_path):
    out = predict(trained["model"], trained["feature_dir"], tmp_path, classes="cohort")
    tuning = pd.read_csv(trained["model"] / "tuning.csv").sort_values("tune_spearman", ascending=False)
    best = tuning["gene"].head(5).tolist()
    values, names = [], []
    for slide_id in trained["slides"]:
        geo = json.loads((out / "geojson" / f"{slide_id}.geojson").read_text())
        props = [f["properties"] for f in geo["features"]]
        assert all(list(p["measurements"]) == best for p in props)
        values += [p["measurements"][best[0]] for p in props]
        names += [p["classification"]["name"] for p in props]
    assert not (out / "heatmaps").exists()  # heatmaps stay for chosen genes only
    values, names = np.array(values), np.array(names)
    # thirds of all slides' tiles together, named as such
    top, bottom = values[names == f"{best[0]}: top third in the cohort"], values[names == f"{best[0]}: bottom third in the cohort"]
    assert len(top) == pytest.approx(len(values) / 3, abs=2) and top.min() >= bottom.max()
    with pytest.raises(EmoError, match="classes: Input should be 'slide' or 'cohort'"):
        predict(trained["model"], trained["feature_dir"], tmp_path, classes="patient")


def test_tile_size_note_names_both_sizes():
    from emo.prediction.slides import tile_size_note

    spot = {"kind": "spot_ridge", "config": {"tile_sizes_um": [448.0, 224.0]}}
    assert tile_size_note(Path("spot"), spot, {271.0}) == (
        "spot was trained on 224 µm tiles but predicts 271 µm tiles here; re-tile with --tile-um 224 to match")
    assert tile_size_note(Path("m"), {"tile_geometry": {"tile_size_um": 271.0}}, {271.0, 272.0}) is None


def test_predict_streams_in_chunks(trained, tmp_path, monkeypatch):
    from emo.features import FeatureStore

    sizes, real = [], FeatureStore.read
    monkeypatch.setattr(FeatureStore, "read", lambda self, rows=None: sizes.append(len(real(self, rows))) or real(self, rows))
    predict(trained["model"], trained["feature_dir"], tmp_path, chunk_tiles=6)
    assert max(sizes) == 6 and sum(sizes) == 20 * len(trained["slides"])


def _content(out, slides):
    data = {}
    for s in slides:
        ad = anndata.read_h5ad(out / "spatial" / f"{s}.h5ad")
        data[s] = (ad.X.copy(), ad.obs.copy(), ad.obsm["spatial"].copy(), dict(ad.uns["emo"]))
    return data, (out / "average.csv").read_bytes(), (out / "geojson" / f"{slides[-1]}.geojson").read_bytes()


class _Crash(Exception):
    """Stands for a kill in the middle of a slide."""


def test_interrupted_run_resumes_identically(trained, tmp_path, monkeypatch):
    predict(trained["model"], trained["feature_dir"], tmp_path / "a", genes="PLANT1")
    calls, real, crash = [], predict_mod._write_spatial, [1]

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and crash:
            raise _Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_mod, "_write_spatial", crash_on_third)
    with pytest.raises(_Crash):
        predict(trained["model"], trained["feature_dir"], tmp_path / "b", genes="PLANT1")
    assert len(list((tmp_path / "b" / "spatial").glob("*.h5ad"))) == 2
    calls.clear()
    crash.clear()
    predict(trained["model"], trained["feature_dir"], tmp_path / "b", genes="PLANT1")
    assert len(calls) == len(trained["slides"]) - 2  # finished slides skipped
    a, b = _content(tmp_path / "a", trained["slides"]), _content(tmp_path / "b", trained["slides"])
    assert a[1] == b[1] and a[2] == b[2]
    for s in trained["slides"]:
        np.testing.assert_array_equal(a[0][s][0], b[0][s][0])
        pd.testing.assert_frame_equal(a[0][s][1], b[0][s][1])
        np.testing.assert_array_equal(a[0][s][2], b[0][s][2])
        assert a[0][s][3]["model_hash"] == b[0][s][3]["model_hash"]


def test_bad_input_is_one_clear_error(trained, tmp_path):
    with pytest.raises(EmoError, match=r"gene\(s\) NOPE not predicted by this model"):
        predict(trained["model"], trained["feature_dir"], tmp_path, genes="NOPE")
    tiles = tmp_path / "tiles"
    shutil.copytree(trained["tile_dir"], tiles)
    shutil.copy(tiles / "S000.h5", tiles / "EXTRA.h5")
    with pytest.raises(EmoError, match=r"1 slide\(s\) have no features \(e.g. EXTRA\)"):
        predict(trained["model"], trained["feature_dir"], tmp_path, tiles=tiles)
    other = tmp_path / "features" / "resnet18"
    write_feature_store(other / "S000.h5", "S000", np.zeros((2, 512), np.float32), np.zeros((2, 2)), ["a", "b"],
                        backbone="resnet18")
    with pytest.raises(EmoError, match=r"features are resnet18 dim 512 but model .* trained on colour-texture-projection dim 48"):
        predict(trained["model"], other, tmp_path)


def test_outputs_of_another_model_are_redone(trained, tmp_path):
    predict(trained["model"], trained["feature_dir"], tmp_path)
    small = train_model(trained["feature_dir"], trained["targets"], tmp_path / "small", genes="PLANT0,PLANT1")
    predict(small, trained["feature_dir"], tmp_path)
    assert anndata.read_h5ad(tmp_path / "spatial" / "S000.h5ad").var_names.tolist() == ["PLANT0", "PLANT1"]
    assert anndata.read_h5ad(tmp_path / "average.h5ad").shape == (len(trained["slides"]), 2)


@pytest.mark.slow
def test_cli_train_then_predict(trained, tmp_path):
    import subprocess
    import sys

    emo = [sys.executable, "-m", "emo"]
    res = subprocess.run([*emo, "train", "--features", str(trained["feature_dir"]), "--targets", str(trained["targets"]),
                          "--out", str(tmp_path / "m"), "--genes", "PLANT0,PLANT1,NOISE0", "--level", "slide"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([*emo, "predict", "--model", str(tmp_path / "m"), "--features", str(trained["feature_dir"]),
                          "--out", str(tmp_path / "p"), "--genes", "PLANT0", "--tiles", str(trained["tile_dir"])],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert pd.read_csv(tmp_path / "p" / "average.csv", index_col=0).columns.tolist() == ["PLANT0", "PLANT1", "NOISE0"]
    assert len(list((tmp_path / "p" / "heatmaps").glob("*/PLANT0.png"))) == len(trained["slides"])
    res = subprocess.run([*emo, "predict", "--model", str(tmp_path / "m"), "--features", str(trained["feature_dir"]),
                          "--out", str(tmp_path / "p"), "--panel", "pam50"], capture_output=True, text=True)
    assert res.returncode == 2 and "panel 'pam50': none of its genes" in res.stderr
