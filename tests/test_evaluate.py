"""`emo evaluate` end to end on generated targets with known predictable genes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import r2_score
from statsmodels.stats.multitest import multipletests
from synthetic_evaluate import make_evaluation_data

from emo.analysis import evaluate
from emo.analysis.evaluate import GENE_COLUMNS, TEST_COLUMNS
from emo.errors import EmoError
from emo.panels import get_panel

PNG = b"\x89PNG\r\n\x1a\n"
WITH_NULL = GENE_COLUMNS[:4] + ["permutation_p"] + GENE_COLUMNS[4:]  # genes.csv of a run with null predictions


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_evaluation_data(tmp_path_factory.mktemp("evaluate"))


@pytest.fixture(scope="module")
def validation(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("val")
    table = evaluate(data["csv"], data["targets"], "validation", out, null_predictions=data["null"])
    return out, table


def test_validation_selects_exactly_the_planted_genes(data, validation):
    out, table = validation
    assert list(pd.read_csv(out / "genes.csv").columns) == WITH_NULL
    assert list(pd.read_parquet(out / "genes.parquet").columns) == WITH_NULL
    assert sorted(table.loc[table["selected"], "gene"]) == data["planted"]
    assert sorted((out / "selected_genes.txt").read_text().split()) == data["planted"]
    assert (table["n"] == 120).all()


def test_validation_statistics_match_references_after_slide_mapping(data, validation):
    _, table = validation
    samples = data["obs"].index[data["obs"]["split"] == "validation"]
    t = table.set_index("gene")
    for gene in ["G000", "G100", "MKI67", "ESR1", "SCUBE2"]:
        m, p = data["measured"].loc[samples, gene], data["predicted"].loc[samples, gene]
        ref = sps.spearmanr(m, p)
        assert t.loc[gene, "spearman_rho"] == pytest.approx(ref.statistic, abs=1e-6)
        assert t.loc[gene, "pearson_r"] == pytest.approx(sps.pearsonr(m, p).statistic, abs=1e-6)
        assert t.loc[gene, "r2"] == pytest.approx(r2_score(m, p), abs=1e-5)
    np.testing.assert_allclose(table["fdr_bh"], multipletests(table["spearman_p"], method="fdr_bh")[1], rtol=1e-12)


def test_summary_counts_null_panels_and_proliferation(data, validation):
    import json

    out, table = validation
    s = json.loads((out / "summary.json").read_text())
    assert s["n_samples"] == 120 and s["n_prediction_rows_unmatched"] == 2
    assert s["counts"]["selected"] == len(data["planted"])
    assert s["counts"]["r2_gt_0.2"] == len(data["planted"])
    assert s["counts"]["fdr_lt_0.05"] >= len(data["planted"])
    # Permuted slide labels destroy the association: nothing passes the selection rule in any permutation,
    # and the model's count lies above the null's 95 % interval with the smallest P five permutations give.
    null = s["null"]
    assert null["n_permutations"] == 5 and null["per_permutation"]["selected"] == [0] * 5
    fdr = null["counts"]["fdr_lt_0.05"]
    assert fdr["model"] == s["counts"]["fdr_lt_0.05"] and fdr["null_high"] < fdr["model"]
    assert fdr["null_mean"] == pytest.approx(np.mean(null["per_permutation"]["fdr_lt_0.05"]))
    assert fdr["p_empirical"] == pytest.approx(1 / 6)
    counts = pd.read_csv(out / "null_counts.csv")
    assert len(counts) == 5 and list(counts["fdr_lt_0.05"]) == null["per_permutation"]["fdr_lt_0.05"]
    # Per gene: (1 + #{|ρ null| ≥ |ρ|}) / 6 from the stacked null table.
    stacked = pd.read_csv(out / "genes_null.csv")
    assert sorted(stacked["permutation"].unique()) == list(range(5))
    rho_null = stacked.pivot(index="gene", columns="permutation", values="spearman_rho").abs()
    t = table.set_index("gene")
    for gene in ["G000", "G100", "MKI67"]:
        expected = (1 + (rho_null.loc[gene] >= abs(t.loc[gene, "spearman_rho"])).sum()) / 6
        assert t.loc[gene, "permutation_p"] == pytest.approx(expected)
    assert t.loc[data["planted"], "permutation_p"].tolist() == pytest.approx([1 / 6] * len(data["planted"]))
    panels = {p["panel"]: p for p in s["panels"]}
    for name in ("pam50", "oncotype_dx", "endopredict"):
        assert panels[name]["n_selected"] == len(set(get_panel(name)) & set(data["planted"]))
    prolif = s["proliferation"]
    assert prolif["n_genes"] == 11 and prolif["spearman_rho"] > 0.8 and prolif["spearman_p"] < 1e-20
    by = prolif["by_subtype"]
    assert by["Basal"]["median_measured"] > by["LumA"]["median_measured"]
    assert by["Basal"]["median_predicted"] > by["LumA"]["median_predicted"]
    for name in ("histograms.png", "null_distribution.png", "top_genes.png", "proliferation.png", "proliferation_subtypes.png"):
        assert (out / name).read_bytes()[:8] == PNG


def test_test_split_uses_selected_genes_bonferroni_and_skips_external_r2(data, validation, tmp_path):
    val_out, _ = validation
    table = evaluate(data["h5ad"], data["targets"], "test", tmp_path, selected=val_out / "selected_genes.txt",
                     validation_genes=val_out / "genes.csv")
    assert list(table.columns) == GENE_COLUMNS + TEST_COLUMNS
    assert sorted(table["gene"]) == data["planted"] and table["validated"].all()
    np.testing.assert_allclose(table["p_bonferroni"], multipletests(table["spearman_p"], method="bonferroni")[1])
    obs = data["obs"]
    internal = obs.index[(obs["split"] == "test") & ~obs["external"]]
    t = table.set_index("gene")
    assert t.loc["MKI67", "n"] == 100
    m, p = data["measured"].loc[internal, "MKI67"], data["predicted"].loc[internal, "MKI67"]
    assert t.loc["MKI67", "r2"] == pytest.approx(r2_score(m, p), abs=1e-5)
    # Only external samples: R² is not computed.
    ext = evaluate(data["h5ad"], data["targets"], "test", tmp_path / "ext", selected=val_out / "selected_genes.txt",
                   cohorts=("EXT",), figures=False)
    assert ext["r2"].isna().all() and ext["spearman_rho"].notna().all()
    import json

    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["concordance"]["n_genes"] == len(data["planted"])
    assert (tmp_path / "concordance.png").read_bytes()[:8] == PNG


def test_bad_input_is_a_named_error(data, tmp_path):
    with pytest.raises(EmoError, match="no samples in split 'tune'"):
        evaluate(data["csv"], data["targets"], "tune", tmp_path)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"x": [1.0, 2.0]}, index=["nope1", "nope2"]).to_csv(bad)
    with pytest.raises(EmoError, match="bad.csv"):
        evaluate(bad, data["targets"], "validation", tmp_path)


def test_cli_contract(data, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "emo", "evaluate", "--predictions", str(data["csv"]), "--targets", str(data["targets"]),
           "--split", "validation", "--out", str(out), "--r2-min", "0.5"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"{len(data['planted'])} selected" in res.stdout
    assert list(pd.read_csv(out / "genes.csv").columns) == GENE_COLUMNS
    res = subprocess.run(cmd[:8] + ["--split", "nope", "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "split 'nope'" in res.stderr


def test_compute_writes_nothing_and_write_plot_give_evaluates_files(data, validation, tmp_path):
    """evaluate = compute_evaluation → plot_evaluation → write_evaluation, with the same tables."""
    from emo.analysis.evaluate import EvaluateConfig, compute_evaluation, plot_evaluation, write_evaluation

    out, table = validation
    config = EvaluateConfig(null_predictions=data["null"])
    result = compute_evaluation(data["csv"], data["targets"], "validation", config)
    assert not any(tmp_path.iterdir())
    pd.testing.assert_frame_equal(result.table.reset_index(drop=True), table.reset_index(drop=True))
    assert result.null_table is not None and len(result.null_table) == 5 * len(table)
    assert result.null_counts["n_genes"].tolist() == [len(table)] * 5
    write_evaluation(result, tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == sorted(
        p.name for p in out.iterdir() if p.suffix != ".png")
    assert plot_evaluation(result, tmp_path / "p") == sorted(p.name for p in out.glob("*.png"))
    with pytest.raises(EmoError, match=r"evaluate: unknown option 'r2_minimum'; options are .*r2_min"):
        compute_evaluation(data["csv"], data["targets"], "validation", r2_minimum=0.3)
    with pytest.raises(EmoError, match=r"^EvaluateConfig: fdr_max: .*number"):
        EvaluateConfig.build(fdr_max="low")
