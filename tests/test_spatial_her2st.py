"""Spot-level heads on real her2st data: train on B4, C2, C3 and predict the held-out section C4."""

from __future__ import annotations

import numpy as np
import pytest

from emo.errors import EmoError
from emo.expression import read_her2st
from emo.models import load
from emo.spot_models import SpotModelConfig, gene_correlations, predict_section, train_spot_model
from emo.spot_models.ridge import target_basis
from emo.spot_models.targets import spot_targets


pytestmark = pytest.mark.slow  # spot features of real her2st sections


def test_gene_correlations_match_scipy():
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    measured = rng.normal(size=(60, 5))
    predicted = measured * np.array([0, 0.2, 0.5, 1, 3]) + rng.normal(size=(60, 5))
    table = gene_correlations(predicted, measured, list("abcde"))
    ref = [stats.pearsonr(predicted[:, j], measured[:, j]) for j in range(5)]
    assert np.allclose(table.r, [r.statistic for r in ref])
    assert np.allclose(table.p, [r.pvalue for r in ref])
    assert np.allclose(table.fdr_bh, multipletests([r.pvalue for r in ref], method="fdr_bh")[1])


def test_target_basis_recovers_planted_components():
    rng = np.random.default_rng(1)
    axes = np.linalg.qr(rng.normal(size=(30, 2)))[0]
    sections = [rng.normal(size=(400, 2)) * [10, 3] @ axes.T + 0.05 * rng.normal(size=(400, 30)) + off
                for off in (0.0, 4.0)]  # a section offset must not become a component
    basis = target_basis(sections, 2)
    assert np.allclose(basis @ basis.T, axes @ axes.T, atol=0.01)  # same subspace
    assert abs(basis[:, 0] @ axes[:, 0]) > 0.99  # leading axis first


def test_spot_model_on_her2st_beats_mean_predictor(shared_data, tmp_path):
    data = shared_data("her2st")
    for name in ("images/B4.jpg", "images/C2.jpg", "images/C3.jpg", "images/C4.jpg", "hist2st_785_genes.txt"):
        shared_data(f"her2st/{name}")
    genes = (data / "hist2st_785_genes.txt").read_text().split()
    config = SpotModelConfig(tile_sizes_um=(224.0,), alpha=3.0)  # one scale keeps the test quick
    # target components from a few count-only sections too (all 30 is the benchmark's job: slow to read)
    model = train_spot_model(data, ["B4", "C2", "C3"], genes, config, exclude_from_basis=["C4"],
                             basis_sections=["B1", "D1", "G2"])
    assert model.meta["basis_sections"] == ["B1", "B4", "C2", "C3", "D1", "G2"]
    model.save(tmp_path / "model")
    pred, adata = predict_section(load(tmp_path / "model"), data, "C4")
    measured = spot_targets(adata, genes)
    assert list(pred.index) == list(adata.obs_names) and list(pred.columns) == genes

    mse_model = ((pred.to_numpy() - measured) ** 2).mean()
    mse_mean = ((model.y_mean[None, :] - measured) ** 2).mean()
    r = gene_correlations(pred.to_numpy(), measured, genes).r
    print(f"\nher2st B4,C2,C3 → C4: mean Pearson r over {len(genes)} genes = {r.mean():.4f}; "
          f"MSE {mse_model:.4f} vs mean predictor {mse_mean:.4f}")
    assert mse_model < mse_mean
    assert r.mean() > 0.05


def test_section_without_image_is_a_clear_error(shared_data):
    data = shared_data("her2st")
    adata = read_her2st(data, "A3")
    from emo.spot_models import section_features

    with pytest.raises(EmoError, match="A3: no image"):
        section_features(adata, SpotModelConfig())
    with pytest.raises(EmoError, match="section A3: no image"):
        train_spot_model(data, ["A3"], ["ERBB2"])  # before any feature


def test_spot_config_is_one_validated_object():
    assert SpotModelConfig(n_components=0).n_components is None  # 0 = every gene directly
    with pytest.raises(EmoError, match="alpha"):
        SpotModelConfig.build(alpha=-1)
    with pytest.raises(EmoError, match="tile_sizes_um"):
        SpotModelConfig.build(tile_sizes_um=(224.0, -1.0))
