"""All-gene heads recover planted signal, match an independent ridge reference, and refuse bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata
import numpy as np
import pytest
from scipy.stats import spearmanr

from emo.errors import EmoError
from emo.models import MLPConfig, fit_ridge_path, load
from emo.models.model import check_features
from emo.training import train_model
from emo.features import open_feature_stores
from training_cohort import make_cohort, write_feature_store, write_targets


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from conftest import require_data

    image = require_data("her2st/images/B4.jpg")
    return make_cohort(tmp_path_factory.mktemp("cohort"), image, n_slides=110, splits=(0.45, 0.2, 0.35))


def _validation_rho(cohort, model_dir):
    model = load(model_dir)
    stores = open_feature_stores(cohort["feature_dir"])
    ad = anndata.read_h5ad(cohort["targets"])
    val = (ad.obs["split"] == "validation").to_numpy()
    pred = np.stack([model.predict(stores[s].read()).mean(axis=0) for s in ad.obs["slide_id"][val]])
    y = ad[val, model.genes].X
    return {g: spearmanr(pred[:, i], y[:, i])[0] for i, g in enumerate(model.genes)}


@pytest.mark.parametrize("head", ["ridge", "mlp"])
def test_heads_recover_planted_genes_and_not_noise(cohort, tmp_path, head):
    cfg = MLPConfig(hidden=64, max_epochs=60, patience=8, batch_size=8, tiles_per_slide=24, lr=3e-3)
    model_dir = train_model(cohort["feature_dir"], cohort["targets"], tmp_path / head, head=head, mlp_config=cfg)
    rho = _validation_rho(cohort, model_dir)
    planted = np.array([rho[g] for g in cohort["planted"]])
    noise = np.array([rho[g] for g in cohort["noise"]])
    assert planted.min() > 0.6, planted
    assert np.abs(noise).mean() < 0.25 and np.abs(noise).max() < 0.55, noise
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["kind"] == head and manifest["genes"] == cohort["genes"]
    assert manifest["backbone"]["name"] == "colour-texture-projection" and manifest["backbone"]["dim"] == 48
    assert manifest["n_train"] == 49 and manifest["n_tune"] == 22
    assert set(manifest["cohort_offsets"]) == {"her2st"}
    tuning = __import__("pandas").read_csv(model_dir / "tuning.csv")
    assert list(tuning["gene"]) == cohort["genes"] and (model_dir / "tuning.png").stat().st_size > 1000


def _validation_r2(cohort, model_dir):
    from sklearn.metrics import r2_score

    model = load(model_dir)
    stores = open_feature_stores(cohort["feature_dir"])
    ad = anndata.read_h5ad(cohort["targets"])
    val = (ad.obs["split"] == "validation").to_numpy()
    pred = np.stack([model.predict(stores[s].read()).mean(axis=0) for s in ad.obs["slide_id"][val]])
    y = np.asarray(ad[val, model.genes].X)
    return {g: r2_score(y[:, i], pred[:, i]) for i, g in enumerate(model.genes)}


def test_permuted_labels_null_baseline_loses_the_planted_signal(cohort, tmp_path):
    """The null head sees the same features with slide labels shuffled (seeded). Its planted genes
    explain no held-out variance (R²pred ≤ ~0). Spearman ρ is no use here: a chance slope along a
    strong image signal, however small, ranks slides in that signal's order, so |ρ| can be large."""
    real = _validation_r2(cohort, train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "real"))
    null_dir = train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "null", permute_labels=True, seed=3)
    null = _validation_r2(cohort, null_dir)
    planted_real = np.array([real[g] for g in cohort["planted"]])
    planted_null = np.array([null[g] for g in cohort["planted"]])
    assert planted_real.min() > 0.6 and planted_null.max() < 0.1, (planted_real, planted_null)
    manifest = json.loads((null_dir / "manifest.json").read_text())
    assert manifest["permuted_labels"] is True
    again = train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "null2", permute_labels=True, seed=3)
    assert (again / "weights.safetensors").read_bytes() == (null_dir / "weights.safetensors").read_bytes()


def _slide_means(cohort, split):
    stores = open_feature_stores(cohort["feature_dir"])
    ad = anndata.read_h5ad(cohort["targets"])
    rows = (ad.obs["split"] == split).to_numpy()
    x = np.stack([stores[s].mean() for s in ad.obs["slide_id"][rows]])
    return x, np.asarray(ad.X[rows], dtype=np.float64)


