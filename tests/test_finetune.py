"""One fine-tuned network for all genes: CLI end to end on CPU, EMO-spatial from pixels, bitwise
reproducible and resumable with a fixed seed, tile-level targets, HED colour jitter."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata
import numpy as np
import pandas as pd
import pytest

from emo.errors import EmoError
from emo.models.finetune_cnn import load_finetune_model
from emo.training.finetune import FinetuneConfig, train_finetune
from training_cohort import cmu_tile_stores, write_targets

pytestmark = pytest.mark.slow  # fine-tunes a CNN on CPU


TINY = dict(backbone="timm:resnet10t", weights="none", input_size=32, batch_size=4, steps_per_epoch=2,
            tuning_batches=1, max_epochs=3, patience=10, lr=1e-3)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    slides = cmu_tile_stores(root, 5, 6, rng)
    write_targets(root / "targets.h5ad", rng.normal(size=(5, 4)), ["ESR1", "MKI67", "ERBB2", "GRB7"], slides,
                  ["train", "train", "train", "tune", "tune"])
    return root


def test_finetune_cli_end_to_end_and_predict_from_tiles(inputs, tmp_path):
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "emo", "train", "--protocol", "finetune", "--tiles", str(inputs / "tiles"),
           "--targets", str(inputs / "targets.h5ad"), "--out", str(out), "--max-epochs", "2", "--steps-per-epoch", "2",
           "--tuning-batches", "1", "--batch-size", "4", "--input-size", "32", "--weights", "none", "--lr", "1e-3",
           "--backbone", "timm:resnet10t", "--components", "2", "--hed-jitter", "0.05"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "finetune_cnn" and manifest["genes"] == ["ESR1", "MKI67", "ERBB2", "GRB7"]
    assert manifest["protocol"]["n_components"] == 2 and manifest["protocol"]["hed_jitter"] == 0.05
    done = json.loads((out / "done.json").read_text())
    history = pd.read_csv(out / "history.csv")
    assert len(history) == done["epochs"] == 2 and done["best_epoch"] == int(history["tune_loss"].idxmin())
    assert [p.name for p in out.glob("epoch_*.safetensors")] == [done["best_checkpoint"]]

    import anndata

    from emo.prediction import predict
    from emo.slides import TileStore

    model = load_finetune_model(out)
    predict(out, None, tmp_path / "pred", tiles=inputs / "tiles", chunk_tiles=4)
    ad = anndata.read_h5ad(tmp_path / "pred" / "spatial" / "S0.h5ad")
    store = TileStore(inputs / "tiles" / "S0.h5")
    expected = model.predict_tiles(store.read_tiles(np.arange(len(store))))
    assert ad.shape == (len(store), 4) and list(ad.obs_names) == list(store.tile_ids)
    np.testing.assert_allclose(ad.X, expected, rtol=1e-4, atol=1e-5)
    # rank-2 head: every tile's 4 genes lie in a 2-d affine subspace of expression
    centred = (expected - model.net.y_mean.numpy()) / model.net.y_std.numpy()
    assert np.linalg.matrix_rank(centred, tol=1e-4) <= 2


def test_finetune_is_bitwise_reproducible_and_resumes_to_the_same_weights(inputs, tmp_path):
    tiles, targets = inputs / "tiles", inputs / "targets.h5ad"
    cfg = FinetuneConfig(**TINY, hed_jitter=0.1, seed=7)
    a = train_finetune(tiles, targets, tmp_path / "a", None, cfg)
    b = train_finetune(tiles, targets, tmp_path / "b", None, cfg)
    assert (a / "state" / "last.safetensors").read_bytes() == (b / "state" / "last.safetensors").read_bytes()
    other = train_finetune(tiles, targets, tmp_path / "seed8", None, cfg.model_copy(update={"seed": 8}))
    assert (a / "state" / "last.safetensors").read_bytes() != (other / "state" / "last.safetensors").read_bytes()

    # interrupted after 2 epochs (done.json never written), then resumed to 3: the same weights
    c = train_finetune(tiles, targets, tmp_path / "c", None, cfg.model_copy(update={"max_epochs": 2}))
    (c / "done.json").unlink()
    train_finetune(tiles, targets, c, None, cfg)
    assert len(pd.read_csv(c / "history.csv")) == 3
    assert (a / "state" / "last.safetensors").read_bytes() == (c / "state" / "last.safetensors").read_bytes()


def test_tile_level_targets_and_bad_input(inputs, tmp_path):
    from emo.slides import TileStore

    ids, slides, split = [], [], []
    for i in range(5):
        store = TileStore(inputs / "tiles" / f"S{i}.h5")
        ids += list(store.tile_ids)
        slides += [f"S{i}"] * len(store)
        split += ["tune" if j % 3 == 0 else "train" for j in range(len(store))]
    y = np.random.default_rng(1).normal(size=(len(ids), 2))
    path = write_targets(tmp_path / "tiles.h5ad", y, ["ESR1", "MKI67"], slides, split, obs_extra={"tile_id": ids},
                         index=[f"{s}:{t}" for s, t in zip(slides, ids)])
    out = train_finetune(inputs / "tiles", path, tmp_path / "m", None, FinetuneConfig(**TINY), level="tile")
    assert json.loads((out / "manifest.json").read_text())["level"] == "tile"
    bad = write_targets(tmp_path / "bad.h5ad", np.full((5, 1), np.nan), ["ESR1"], [f"S{i}" for i in range(5)],
                        ["train", "train", "train", "tune", "tune"])
    with pytest.raises(EmoError, match="NaN"):
        train_finetune(inputs / "tiles", bad, tmp_path / "bad", None, FinetuneConfig(**TINY))


def test_hed_jitter_is_seeded_and_keeps_the_tile_at_zero_sigma(shared_data):
    from PIL import Image

    from emo.training.datasets import hed_jitter

    tile = np.asarray(Image.open(shared_data("tiles/high-nuclei-score-level0.png")).convert("RGB"))[:64, :64]
    same = hed_jitter(tile, 0.0, np.random.default_rng(0))
    diff = np.abs(same.astype(int) - tile.astype(int))
    assert diff.mean() < 1 and diff.max() <= 5  # rgb2hed → hed2rgb round trip, rounded to uint8
    a = hed_jitter(tile, 0.3, np.random.default_rng(1))
    assert np.array_equal(a, hed_jitter(tile, 0.3, np.random.default_rng(1)))
    assert np.abs(a.astype(int) - tile.astype(int)).mean() > 2


def test_spatial_train_finetune_cli_on_a_real_section(shared_data, tmp_path):
    """`emo spatial train --finetune` labels each her2st spot tile with its own spot; `emo spatial
    predict` reads the fine-tuned network back and writes spots × genes."""
    data = shared_data("her2st")
    cfg = tmp_path / "ft.json"
    cfg.write_text(json.dumps({**TINY, "n_components": 2}))
    run = [sys.executable, "-m", "emo", "spatial"]
    res = subprocess.run(run + ["train", "--data", str(data), "--sections", "C3", "--genes", "ERBB2,GRB7,MKI67",
                                "--out", str(tmp_path / "m"), "--finetune", "--finetune-config", str(cfg),
                                "--cache", str(tmp_path / "cache")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["kind"] == "finetune_cnn" and manifest["level"] == "tile"
    res = subprocess.run(run + ["predict", "--model", str(tmp_path / "m"), "--data", str(data), "--sections", "C3",
                                "--out", str(tmp_path / "p")], capture_output=True, text=True)
    assert res.returncode == 2 and "C3" in res.stderr and "hold them out" in res.stderr  # trained on it

    # A new section with an image and spots but no counts: C3's pixels under another name.
    new = tmp_path / "new"
    (new / "images").mkdir(parents=True)
    (new / "spots").mkdir()
    (new / "images" / "X3.jpg").symlink_to(data / "images" / "C3.jpg")
    (new / "spots" / "X3.tsv").symlink_to(data / "spots" / "C3.tsv")
    for name in ("image_dims.json", "mpp_estimate.json"):
        (new / name).write_text(json.dumps({"X3": json.loads((data / name).read_text())["C3"]}))
    res = subprocess.run(run + ["predict", "--model", str(tmp_path / "m"), "--data", str(new), "--sections", "X3",
                                "--out", str(tmp_path / "p"), "--cache", str(tmp_path / "cache")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    pred = pd.read_csv(tmp_path / "p" / "X3.csv", index_col=0)
    spots = anndata.read_h5ad(tmp_path / "p" / "X3.h5ad")
    counts = pd.read_csv(data / "counts" / "C3.tsv.gz", sep="\t", index_col=0, usecols=[0])
    assert list(pred.columns) == ["ERBB2", "GRB7", "MKI67"] and set(counts.index) <= set(pred.index)  # every spot of spots/, measured or not
    assert list(spots.obs_names) == list(pred.index) and "X3" in spots.uns["spatial"]
    assert np.isfinite(pred.to_numpy()).all() and pred.std().min() > 0
