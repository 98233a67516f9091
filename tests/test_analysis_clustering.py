"""Consensus clustering and ARI on SCAN-B PAM50 genes, against the given PAM50 subtypes."""

from __future__ import annotations

import subprocess
import sys
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from emo.analysis.clustering import ari_test, clusters, consensus_clustering, report_section
from emo.panels import get_panel

EXPR = "bulk/scanb_gse96058/expression_log2fpkm.tsv.gz"
PHENO = "bulk/scanb_gse96058/phenotypes.tsv"


@lru_cache(maxsize=1)
def _scanb(expr: str) -> pd.DataFrame:
    return pd.read_csv(expr, sep="\t", index_col=0).T


@pytest.mark.slow
def test_consensus_clusters_recover_pam50_subtypes(shared_data, tmp_path):
    res = clusters(shared_data(EXPR), samples=shared_data(PHENO), out_dir=tmp_path, n_iter=40,
                   n_boot=200, n_perm=200, seed=1)
    row = res.ari.set_index("a").loc["measured"]
    assert row["b"] == "subtype:pam50_subtype"
    assert row["p_perm"] < 0.01 and row["ari"] > 0.2
    assert row["ci_low"] < row["ari"] < row["ci_high"]
    # the reported ARI is sklearn's on the written labels
    labels = pd.read_csv(tmp_path / "clusters_samples.csv")
    pheno = pd.read_csv(shared_data(PHENO), sep="\t").set_index("title").loc[labels["sample_id"]]
    assert row["ari"] == pytest.approx(adjusted_rand_score(pheno["pam50_subtype"], labels["measured"]), abs=1e-12)
    assert labels["measured"].nunique() == 4
    genes = pd.read_csv(tmp_path / "clusters_genes.csv")
    assert set(genes["gene"]) == set(get_panel("pam50")) & set(_scanb(str(shared_data(EXPR))).columns)
    for name in ("heatmap.png", "consensus.png", "ari.parquet", "clusters.json"):
        assert (tmp_path / name).stat().st_size > 0


def test_ari_of_clustering_with_itself_is_one():
    labels = np.repeat([1, 2, 3, 4], 25)
    res = ari_test(labels, labels, n_boot=100, n_perm=100, seed=0)
    assert res["ari"] == 1.0 and res["ci_low"] == 1.0 and res["ci_high"] == 1.0
    assert res["p_perm"] == pytest.approx(1 / 101)
    shuffled = np.random.default_rng(0).permutation(labels)
    other = ari_test(labels, shuffled, n_boot=100, n_perm=200, seed=0)
    assert other["ari"] == adjusted_rand_score(labels, shuffled)
    assert other["p_perm"] > 0.01  # a random relabelling is not significant


def test_consensus_is_seeded_and_picks_k_of_separated_blobs():
    x, truth = make_blobs(n_samples=90, n_features=12, centers=3, cluster_std=1.0, random_state=3)
    res = consensus_clustering(x, range(2, 7), n_iter=30, method="hc", seed=5)
    assert res.k == 3
    assert adjusted_rand_score(truth, res.labels) == 1.0
    assert np.allclose(res.consensus, res.consensus.T) and np.all(np.diag(res.consensus) == 1)
    assert res.cdf.set_index("k").loc[3, "chosen"] and res.cdf["chosen"].sum() == 1
    assert adjusted_rand_score(truth, consensus_clustering(x, 3, n_iter=10, method="kmeans", seed=5).labels) == 1.0
    again = consensus_clustering(x, 4, n_iter=20, method="kmeans", seed=5)
    repeat = consensus_clustering(x, 4, n_iter=20, method="kmeans", seed=5)
    assert np.array_equal(again.labels, repeat.labels) and np.array_equal(again.consensus, repeat.consensus)


@pytest.mark.slow
def test_measured_vs_predicted_patients_and_genes(shared_data, tmp_path):
    expr = _scanb(str(shared_data(EXPR)))
    rng = np.random.default_rng(0)
    panel = [g for g in get_panel("pam50") if g in expr.columns]
    predicted = expr[panel] + rng.normal(0.0, 1.0, (len(expr), len(panel)))  # a noisy "prediction"
    predicted.index.name = "sample_id"
    predicted.to_csv(tmp_path / "average.csv")
    out = subprocess.run([sys.executable, "-m", "emo", "analyze", "clusters", "--measured", str(shared_data(EXPR)),
                          "--predicted", str(tmp_path / "average.csv"), "--samples", str(shared_data(PHENO)),
                          "--iterations", "30", "--n-boot", "100", "--n-perm", "100", "--choose-k", "--k-max", "5",
                          "--out", str(tmp_path / "cl")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    ari = pd.read_csv(tmp_path / "cl" / "ari.csv")
    assert list(ari["items"]) == ["samples", "genes", "samples", "samples"]
    pvm = ari.iloc[0]
    assert pvm["a"] == "measured" and pvm["b"] == "predicted" and pvm["p_perm"] < 0.02 and pvm["ari"] > 0.2
    labels = pd.read_csv(tmp_path / "cl" / "clusters_samples.csv")
    assert pvm["ari"] == pytest.approx(adjusted_rand_score(labels["measured"], labels["predicted"]), abs=1e-12)
    assert "ARI samples: measured vs predicted" in out.stdout
    cdf = pd.read_csv(tmp_path / "cl" / "consensus_cdf.csv")
    assert len(cdf) == 2 * 2 * 4 and (cdf.groupby(["items", "data"])["chosen"].sum() == 1).all()
    chosen = cdf[cdf["chosen"] & (cdf["items"] == "samples") & (cdf["data"] == "measured")]["k"].item()
    assert labels["measured"].nunique() == chosen
    html = report_section(tmp_path / "cl")
    assert html.count("data:image/png;base64,") == 3 and "predicted" in html
    assert report_section(tmp_path) == ""


def test_too_few_panel_genes_is_one_line_error(shared_data, tmp_path):
    out = subprocess.run([sys.executable, "-m", "emo", "analyze", "clusters", "--measured", str(shared_data(EXPR)),
                          "--genes", "ESR1,NOT_A_GENE", "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "only 1 panel genes present" in out.stderr
