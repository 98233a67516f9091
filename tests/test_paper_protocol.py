"""Paper protocol: Keras early stopping, end-to-end tiny run on CPU, checkpoints kept, genes resumed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from emo.errors import EmoError
from emo.training.loop import CheckpointKeeper, EarlyStopping
from emo.models.paper_cnn import load_gene_model
from emo.training.paper import PaperProtocolConfig
from training_cohort import cmu_tile_stores, write_targets


pytestmark = pytest.mark.slow  # trains per-gene CNNs on CPU


def _stop_epoch(losses, min_delta, patience):
    stopper = EarlyStopping(min_delta, patience)
    for epoch, loss in enumerate(losses):
        if stopper.step(loss):
            return epoch, stopper.best
    return None, stopper.best


def test_early_stopping_keras_semantics():
    # improvements smaller than min_delta do not count and do not move `best`
    losses = [1.0, 0.99, 0.998, 0.996, 0.5, 0.4999, 0.4985, 0.4972, 0.3]
    assert _stop_epoch(losses, 0.003, 3) == (7, 0.5)
    # a slow steady decrease (0.0005 per epoch) stops after `patience` epochs although the loss still falls
    assert _stop_epoch([1 - 0.0005 * i for i in range(20)], 0.003, 5) == (5, 1.0)
    # 0.002 per epoch: every second epoch beats best - min_delta, so it never waits 5 epochs
    assert _stop_epoch([1 - 0.002 * i for i in range(20)], 0.003, 5)[0] is None
    assert _stop_epoch([1 - 0.004 * i for i in range(20)], 0.003, 5) == (None, pytest.approx(1 - 0.004 * 19))


def test_config_defaults_are_the_papers():
    c = PaperProtocolConfig()
    assert (c.lr, c.beta1, c.beta2, c.eps, c.weight_decay) == (1e-6, 0.9, 0.999, 1e-7, 0.0)
    assert (c.batch_size, c.steps_per_epoch, c.tuning_batches, c.max_epochs) == (32, 150, 313, 500)
    assert (c.min_delta, c.patience, c.keep_best, c.keep_random, c.prefetch_batches) == (0.003, 80, 10, 10, 2)
    assert (c.input_size, c.backbone) == (299, "torchvision:inception_v3")
    with pytest.raises(ValueError):
        PaperProtocolConfig(batch_sise=4)


def test_checkpoint_keeper_keeps_best_and_random(tmp_path):
    import torch

    keeper = CheckpointKeeper(tmp_path, keep_best=3, keep_random=2, seed=0)
    losses = np.random.default_rng(0).random(40)
    for epoch, loss in enumerate(losses):
        keeper.add(epoch, float(loss), {"w": torch.tensor([float(epoch)])})
    best = set(np.argsort(losses)[:3].tolist())
    assert set(keeper.best()) == best and len(keeper.random) == 2
    on_disk = {int(p.stem.split("_")[1]) for p in tmp_path.glob("epoch_*.safetensors")}
    assert on_disk == best | set(keeper.random)


@pytest.fixture(scope="module")
def paper_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    rng = np.random.default_rng(0)
    slides = cmu_tile_stores(root, 5, 6, rng)
    y = rng.normal(size=(5, 3))
    write_targets(root / "targets.h5ad", y, ["ESR1", "MKI67", "ERBB2"], slides,
                  ["train", "train", "train", "tune", "tune"])
    return root


def test_paper_protocol_end_to_end_keeps_checkpoints_and_resumes(paper_inputs, tmp_path):
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "emo", "train", "--protocol", "paper", "--tiles", str(paper_inputs / "tiles"),
           "--targets", str(paper_inputs / "targets.h5ad"), "--out", str(out), "--genes", "ESR1,MKI67",
           "--max-epochs", "5", "--patience", "1", "--min-delta", "1e6", "--steps-per-epoch", "3", "--tuning-batches", "2", "--batch-size", "4",
           "--input-size", "75", "--keep-best", "1", "--keep-random", "1", "--weights", "none", "--lr", "1e-4",
           "--backbone", "timm:resnet10t"]  # a light CNN keeps the CPU test short; Inception V3 is checked below
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "paper_cnn" and manifest["genes"] == ["ESR1", "MKI67"]
    assert manifest["protocol"]["batch_size"] == 4 and manifest["protocol"]["lr"] == 1e-4
    for gene in ("ESR1", "MKI67"):
        folder = out / "genes" / gene
        done = json.loads((folder / "done.json").read_text())
        history = pd.read_csv(folder / "history.csv")
        assert len(history) == done["epochs"] == 2 and done["stopped_early"]  # epoch 1 cannot beat best - 1e6
        best = set(history.sort_values(["tune_loss", "epoch"])["epoch"][:1])
        assert set(done["kept_best"]) == best and len(done["kept_random"]) == 1
        on_disk = {int(p.stem.split("_")[1]) for p in folder.glob("epoch_*.safetensors")}
        assert on_disk == best | set(done["kept_random"])
        assert done["best_epoch"] == int(history["tune_loss"].idxmin())
    model = load_gene_model(out, "ESR1")
    import torch

    with torch.no_grad():
        assert model(torch.zeros(2, 3, 75, 75)).shape == (2, 1)

    # EMO-spatial from the per-gene CNNs, read from the tile stores' pixels
    import anndata

    from emo.models.inputs import to_model_input
    from emo.prediction import predict
    from emo.slides import TileStore

    predict(out, None, tmp_path / "pred", tiles=paper_inputs / "tiles", chunk_tiles=4)
    ad = anndata.read_h5ad(tmp_path / "pred" / "spatial" / "S0.h5ad")
    store = TileStore(paper_inputs / "tiles" / "S0.h5")
    assert list(ad.var_names) == ["ESR1", "MKI67"] and list(ad.obs_names) == list(store.tile_ids)
    x = to_model_input(store.read_tiles(np.arange(len(store))), 75, model[0].mean, model[0].std)
    with torch.no_grad():
        np.testing.assert_allclose(ad[:, "ESR1"].X[:, 0], model(x)[:, 0].numpy(), rtol=1e-4, atol=1e-5)
    assert anndata.read_h5ad(tmp_path / "pred" / "average.h5ad").shape == (5, 2)

    # re-run (in process): the finished gene is skipped untouched, the one without done.json is retrained
    from emo.training.paper import train_paper_protocol

    weights = {p.name: p.read_bytes() for p in (out / "genes" / "MKI67").glob("epoch_*.safetensors")}
    (out / "genes" / "MKI67" / "done.json").unlink()
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "genes" / "ESR1").iterdir()}
    train_paper_protocol(paper_inputs / "tiles", paper_inputs / "targets.h5ad", out, "ESR1,MKI67",
                         PaperProtocolConfig(**manifest["protocol"]))
    assert {p.name: p.stat().st_mtime_ns for p in (out / "genes" / "ESR1").iterdir()} == stamp
    assert json.loads((out / "genes" / "MKI67" / "done.json").read_text())["epochs"] == 2
    # the same seed retrains bitwise-identical checkpoints (the job owns its randomness)
    assert {p.name: p.read_bytes() for p in (out / "genes" / "MKI67").glob("epoch_*.safetensors")} == weights


def test_paper_cnn_is_inception_v3_with_one_linear_output():
    import torch

    from emo.models.paper_cnn import paper_cnn

    config = PaperProtocolConfig(weights="none", input_size=75)
    model, backbone = paper_cnn(config.backbone, config.weights, config.seed)
    assert type(backbone.model).__name__ == "Inception3" and backbone.dim == 2048
    assert isinstance(model[-1], torch.nn.Linear) and (model[-1].in_features, model[-1].out_features) == (2048, 1)
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 75, 75)).shape == (1, 1)


def test_paper_protocol_bad_input(paper_inputs, tmp_path):
    from emo.training.paper import train_paper_protocol

    with pytest.raises(EmoError, match=r"gene\(s\) NOPE not in targets"):
        train_paper_protocol(paper_inputs / "tiles", paper_inputs / "targets.h5ad", tmp_path, "NOPE")
    with pytest.raises(EmoError, match=r"no tile stores"):
        train_paper_protocol(tmp_path, paper_inputs / "targets.h5ad", tmp_path, "ESR1")