def test_ridge_per_gene_alpha_matches_sklearn(cohort):
    """Independent reference: sklearn Ridge per gene and per alpha on StandardScaler'd features."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    x_tr, y_tr = _slide_means(cohort, "train")
    x_tu, y_tu = _slide_means(cohort, "tune")
    x_va, _ = _slide_means(cohort, "validation")
    fit = fit_ridge_path(x_tr, y_tr, x_tu, y_tu)
    scaler = StandardScaler().fit(x_tr)
    z_tr, z_tu, z_va = scaler.transform(x_tr), scaler.transform(x_tu), scaler.transform(x_va)
    chosen = []
    for g in range(y_tr.shape[1]):
        mse = [np.mean((Ridge(alpha=a).fit(z_tr, y_tr[:, g]).predict(z_tu) - y_tu[:, g]) ** 2) for a in fit.alphas]
        chosen.append(fit.alphas[int(np.argmin(mse))])
        ref = Ridge(alpha=chosen[-1]).fit(z_tr, y_tr[:, g]).predict(z_va)
        ours = x_va @ fit.weight[:, g].astype(np.float64) + fit.bias[g]
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_array_equal(fit.alpha, chosen)
    assert len(set(chosen)) > 1  # penalties really differ between planted and noise genes


def test_tile_level_mode_learns_per_tile_targets(cohort, tmp_path):
    """Per-tile targets aligned by tile_id; held-out slides' tiles are predicted."""
    w = cohort["planted_w"][0]
    ids, slides, y, split = [], [], [], []
    for (sid, tids, stats, _), sp in zip(cohort["tile_rows"], cohort["split"]):
        z = (stats - cohort["stats_mu"]) / cohort["stats_sd"]
        ids += tids
        slides += [sid] * len(tids)
        y.append(z @ w)
        split += [sp] * len(tids)
    y = np.concatenate(y)[:, None]
    noise = np.random.default_rng(5).normal(size=y.shape)
    path = write_targets(tmp_path / "tile_targets.h5ad", np.hstack([y, noise]), ["PLANT", "NOISE"], slides, split,
                         obs_extra={"tile_id": ids}, index=[f"{s}:{t}" for s, t in zip(slides, ids)])
    model = load(train_model(cohort["feature_dir"], path, tmp_path / "m", level="tile"))
    stores = open_feature_stores(cohort["feature_dir"])
    val = np.array(split) == "validation"
    val_slides = sorted({s for s, v in zip(slides, val) if v})
    pred = np.concatenate([model.predict(stores[s].read()) for s in val_slides])
    assert spearmanr(pred[:, 0], y[val, 0])[0] > 0.8
    assert abs(spearmanr(pred[:, 1], noise[val, 0])[0]) < 0.1


def test_mlp_is_deterministic_on_cpu(cohort, tmp_path):
    cfg = MLPConfig(hidden=16, max_epochs=3, patience=3, tiles_per_slide=8, seed=3)
    a = train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "a", head="mlp", mlp_config=cfg, seed=3)
    b = train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "b", head="mlp", mlp_config=cfg, seed=3)
    assert (a / "weights.safetensors").read_bytes() == (b / "weights.safetensors").read_bytes()


def test_gene_not_in_targets(cohort, tmp_path):
    with pytest.raises(EmoError, match=r"gene\(s\) NOPE1 not in targets"):
        train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "m", genes="PLANT0,NOPE1")


def test_genes_from_a_file(cohort, tmp_path):
    (tmp_path / "genes.txt").write_text("# planted\nPLANT1\nNOISE0\n")
    out = train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "m", genes=tmp_path / "genes.txt")
    assert load(out).genes == ["PLANT1", "NOISE0"]


def test_default_genes_are_kept_genes_and_samples_without_slide_are_skipped(cohort, tmp_path):
    ad = anndata.read_h5ad(cohort["targets"])
    ad.var["kept"] = [g != "NOISE0" for g in ad.var_names]
    ad.obs["slide_id"] = ad.obs["slide_id"].astype(object)
    ad.obs.iloc[0, ad.obs.columns.get_loc("slide_id")] = np.nan  # an RNA-seq sample without a slide
    ad.write_h5ad(tmp_path / "t.h5ad")
    out = train_model(cohort["feature_dir"], tmp_path / "t.h5ad", tmp_path / "m")
    manifest = json.loads((out / "manifest.json").read_text())
    assert "NOISE0" not in manifest["genes"] and len(manifest["genes"]) == len(cohort["genes"]) - 1
    assert manifest["n_train"] == 48


def test_slides_without_features(cohort, tmp_path):
    import shutil

    fdir = tmp_path / "features" / "colour-texture-projection"
    shutil.copytree(cohort["feature_dir"], fdir)
    (fdir / "S000.h5").unlink()
    with pytest.raises(EmoError, match=r"1 train/tune slide\(s\) have no feature store \(e.g. S000\)"):
        train_model(fdir, cohort["targets"], tmp_path / "m")
    out = train_model(fdir, cohort["targets"], tmp_path / "m", allow_missing_features=True)
    assert json.loads((out / "manifest.json").read_text())["n_train"] == 48


def test_mismatched_feature_dims(cohort, tmp_path):
    import shutil

    fdir = tmp_path / "f"
    shutil.copytree(cohort["feature_dir"], fdir)
    write_feature_store(fdir / "S001.h5", "S001", np.zeros((3, 16), np.float32), np.zeros((3, 2)), ["a", "b", "c"])
    with pytest.raises(EmoError, match=r"S001.h5: backbone/dim .* differs"):
        train_model(fdir, cohort["targets"], tmp_path / "m")
    model = load(train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "ok"))
    with pytest.raises(EmoError, match=r"expects features \[n, 48\], got \[3, 16\]"):
        model.predict(np.zeros((3, 16), np.float32))
    with pytest.raises(EmoError, match="features are other dim 16 but model"):
        check_features(model, {"name": "other", "dim": 16}, "x.h5")


