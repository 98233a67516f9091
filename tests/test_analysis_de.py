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


def test_targets_h5ad_split_and_predictions_by_slide_id(shared_data, tmp_path):
    """The pipeline's contract: targets.h5ad (obs sample_id, split, clinical) vs average.h5ad (obs slide_id)."""
    import anndata

    expr = pd.read_csv(shared_data("bulk/scanb_gse96058/expression_log2fpkm.tsv.gz"), sep="\t", index_col=0)
    expr = expr.iloc[:1500].T
    pheno = pd.read_csv(shared_data("bulk/scanb_gse96058/phenotypes.tsv"), sep="\t").set_index("title").loc[expr.index]
    rng = np.random.default_rng(0)
    obs = pheno[["er_status", "age_at_diagnosis", "her2_status"]].assign(
        split=rng.choice(["train", "test"], len(pheno)), slide_id=[f"slide_{s}" for s in pheno.index])
    obs.index.name = "sample_id"
    anndata.AnnData(expr.to_numpy(np.float32), obs=obs, var=pd.DataFrame(index=expr.columns)).write_h5ad(
        tmp_path / "targets.h5ad")
    test = obs[obs["split"] == "test"]
    pred = expr.loc[test.index] + rng.normal(0, 0.5, (len(test), expr.shape[1]))
    anndata.AnnData(pred.to_numpy(np.float32), obs=pd.DataFrame(index=pd.Index(test["slide_id"], name="slide_id")),
                    var=pd.DataFrame(index=expr.columns)).write_h5ad(tmp_path / "average.h5ad")
    selected = pd.DataFrame({"gene": expr.columns, "selected": np.arange(expr.shape[1]) % 3 == 0})
    selected.to_csv(tmp_path / "genes.csv", index=False)
    table = differential_expression(tmp_path / "targets.h5ad", tmp_path / "average.h5ad", tmp_path / "de",
                                    split="test", genes=str(tmp_path / "genes.csv"))
    summary = table.attrs["summary"]
    assert summary["measured"]["n_samples"] == summary["predicted"]["n_samples"] == len(test)
    assert summary["measured"]["covariates"] == ["age_at_diagnosis", "her2_status"]
    assert set(table["gene"]) == set(selected.loc[selected["selected"], "gene"])
    assert summary["n_concordant"] == int((table["significant_measured"] & table["significant_predicted"]
                                           & (table["beta_measured"] * table["beta_predicted"] > 0)).sum()) > 0
    assert {"de_measured.csv", "de_predicted.parquet", "de_concordance.csv", "de_summary.json"} <= {
        p.name for p in (tmp_path / "de").iterdir()}
    from emo.analysis.de import report_section

    html = report_section(tmp_path / "de")
    assert "concordant" in html and "data:image/png;base64," in html
    assert report_section(tmp_path) == ""


def test_three_level_covariate_and_missing_values_equal_statsmodels(shared_data):
    """SCAN-B: grade (G1/G2/G3, some missing) as a categorical covariate, age numeric, HER2 with gaps."""
    import statsmodels.formula.api as smf

    expr = pd.read_csv(shared_data("bulk/scanb_gse96058/expression_log2fpkm.tsv.gz"), sep="\t", index_col=0)
    genes = ["ESR1", "FOXA1", "MKI67", "ERBB2", "CD8A"]
    expr = expr.loc[[g for g in genes if g in expr.index]].T
    pheno = pd.read_csv(shared_data("bulk/scanb_gse96058/phenotypes.tsv"), sep="\t").set_index("title")
    table = differential_expression(expr, samples=pheno, covariates=["age_at_diagnosis", "nhg", "her2_status"])
    summary = table.attrs["summary"]["measured"]
    complete = pheno[["er_status", "age_at_diagnosis", "nhg", "her2_status"]].notna().all(axis=1)
    assert summary["dropped_missing_clinical"] == int((~complete).sum()) > 0
    assert summary["design_terms"] == ["intercept", "er_status", "age_at_diagnosis", "nhg_G2", "nhg_G3", "her2_status"]
    data = pheno.loc[expr.index]
    for row in table.itertuples():
        fit = smf.ols("y ~ er_status + age_at_diagnosis + C(nhg) + her2_status",
                      data=data.assign(y=expr[row.gene]), missing="drop").fit()
        assert row.n == fit.nobs == complete.sum()
        np.testing.assert_allclose([row.beta, row.se, row.p],
                                   [fit.params["er_status"], fit.bse["er_status"], fit.pvalues["er_status"]],
                                   rtol=1e-8, atol=0)


@pytest.mark.slow
def test_cli_orientation_and_the_old_orient_spelling_give_the_same_table(tmp_path):
    """`--orientation samples-by-genes` and the hidden old `--orient samples` read the matrix alike."""
    rng = np.random.default_rng(3)
    er = np.repeat(["Positive", "Negative"], 15)
    data = pd.DataFrame(rng.normal(size=(30, 4)), columns=["ESR1", "PGR", "GATA3", "MKI67"],
                        index=pd.Index([f"s{i}" for i in range(30)], name="id"))
    data["ESR1"] += 2.0 * (er == "Positive")
    data.to_csv(tmp_path / "m.csv")  # header "id": orientation must be stated
    pd.DataFrame({"sample": data.index, "er_status": er}).to_csv(tmp_path / "sheet.csv", index=False)
    base = [sys.executable, "-m", "emo", "analyze", "de", "--measured", str(tmp_path / "m.csv"),
            "--samples", str(tmp_path / "sheet.csv"), "--covariates", "none"]
    tables = []
    for flag, value in (("--orientation", "samples-by-genes"), ("--orient", "samples")):
        out = tmp_path / flag.strip("-")
        res = subprocess.run(base + [flag, value, "--out", str(out)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        tables.append(pd.read_csv(out / "de_measured.csv"))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert tables[0].iloc[0]["gene"] == "ESR1"
    res = subprocess.run(base + ["--out", str(tmp_path / "auto")], capture_output=True, text=True)
    assert res.returncode == 2 and "cannot tell whether rows are genes or samples" in res.stderr
    helptext = subprocess.run(base[:5] + ["--help"], capture_output=True, text=True).stdout
    assert "--orientation" in helptext and "--orient " not in helptext
