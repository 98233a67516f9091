"""Vectorised per-gene statistics against the per-gene references, on real bulk RNA-seq with ties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import r2_score
from statsmodels.stats.multitest import multipletests

from emo.analysis import proliferation_map, proliferation_score, stats
from emo.errors import EmoError


@pytest.fixture(scope="module")
def scanb():
    from conftest import require_data

    path = require_data("bulk/scanb_gse96058/expression_log2fpkm.tsv.gz")
    return pd.read_csv(path, sep="\t", index_col=0, nrows=1200).T  # samples × genes, values rounded to 0.1


@pytest.fixture(scope="module")
def pairs(scanb):
    """400 gene pairs: independent genes, plus pairs with a real association."""
    x = scanb.to_numpy()
    measured, predicted = x[:, :400].copy(), x[:, 400:800].copy()
    predicted[:, :100] = np.round(measured[:, :100] + x[:, 800:900], 1)  # associated, still tied
    return measured, predicted


def test_data_has_ties(pairs):
    measured, _ = pairs
    assert all(len(np.unique(measured[:, j])) < measured.shape[0] / 2 for j in range(20))


def test_spearman_equals_scipy_per_gene(pairs):
    measured, predicted = pairs
    rho, p = stats.spearman(measured, predicted)
    ref = [sps.spearmanr(measured[:, j], predicted[:, j]) for j in range(measured.shape[1])]
    np.testing.assert_allclose(rho, [r.statistic for r in ref], rtol=0, atol=1e-10)
    np.testing.assert_allclose(p, [r.pvalue for r in ref], rtol=1e-10, atol=0)
    assert np.median(p[:100]) < 1e-10 < np.median(p[100:])


def test_spearman_with_missing_values_equals_scipy_omit(pairs):
    measured, predicted = pairs
    predicted = predicted[:, :60].copy()
    measured = measured[:, :60].copy()
    rng = np.random.default_rng(0)
    predicted[rng.random(predicted.shape) < 0.05] = np.nan
    measured[rng.random(measured.shape) < 0.05] = np.nan
    rho, p = stats.spearman(measured, predicted)
    for j in range(60):
        ok = ~np.isnan(measured[:, j]) & ~np.isnan(predicted[:, j])
        ref = sps.spearmanr(measured[ok, j], predicted[ok, j])
        assert rho[j] == pytest.approx(ref.statistic, abs=1e-10)
        assert p[j] == pytest.approx(ref.pvalue, rel=1e-10)
    assert (stats.pairwise_n(measured, predicted) < measured.shape[0]).all()


def test_constant_gene_gives_nan_like_scipy(pairs):
    measured, predicted = pairs
    m = measured[:, :3].copy()
    m[:, 1] = 2.0
    rho, p = stats.spearman(m, predicted[:, :3])
    assert np.isnan(rho[1]) and np.isnan(p[1]) and np.isfinite(rho[[0, 2]]).all()


def test_pearson_equals_scipy(pairs):
    measured, predicted = pairs
    r, p = stats.pearson(measured[:, :150], predicted[:, :150])
    ref = [sps.pearsonr(measured[:, j], predicted[:, j]) for j in range(150)]
    np.testing.assert_allclose(r, [x.statistic for x in ref], atol=1e-10)
    np.testing.assert_allclose(p, [x.pvalue for x in ref], rtol=1e-8)


def test_r2_equals_sklearn(pairs):
    measured, predicted = pairs
    m, q = measured[:, :150].copy(), predicted[:, :150].copy()
    m[:, 5] = 1.0  # constant target, imperfect prediction → sklearn gives 0
    m[:, 6] = 1.0
    q[:, 6] = 1.0  # constant target, perfect prediction → 1
    ours = stats.r2_score(m, q)
    ref = [r2_score(m[:, j], q[:, j]) for j in range(150)]
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    assert ours[5] == 0.0 and ours[6] == 1.0


def test_bh_and_bonferroni_equal_statsmodels_and_scipy(pairs):
    measured, predicted = pairs
    _, p = stats.spearman(measured, predicted)
    np.testing.assert_allclose(stats.adjust_pvalues(p, "fdr_bh"), multipletests(p, method="fdr_bh")[1], rtol=1e-12)
    np.testing.assert_allclose(stats.adjust_pvalues(p, "fdr_bh"), sps.false_discovery_control(p, method="bh"), rtol=1e-12)
    np.testing.assert_allclose(stats.adjust_pvalues(p, "bonferroni"), np.minimum(p * len(p), 1.0), rtol=1e-12)
    # Missing P values (constant genes) are left out of the adjustment, not counted as tests.
    with_nan = np.concatenate([p[:50], [np.nan]])
    adj = stats.adjust_pvalues(with_nan, "bonferroni")
    assert np.isnan(adj[-1])
    np.testing.assert_allclose(adj[:-1], multipletests(p[:50], method="bonferroni")[1])


def test_proliferation_score_higher_in_er_negative_tcga(shared_data):
    counts = pd.read_csv(shared_data("bulk/tcga_brca/er_set_rawcounts.tsv.gz"), sep="\t", index_col=0)
    status = pd.read_csv(shared_data("bulk/tcga_brca/er_her2_status.tsv"), sep="\t", index_col=0)["ER"]
    status = status[~status.index.duplicated(keep=False)]  # a few patients are listed twice
    cpm = counts / counts.sum(axis=0) * 1e6
    expr = np.log2(cpm + 1).T  # samples × genes
    score = proliferation_score(expr)
    assert score.attrs["n_genes"] == 11
    er = status.reindex(score.index)
    neg, pos = score[er == "Negative"], score[er == "Positive"]
    assert len(neg) >= 25 and len(pos) >= 25
    test = sps.mannwhitneyu(neg, pos, alternative="two-sided")
    print(f"proliferation score ER- median {neg.median():.2f} vs ER+ {pos.median():.2f}, P = {test.pvalue:.2g}")
    assert neg.median() > pos.median() and test.pvalue < 0.01


def test_proliferation_map_is_tile_mean_of_present_genes():
    import anndata

    rng = np.random.default_rng(1)
    genes = ["CDCA1", "BIRC5", "CCNB1", "CDC20", "CEP55", "ESR1"]  # CDCA1 is NUF2's old name
    x = rng.normal(size=(30, len(genes))).astype(np.float32)
    ad = anndata.AnnData(X=x, var=pd.DataFrame(index=genes))
    expected = x[:, :5].astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(proliferation_map(ad), expected, rtol=1e-6)
    frame = pd.DataFrame(x, columns=genes)
    assert proliferation_score(frame).attrs["n_genes"] == 5
    with pytest.raises(EmoError, match="proliferation genes"):
        proliferation_score(frame[["ESR1"]])
