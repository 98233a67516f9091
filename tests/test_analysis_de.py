"""ER differential expression on TCGA-BRCA counts, checked against statsmodels OLS fitted gene by gene."""

from __future__ import annotations

import subprocess
import sys
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

from emo.analysis.de import design_matrix, differential_expression, ols_contrast
from emo.errors import EmoError

COUNTS = "bulk/tcga_brca/er_set_rawcounts.tsv.gz"
STATUS = "bulk/tcga_brca/er_her2_status.tsv"


@lru_cache(maxsize=1)
def _tcga(counts: str, status: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """log2(CPM + 1) samples × genes, and the ER/HER2 sheet (plus log library size) for the same barcodes."""
    raw = pd.read_csv(counts, sep="\t", index_col=0).T
    libsize = raw.sum(axis=1)
    logcpm = np.log2(raw.div(libsize, axis=0) * 1e6 + 1)
    sheet = pd.read_csv(status, sep="\t").drop_duplicates().set_index("sample").loc[raw.index]
    return logcpm, sheet.assign(log_libsize=np.log10(libsize))


@pytest.fixture
def tcga(shared_data):
    return _tcga(str(shared_data(COUNTS)), str(shared_data(STATUS)))


def test_er_genes_are_top_and_up_in_er_positive(shared_data, tmp_path):
    table = differential_expression(shared_data(COUNTS), samples=shared_data(STATUS), contrast="ER",
                                    log_cpm=True, out_dir=tmp_path)
    rank = {g: i for i, g in enumerate(table["gene"])}
    tested = int(table["p"].notna().sum())
    for gene in ("ESR1", "PGR", "GATA3", "FOXA1"):
        row = table.iloc[rank[gene]]
        assert rank[gene] < 0.01 * tested, (gene, rank[gene], tested)  # top 1 % of ~20k genes
        assert row["beta"] > 1 and row["fdr_bh"] < 1e-5
    assert table["gene"].iloc[0] == "ESR1"
    summary = table.attrs["summary"]["measured"]
    assert summary["covariates"] == ["HER2"]  # the only default covariate this sheet has
    assert summary["skipped_constant"] == table["p"].isna().sum() > 0  # all-zero genes skipped, counted
    written = pd.read_parquet(tmp_path / "de_measured.parquet")
    pd.testing.assert_frame_equal(written, table.reset_index(drop=True), check_dtype=False)
    assert (tmp_path / "de.png").stat().st_size > 0


def test_coefficients_and_p_equal_statsmodels(tcga):
    import statsmodels.formula.api as smf

    logcpm, sheet = tcga
    rng = np.random.default_rng(0)
    genes = ["ESR1", "GATA3", "FOXA1", "ERBB2", *rng.choice(logcpm.columns[logcpm.std() > 0], 4, replace=False)]
    expr = logcpm[genes].copy()
    expr.iloc[[3, 17, 40], 1] = np.nan  # GATA3 misses three samples: fitted on the rest
    design, _ = design_matrix(sheet, "ER", ["HER2", "log_libsize"])
    ours, skipped = ols_contrast(expr, design)
    assert sum(skipped.values()) == 0
    frame = sheet.assign(er=(sheet["ER"] == "Positive").astype(float))
    for gene, row in zip(genes, ours.itertuples()):
        fit = smf.ols("y ~ er + C(HER2) + log_libsize", data=frame.assign(y=expr[gene]), missing="drop").fit()
        assert row.n == fit.nobs
        np.testing.assert_allclose([row.beta, row.se, row.t, row.p],
                                   [fit.params["er"], fit.bse["er"], fit.tvalues["er"], fit.pvalues["er"]],
                                   rtol=1e-8, atol=0)


def test_concordance_requires_both_significant_and_same_sign(tcga):
    logcpm, sheet = tcga
    expr = logcpm.loc[:, logcpm.std() > 0].iloc[:, :2000]
    same = differential_expression(expr, expr * 0.5 + 3.0, samples=sheet, contrast="ER")
    n_sig = same.attrs["summary"]["measured"]["n_significant"]
    assert n_sig > 50
    assert same.attrs["summary"]["n_concordant"] == n_sig  # an affine copy agrees everywhere
    flipped = differential_expression(expr, -expr, samples=sheet, contrast="ER")
    assert flipped.attrs["summary"]["predicted"]["n_significant"] == n_sig
    assert flipped.attrs["summary"]["n_concordant"] == 0  # significant in both, opposite signs


def test_all_nan_gene_is_skipped_and_counted(tcga):
    logcpm, sheet = tcga
    expr = logcpm[["ESR1", "GATA3", "FOXA1"]].assign(EMPTY=np.nan)
    table = differential_expression(expr, samples=sheet, contrast="ER")
    assert table.attrs["summary"]["measured"]["skipped_all_nan"] == 1
    assert table.set_index("gene").loc["EMPTY", ["p", "fdr_bh"]].isna().all()
    assert table.set_index("gene").loc["ESR1", "fdr_bh"] < 1e-10


def test_missing_clinical_values_drop_samples(tcga):
    logcpm, sheet = tcga
    sheet = sheet.copy()
    sheet.iloc[:5, sheet.columns.get_loc("ER")] = "[Not Evaluated]"
    table = differential_expression(logcpm[["ESR1"]], samples=sheet, contrast="ER")
    assert table.attrs["summary"]["measured"]["dropped_missing_clinical"] == 5
    assert table["n"].iloc[0] == len(sheet) - 5


def test_one_level_covariate_is_a_clear_error(tcga):
    logcpm, sheet = tcga
    with pytest.raises(EmoError, match="covariate 'site' has one level"):
        differential_expression(logcpm[["ESR1"]], samples=sheet.assign(site="A"), contrast="ER", covariates=["site"])


def test_cli_bad_covariate_exits_2_with_one_line(shared_data, tmp_path):
    sheet = pd.read_csv(shared_data(STATUS), sep="\t").assign(batch="b1")
    sheet.to_csv(tmp_path / "sheet.csv", index=False)
    out = subprocess.run([sys.executable, "-m", "emo", "analyze", "de", "--measured", str(shared_data(COUNTS)),
                          "--samples", str(tmp_path / "sheet.csv"), "--contrast", "ER", "--covariates", "batch",
                          "--log-cpm", "--out", str(tmp_path / "de")], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "covariate 'batch' has one level" in out.stderr