def test_identical_trainings_have_identical_identities(cohort, tmp_path):
    """`training_data_hash` and the model identity are content hashes: copies of the same features and
    targets (new paths, new mtimes) trained again give the same identities."""
    import shutil

    shutil.copytree(cohort["feature_dir"], tmp_path / "features", copy_function=shutil.copy)
    shutil.copy(cohort["targets"], tmp_path / "targets.h5ad")
    first = load(train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "m1"))
    second = load(train_model(tmp_path / "features", tmp_path / "targets.h5ad", tmp_path / "m2"))
    assert first.manifest["training_data_hash"] == second.manifest["training_data_hash"]
    assert first.model_id == second.model_id
    other = load(train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "m3", seed=1, head="mlp"))
    assert other.model_id != first.model_id


def test_manifest_from_other_major_version_is_one_line(cohort, tmp_path):
    out = train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "m")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["emo_version"] = "7.2.0"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmoError, match=r"model written by emo 7.2.0"):
        load(out)
    cmd = [sys.executable, "-m", "emo", "predict", "--model", str(out), "--features", str(cohort["feature_dir"]),
           "--out", str(tmp_path / "pred")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "major versions differ" in res.stderr


@pytest.mark.slow
def test_attention_mil_recovers_planted_genes_and_emo_average_is_its_pool(cohort, tmp_path):
    """Gated-attention MIL on bags of tiles: planted genes are recovered from the attention pool, and
    `emo predict` writes that pool (not the plain tile mean) as the slide's EMO-average."""
    from emo.models import AttentionMILConfig
    from emo.prediction import predict

    cfg = AttentionMILConfig(hidden=64, attention=32, dropout=0.1, max_epochs=60, patience=8, batch_size=8,
                             tiles_per_slide=24, lr=3e-3)
    model_dir = train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "mil", head="attention_mil", attention_mil=cfg)
    model = load(model_dir)
    assert model.kind == "attention_mil" and model.manifest["head_config"]["attention"] == 32
    stores = open_feature_stores(cohort["feature_dir"])
    ad = anndata.read_h5ad(cohort["targets"])
    val = ad.obs["slide_id"][(ad.obs["split"] == "validation").to_numpy()]
    pred = np.stack([model.head.pool(stores[s].read()) for s in val])
    y = ad[val.index, model.genes].X
    rho = {g: spearmanr(pred[:, i], y[:, i])[0] for i, g in enumerate(model.genes)}
    assert min(rho[g] for g in cohort["planted"]) > 0.6, rho
    assert np.mean([abs(rho[g]) for g in cohort["noise"]]) < 0.25, rho

    slide = val.iloc[0]
    out = predict(model_dir, cohort["feature_dir"], tmp_path / "pred")
    average = anndata.read_h5ad(out / "average.h5ad")
    spatial = anndata.read_h5ad(out / "spatial" / f"{slide}.h5ad")
    np.testing.assert_allclose(average[slide].X[0], model.head.pool(stores[slide].read()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(spatial.X, model.predict(stores[slide]), rtol=1e-5, atol=1e-5)
    assert np.abs(average[slide].X[0] - spatial.X.mean(axis=0)).max() > 1e-4  # attention, not the mean


@pytest.mark.slow
def test_attention_mil_is_deterministic_on_cpu(cohort, tmp_path):
    from emo.models import AttentionMILConfig

    cfg = AttentionMILConfig(hidden=16, attention=8, max_epochs=3, patience=3, tiles_per_slide=8, seed=3)
    a = train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "a", head="attention_mil", attention_mil=cfg)
    b = train_model(cohort["feature_dir"], cohort["targets"], tmp_path / "b", head="attention_mil", attention_mil=cfg)
    assert (a / "weights.safetensors").read_bytes() == (b / "weights.safetensors").read_bytes()


def test_null_permutes_whole_patients():
    """A patient's samples keep their labels together: they move as a block to another patient's rows."""
    from emo.training.train import permute_by_patient

    patients = ["a", "a", "b", "b", "c", "c", "d"]
    y = np.arange(7.0)[:, None]
    moved = permute_by_patient(y, patients, np.random.default_rng(1)).ravel()
    blocks = {tuple(moved[[0, 1]]), tuple(moved[[2, 3]]), tuple(moved[[4, 5]])}
    assert blocks == {(0.0, 1.0), (2.0, 3.0), (4.0, 5.0)} and moved[6] == 6.0  # "d" has no partner of its size
    draws = {tuple(permute_by_patient(y, patients, np.random.default_rng(s)).ravel()) for s in range(20)}
    assert len(draws) > 1
