"""Pathway enrichment on SCAN-B ranked by the ER t-statistic; over-representation against scipy directly."""

from __future__ import annotations

import subprocess
import sys
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from scipy.stats import hypergeom, spearmanr
from statsmodels.stats.multitest import multipletests

from emo.analysis.de import differential_expression
from emo.analysis.enrichment import (enrich, over_representation, read_gmt, report_section,
                                     unpredictable_variable_genes)
from emo.errors import EmoError

EXPR = "bulk/scanb_gse96058/expression_log2fpkm.tsv.gz"
PHENO = "bulk/scanb_gse96058/phenotypes.tsv"
HALLMARK = "genesets/hallmark.v7.0.symbols.gmt"


@lru_cache(maxsize=1)
def _er_de(expr: str, pheno: str) -> pd.DataFrame:
    return differential_expression(expr, samples=pheno)  # ER ~ age + HER2 (the sheet's default covariates)


@pytest.fixture
def er_de(shared_data):
    return _er_de(str(shared_data(EXPR)), str(shared_data(PHENO)))


def test_estrogen_response_enriched_up_by_er_t(er_de, shared_data, tmp_path):
    res = enrich(er_de, shared_data(HALLMARK), tmp_path, score="t", permutations=200, seed=0)
    pre = res.prerank.set_index("set")
    for name in ("HALLMARK_ESTROGEN_RESPONSE_EARLY", "HALLMARK_ESTROGEN_RESPONSE_LATE"):
        assert pre.loc[name, "fdr"] < 0.05 and pre.loc[name, "nes"] > 0 and pre.loc[name, "direction"] == "up"
    assert pre.loc["HALLMARK_ESTROGEN_RESPONSE_EARLY", "nes"] == pre["nes"].max()
    assert (tmp_path / "enrich_hallmark.v7.0.symbols.png").stat().st_size > 0
    assert len(pd.read_parquet(tmp_path / "enrich_prerank.parquet")) == len(res.prerank)


def test_over_representation_equals_scipy_hypergeom(er_de, shared_data):
    expr = pd.read_csv(shared_data(EXPR), sep="\t", index_col=0)
    variance = expr.var(axis=1, ddof=1)
    query = unpredictable_variable_genes(er_de, variance, alpha=0.05)
    expected_query = set(er_de.loc[er_de["fdr_bh"] > 0.05, "gene"]) & set(variance.index[variance > variance.median()])
    assert set(query) == expected_query and len(query) > 100
    sets, overlap = read_gmt(shared_data(HALLMARK), er_de["gene"])
    table = over_representation(query, er_de["gene"], sets)
    universe = set(er_de["gene"])
    q = universe & set(query)
    for row in table.itertuples():
        members = universe & set(sets[row.set])
        k = len(members & q)
        assert (row.n_in_universe, row.overlap) == (len(members), k)
        assert row.p == pytest.approx(hypergeom(len(universe), len(members), len(q)).sf(k - 1), rel=1e-12)
    np.testing.assert_allclose(table["fdr_bh"], multipletests(table["p"], method="fdr_bh")[1], rtol=1e-12)
    assert overlap.set_index("set").loc[table["set"], "n_in_universe"].tolist() == table["n_in_universe"].tolist()


def test_gmt_without_overlap_is_a_clear_error(tmp_path):
    gmt = tmp_path / "entrez.gmt"
    gmt.write_text("SET_A\tdesc\t2099\t5241\t2625\nSET_B\tdesc\t7157\t672\n")
    with pytest.raises(EmoError, match="none of its genes .* is among the 3 genes analysed"):
        read_gmt(gmt, ["ESR1", "PGR", "GATA3"])


@pytest.mark.slow
def test_cli_enrich_from_performance_table(shared_data, tmp_path):
    """genes.csv as `emo evaluate` writes it, from a prediction that is good for some genes only."""
    expr = pd.read_csv(shared_data(EXPR), sep="\t", index_col=0).iloc[:3000].T
    rng = np.random.default_rng(0)
    noise = rng.uniform(0.2, 5.0, expr.shape[1]) * expr.std().to_numpy()
    predicted = expr + rng.normal(size=expr.shape) * noise
    rho, p = zip(*(spearmanr(expr[g], predicted[g]) for g in expr.columns))
    genes = pd.DataFrame({"gene": expr.columns, "n": len(expr), "spearman_rho": rho, "spearman_p": p})
    genes["fdr_bh"] = multipletests(genes["spearman_p"], method="fdr_bh")[1]
    genes = genes.assign(pearson_r=np.nan, r2=np.nan, selected=genes["fdr_bh"] < 0.001)
    genes.to_csv(tmp_path / "genes.csv", index=False)
    expr.T.rename_axis("gene").to_csv(tmp_path / "measured.tsv", sep="\t")
    out = subprocess.run([sys.executable, "-m", "emo", "analyze", "enrich", "--ranking", str(tmp_path / "genes.csv"),
                          "--gene-sets", str(shared_data(HALLMARK)), "--measured", str(tmp_path / "measured.tsv"),
                          "--permutations", "50", "--out", str(tmp_path / "en")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    ora = pd.read_csv(tmp_path / "en" / "enrich_ora.csv")
    var = expr.var(ddof=1)
    n_query = len(set(genes.loc[genes["fdr_bh"] > 0.05, "gene"]) & set(var.index[var > var.median()]))
    assert ora["overlap"].max() <= n_query and n_query > 0
    first = ora.iloc[0]
    assert first["p"] == pytest.approx(hypergeom(3000, first["n_in_universe"], n_query).sf(first["overlap"] - 1), rel=1e-12)
    pre = pd.read_csv(tmp_path / "en" / "enrich_prerank.csv")
    assert {"set", "nes", "fdr", "collection"} <= set(pre.columns) and len(pre) > 10
    html = report_section(tmp_path / "en")
    assert "Over-representation" in html and "data:image/png;base64," in html
    assert report_section(tmp_path) == ""
    bad = tmp_path / "mouse.gmt"
    bad.write_text("SET\tdesc\tEsr1\tPgr\tGata3\n")
    out = subprocess.run([sys.executable, "-m", "emo", "analyze", "enrich", "--ranking", str(tmp_path / "genes.csv"),
                          "--gene-sets", str(bad), "--out", str(tmp_path / "en2")], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "mouse.gmt: none of its genes" in out.stderr
