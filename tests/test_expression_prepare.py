"""`emo expression prepare` on real data: SCAN-B (log2 FPKM) + TCGA-BRCA (raw counts), TCGA as reference."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from emo.expression import PAPER_FRACTIONS, SPLITS, align_cohort, prepare_targets

SCANB = "bulk/scanb_gse96058/expression_log2fpkm.tsv.gz"
TCGA = "bulk/tcga_brca/er_set_rawcounts.tsv.gz"
FIT = ["train", "tune", "validation"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import require_data

    scanb, tcga = require_data(SCANB), require_data(TCGA)
    pheno = pd.read_csv(require_data("bulk/scanb_gse96058/phenotypes.tsv"), sep="\t")
    barcodes = pd.read_csv(tcga, sep="\t", nrows=0).columns[1:]
    er = pd.read_csv(require_data("bulk/tcga_brca/er_her2_status.tsv"), sep="\t").set_index("sample")["ER"]
    rows = [{"sample_id": s, "patient_id": s, "cohort": "SCANB",
             "er": {1: "Positive", 0: "Negative"}.get(e)} for s, e in zip(pheno["title"], pheno["er_status"])]
    rows += [{"sample_id": b, "patient_id": b[:12], "cohort": "TCGA", "er": er.get(b[:12])} for b in barcodes]
    tmp = tmp_path_factory.mktemp("prepare")
    sheet = pd.DataFrame(rows)
    sheet.to_csv(tmp / "sheet.csv", index=False)
    adata = prepare_targets([scanb], tmp / "sheet.csv", "TCGA", tmp / "t64.h5ad", counts_matrices=[tcga],
                            stratify="er", seed=3, dtype="float64", figure=False)
    return {"tmp": tmp, "scanb": scanb, "tcga": tcga, "sheet": sheet, "adata": adata}


def _fit_medians(adata, cohort):
    obs = adata.obs
    rows = ((obs["cohort"] == cohort) & obs["split"].isin(FIT)).to_numpy()
    return np.median(np.asarray(adata.X)[rows], axis=0)


def test_cohort_medians_agree_after_correction(data):
    adata = data["adata"]
    assert adata.n_obs == 460 and adata.n_vars > 9000
    diff = _fit_medians(adata, "SCANB") - _fit_medians(adata, "TCGA")
    assert np.abs(diff).max() < 1e-9
    assert np.abs(adata.var["offset_SCANB"]).median() > 0.5  # a real batch effect was removed
    assert (adata.var["offset_TCGA"] == 0).all()


def test_test_samples_shifted_by_stored_offsets(data):
    adata = data["adata"]
    raw = pd.read_csv(data["scanb"], sep="\t", index_col=0)
    counts = pd.read_csv(data["tcga"], sep="\t", index_col=0)
    logcpm = np.log2(counts / counts.sum(axis=0) * 1e6 + 1)  # closed form, computed on every gene
    genes = adata.var_names
    test = adata.obs.index[adata.obs["split"] == "test"]
    scanb_test = [s for s in test if adata.obs.loc[s, "cohort"] == "SCANB"]
    tcga_test = [s for s in test if adata.obs.loc[s, "cohort"] == "TCGA"]
    assert scanb_test and tcga_test
    got = adata[scanb_test].to_df()
    expect = raw.loc[genes, scanb_test].T + adata.var["offset_SCANB"].to_numpy()
    np.testing.assert_allclose(got.to_numpy(), expect.to_numpy(), atol=1e-12, rtol=0)
    np.testing.assert_allclose(adata[tcga_test].to_df().to_numpy(), logcpm.loc[genes, tcga_test].T.to_numpy(),
                               atol=1e-12, rtol=0)


def test_test_samples_do_not_influence_offsets(data):
    adata, tmp = data["adata"], data["tmp"]
    raw = pd.read_csv(data["scanb"], sep="\t", index_col=0)
    obs = adata.obs
    test_sample = obs.index[(obs["split"] == "test") & (obs["cohort"] == "SCANB")][0]
    train_sample = obs.index[(obs["split"] == "train") & (obs["cohort"] == "SCANB")][0]
    offsets = {}
    for name, sample in [("test", test_sample), ("train", train_sample)]:
        changed = raw.copy()
        changed[sample] = changed[sample] + 50.0  # far outside the data: moves any median it enters
        changed.to_parquet(tmp / f"scanb_{name}.parquet")
        out = prepare_targets([tmp / f"scanb_{name}.parquet"], tmp / "sheet.csv", "TCGA", tmp / f"{name}.h5ad",
                              counts_matrices=[data["tcga"]], stratify="er", seed=3, dtype="float64",
                              figure=False)
        assert (out.obs["split"] == obs["split"]).all()
        offsets[name] = out.var["offset_SCANB"].to_numpy()
    np.testing.assert_array_equal(offsets["test"], adata.var["offset_SCANB"].to_numpy())
    assert not np.allclose(offsets["train"], adata.var["offset_SCANB"].to_numpy())  # the check can fail


def test_splits_by_patient_fractions_and_seed(data, tmp_path):
    sheet = data["sheet"].copy()
    # Pair up some SCAN-B samples as one patient (two samples): they must share a split.
    scanb = sheet.index[sheet["cohort"] == "SCANB"][:40]
    sheet.loc[scanb[1::2], "patient_id"] = sheet.loc[scanb[0::2], "patient_id"].to_numpy()
    sheet.to_csv(tmp_path / "sheet.csv", index=False)
    args = ([data["scanb"]], tmp_path / "sheet.csv", "TCGA")
    kw = {"counts_matrices": [data["tcga"]], "on_duplicate": "all", "figure": False}
    a = prepare_targets(*args, tmp_path / "a.h5ad", seed=7, **kw)
    b = prepare_targets(*args, tmp_path / "b.h5ad", seed=7, **kw)
    c = prepare_targets(*args, tmp_path / "c.h5ad", seed=8, **kw)
    assert (a.obs.groupby("patient_id", observed=True)["split"].nunique() == 1).all()
    patients = a.obs.groupby("patient_id", observed=True)["split"].first()
    n = len(patients)
    assert n == 440
    for split, frac in zip(SPLITS, PAPER_FRACTIONS):
        assert abs((patients == split).sum() - frac * n) <= 1, split
    assert (a.obs["split"] == b.obs["split"]).all()
    assert (a.obs["split"] != c.obs["split"]).any()
    with pytest.raises(Exception, match="several RNA samples"):
        prepare_targets(*args, tmp_path / "d.h5ad", counts_matrices=[data["tcga"]], figure=False)


def test_stratified_split_balances_each_stratum(data):
    obs = data["adata"].obs
    for (cohort, er), group in obs.groupby(["cohort", "er"], observed=True):
        for split, frac in zip(SPLITS, PAPER_FRACTIONS):
            assert abs((group["split"] == split).sum() - frac * len(group)) <= 1.5, (cohort, er, split)


def test_variance_on_training_split_and_float32_contract(data, tmp_path):
    adata = data["adata"]
    train = np.asarray(adata.X)[(adata.obs["split"] == "train").to_numpy()]
    np.testing.assert_allclose(adata.var["variance"], train.var(axis=0, ddof=1), rtol=1e-10)
    assert (adata.var["kept"] == (adata.var["variance"] > 0.01)).all()
    high = prepare_targets([data["scanb"]], data["tmp"] / "sheet.csv", "TCGA", tmp_path / "t.h5ad",
                           counts_matrices=[data["tcga"]], stratify="er", seed=3, min_variance=0.5)
    assert 0 < high.var["kept"].sum() < high.n_vars
    back = ad.read_h5ad(tmp_path / "t.h5ad")
    assert back.X.dtype == np.float32 and back.obs.index.name == "sample_id"
    assert set(back.obs["split"]) <= set(SPLITS) and {"patient_id", "cohort", "er"} <= set(back.obs)
    assert {"variance", "kept", "offset_SCANB", "offset_TCGA"} <= set(back.var)
    assert back.uns["emo"]["params"]["reference_cohort"] == "TCGA"
    np.testing.assert_allclose(back.X, adata.X, atol=1e-5)
    assert (tmp_path / "t.summary.md").read_text().count("SCANB") >= 2
    assert (tmp_path / "t.summary.json").exists() and (tmp_path / "t.mismatches.csv").exists()
    assert (tmp_path / "t.summary.png").read_bytes()[:4] == b"\x89PNG"


def test_external_cohort_is_test_only_and_align_new_cohort(data, tmp_path):
    ext = prepare_targets([data["scanb"]], data["tmp"] / "sheet.csv", "TCGA", tmp_path / "e.h5ad",
                          counts_matrices=[data["tcga"]], external_cohorts=["SCANB"], dtype="float64", figure=False)
    scanb = ext.obs["cohort"] == "SCANB"
    assert (ext.obs.loc[scanb, "split"] == "test").all() and ext.obs.loc[scanb, "external"].all()
    assert set(ext.obs.loc[~scanb, "split"]) == set(SPLITS)
    # An external cohort is aligned on its own median against the reference's train+tune+validation median.
    np.testing.assert_allclose(np.median(np.asarray(ext.X)[scanb.to_numpy()], axis=0),
                               ext.var["reference_median"], atol=1e-9)
    # Aligning a new cohort later with the stored reference medians does the same.
    raw = pd.read_csv(data["scanb"], sep="\t", index_col=0).T
    aligned, offsets = align_cohort(raw, ext.var["reference_median"])
    np.testing.assert_allclose(offsets[ext.var_names], ext.var["offset_SCANB"], atol=1e-9)
    np.testing.assert_allclose(aligned[ext.var_names].median(axis=0), ext.var["reference_median"], atol=1e-9)


def test_user_split_column_wins(data, tmp_path):
    sheet = data["sheet"].copy()
    rng = np.random.default_rng(0)
    sheet["split"] = rng.choice(SPLITS, size=len(sheet))
    sheet.to_csv(tmp_path / "sheet.csv", index=False)
    out = prepare_targets([data["scanb"]], tmp_path / "sheet.csv", "TCGA", tmp_path / "u.h5ad",
                          counts_matrices=[data["tcga"]], seed=1, figure=False)
    assert (out.obs["split"].astype(str) == sheet.set_index("sample_id").loc[out.obs_names, "split"]).all()


def test_cli_writes_targets_and_summary(data, tmp_path):
    out = tmp_path / "targets.h5ad"
    cmd = [sys.executable, "-m", "emo", "expression", "prepare", "--matrix", str(data["scanb"]),
           "--counts-matrix", str(data["tcga"]), "--samples", str(data["tmp"] / "sheet.csv"),
           "--reference-cohort", "TCGA", "--out", str(out), "--seed", "3", "--stratify", "er",
           "--min-variance", "0.01"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    back = ad.read_h5ad(out)
    assert (back.obs["split"] == data["adata"].obs["split"]).all()
    assert "kept as targets" in res.stdout and (tmp_path / "targets.summary.md").exists()
