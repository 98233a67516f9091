"""Matrix readers, gene ids and bad input: every bad file gives one line naming file/sample/gene, exit 2."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from emo.errors import EmoError
from emo.expression import read_matrix
from emo.expression.genes import normalize_genes
from emo.expression.splits import split_sequence

GENES = [f"G{i}" for i in range(30)]


@pytest.fixture
def cohorts(tmp_path):
    """Two small cohorts (log-scale A, counts B) and their sheet, written by code."""
    rng = np.random.default_rng(0)
    a = pd.DataFrame(rng.normal(5, 1, (30, 12)), index=GENES, columns=[f"a{i}" for i in range(12)])
    b = pd.DataFrame(rng.poisson(50, (30, 10)), index=GENES, columns=[f"b{i}" for i in range(10)])
    a.to_csv(tmp_path / "a.tsv", sep="\t", index_label="gene")
    b.to_csv(tmp_path / "b.csv.gz", index_label="gene")
    sheet = pd.DataFrame({"sample_id": [*a.columns, *b.columns], "patient_id": [*a.columns, *b.columns],
                          "cohort": ["A"] * 12 + ["B"] * 10})
    sheet.to_csv(tmp_path / "sheet.csv", index=False)
    return tmp_path, a, b


def _cli(tmp, *extra, matrix="a.tsv", counts="b.csv.gz", sheet="sheet.csv"):
    """Run `emo expression prepare` through the real entry point (in-process: subprocesses are slow here)."""
    import contextlib
    import io

    from emo.cli import main

    argv = ["emo", "expression", "prepare", "--matrix", str(tmp / matrix), "--counts-matrix", str(tmp / counts),
            "--samples", str(tmp / sheet), "--reference-cohort", "B", "--out", str(tmp / "out" / "t.h5ad"), *extra]
    out, err = io.StringIO(), io.StringIO()
    old, sys.argv = sys.argv, argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = old
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def _assert_one_line_error(res, *words):
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_cli_happy_path_on_generated_cohorts(cohorts):
    tmp, a, b = cohorts
    res = _cli(tmp)
    assert res.returncode == 0, res.stderr
    out = ad.read_h5ad(tmp / "out" / "t.h5ad")
    assert out.shape == (22, 30) and list(out.var_names) == GENES


@pytest.mark.parametrize("case", ["non_numeric", "nan", "inf"])
def test_bad_values_name_file_sample_gene(cohorts, case):
    tmp, a, _ = cohorts
    bad = a.astype(object)
    bad.loc["G7", "a3"] = {"non_numeric": "high", "nan": np.nan, "inf": np.inf}[case]
    bad.to_csv(tmp / "a.tsv", sep="\t", index_label="gene")
    _assert_one_line_error(_cli(tmp), "a.tsv", "a3", "G7")


def test_negative_counts_rejected(cohorts):
    tmp, _, b = cohorts
    b.loc["G4", "b2"] = -3
    b.to_csv(tmp / "b.csv.gz", index_label="gene")
    _assert_one_line_error(_cli(tmp), "b.csv.gz", "b2", "G4", "negative")
    # The same through a real process: exit status 2, one line, no traceback.
    res = subprocess.run([sys.executable, "-m", "emo", *_cli(tmp).args[1:]], capture_output=True, text=True)
    _assert_one_line_error(res, "b.csv.gz", "b2", "G4")


def test_duplicated_sample_ids(cohorts):
    tmp, a, _ = cohorts
    a.rename(columns={"a5": "a4"}).to_csv(tmp / "a.tsv", sep="\t", index_label="gene")
    _assert_one_line_error(_cli(tmp), "a.tsv", "a4")
    # The same sample in two matrices is a duplicate too.
    a.rename(columns={"a0": "b0"}).to_csv(tmp / "a.tsv", sep="\t", index_label="gene")
    _assert_one_line_error(_cli(tmp), "b0", "a.tsv", "b.csv.gz")


def test_empty_gene_intersection(cohorts):
    tmp, a, _ = cohorts
    a.rename(index=lambda g: f"ENSG{int(g[1:]):011d}.3").to_csv(tmp / "a.tsv", sep="\t", index_label="gene")
    _assert_one_line_error(_cli(tmp), "no gene is shared", "a.tsv", "ENSG00000000000")


def test_sheet_problems(cohorts):
    tmp, _, _ = cohorts
    sheet = pd.read_csv(tmp / "sheet.csv")
    sheet.drop(columns="patient_id").to_csv(tmp / "bad.csv", index=False)
    _assert_one_line_error(_cli(tmp, sheet="bad.csv"), "bad.csv", "patient_id")
    sheet.assign(patient_id=lambda s: s["patient_id"].replace({"a1": "a0"})).to_csv(tmp / "dup.csv", index=False)
    _assert_one_line_error(_cli(tmp, sheet="dup.csv"), "a0", "--on-duplicate")
    assert _cli(tmp, "--on-duplicate", "first", sheet="dup.csv").returncode == 0
    _assert_one_line_error(_cli(tmp, "--reference-cohort", "C"), "'C'")


def test_mismatch_report(cohorts):
    tmp, _, _ = cohorts
    sheet = pd.read_csv(tmp / "sheet.csv")
    extra = pd.DataFrame({"sample_id": ["zz"], "patient_id": ["zz"], "cohort": ["A"]})
    pd.concat([sheet[sheet["sample_id"] != "a2"], extra]).to_csv(tmp / "sheet.csv", index=False)
    res = _cli(tmp)
    assert res.returncode == 0, res.stderr
    report = pd.read_csv(tmp / "out" / "t.mismatches.csv")
    assert set(zip(report["kind"], report["sample_id"])) == {("sample_without_expression", "zz"),
                                                             ("expression_without_sample", "a2")}
    assert "mismatch" in res.stdout


@pytest.mark.parametrize("fmt", ["csv", "parquet", "h5ad", "tsv.gz"])
def test_readers_and_orientation(tmp_path, fmt):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(5, 40)), index=[f"s{i}" for i in range(5)], columns=[f"g{i}" for i in range(40)])
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        frame.to_csv(path)
    elif fmt == "tsv.gz":
        frame.T.to_csv(path, sep="\t")  # genes × samples
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        ad.AnnData(frame).write_h5ad(path)
    got = read_matrix(path, sample_ids=list(frame.index))
    assert got.shape == (40, 5) and list(got.columns) == list(frame.index)
    np.testing.assert_allclose(got.to_numpy(), frame.T.to_numpy())
    if fmt == "csv":
        assert read_matrix(path, orientation="genes-by-samples").shape == (5, 40)
        with pytest.raises(EmoError, match="m.csv"):
            read_matrix(path, sample_ids=["nope"])


def test_gene_ids_renames_and_duplicate_rule():
    frame = pd.DataFrame({"x": [1.0, 5.0, 2.0, 7.0, 3.0], "y": [1.0, 3.0, 2.0, 9.0, 3.0]},
                         index=["ENSG00000141510.16", "CDCA1", "NUF2", " ESR1 ", "ORC6L"])
    logs, changes = normalize_genes(frame, counts=False)
    assert list(logs.index) == ["ENSG00000141510", "NUF2", "ESR1", "ORC6"]
    assert logs.loc["NUF2"].tolist() == [5.0, 3.0]  # highest-mean row wins for log-scale values
    assert changes["collapsed_duplicates"] == ["NUF2"] and "CDCA1→NUF2" in changes["renamed"]
    counts, _ = normalize_genes(frame, counts=True)
    assert counts.loc["NUF2"].tolist() == [7.0, 5.0]  # counts of one gene are summed


def test_split_sequence_stays_within_one_patient():
    f = np.array([0.563, 0.140, 0.123, 0.174])
    for n in range(1, 300):
        counts = np.bincount(split_sequence(n), minlength=4)
        assert np.abs(counts - n * f).max() < 1


def test_slides_matching(cohorts):
    tmp, _, _ = cohorts
    sheet = pd.read_csv(tmp / "sheet.csv")
    sheet["slide_id"] = [f"S_{s}" for s in sheet["sample_id"]]
    sheet.loc[sheet["sample_id"] == "a1", "slide_id"] = None
    second = sheet[sheet["sample_id"] == "a0"].assign(slide_id="S_a0_second")  # one sample, two slides
    pd.concat([sheet, second]).to_csv(tmp / "sheet.csv", index=False)
    (tmp / "slides").mkdir()
    for name in ("S_a0.svs", "S_a0_second.svs", "S_orphan.svs", *(f"S_b{i}.ndpi" for i in range(10))):
        (tmp / "slides" / name).write_bytes(b"")
    res = _cli(tmp, "--slides", str(tmp / "slides"))
    assert res.returncode == 0, res.stderr
    out = ad.read_h5ad(tmp / "out" / "t.h5ad")
    assert out.n_obs == 22 and out.obs.loc["a0", "slide_id"] == "S_a0;S_a0_second"
    report = pd.read_csv(tmp / "out" / "t.mismatches.csv")
    kinds = report.groupby("kind").size().to_dict()
    assert kinds == {"sample_without_slide": 1, "slide_not_found": 10, "slide_without_sample": 1}
    assert report.loc[report["kind"] == "slide_without_sample", "slide_id"].str.endswith("S_orphan.svs").all()
    # One slide claimed by two samples is ambiguous.
    sheet.loc[sheet["sample_id"] == "a3", "slide_id"] = "S_a2"
    sheet.to_csv(tmp / "sheet.csv", index=False)
    _assert_one_line_error(_cli(tmp), "S_a2", "a2", "a3", "--on-duplicate")


def test_parquet_with_label_column(tmp_path):
    frame = pd.DataFrame({"gene": ["TP53", "ESR1", "ERBB2"], "s1": [1.0, 2.0, 3.0], "s2": [4.0, 5.0, 6.0]})
    frame.to_parquet(tmp_path / "m.parquet")  # labels as a column, RangeIndex
    got = read_matrix(tmp_path / "m.parquet", sample_ids=["s1", "s2"])
    assert list(got.index) == ["TP53", "ESR1", "ERBB2"] and got.loc["ESR1", "s2"] == 5.0


def test_one_orientation_vocabulary_for_prepare_and_analyses(tmp_path):
    """`auto` reads the first header when there is no sheet; the analyses' old genes/samples are aliases."""
    from emo.analysis.bulk import load_expression

    frame = pd.DataFrame({"gene": ["TP53", "ESR1", "ERBB2"], "s1": [1.0, 2.0, 3.0], "s2": [4.0, 5.0, 6.0]})
    frame.to_csv(tmp_path / "genes_rows.csv", index=False)
    frame.set_index("gene").T.rename_axis("sample_id").to_csv(tmp_path / "samples_rows.csv")
    for name in ("genes_rows.csv", "samples_rows.csv"):
        got = read_matrix(tmp_path / name)
        assert list(got.index) == ["TP53", "ESR1", "ERBB2"] and got.loc["ESR1", "s2"] == 5.0, name
        assert load_expression(tmp_path / name).data.loc["s2", "ESR1"] == 5.0, name
    stated = read_matrix(tmp_path / "samples_rows.csv", orientation="samples")  # old spelling
    assert stated.equals(read_matrix(tmp_path / "samples_rows.csv", orientation="samples-by-genes"))
    frame.rename(columns={"gene": "id"}).to_csv(tmp_path / "unclear.csv", index=False)
    with pytest.raises(EmoError, match=r"unclear.csv: cannot tell .*--orientation genes-by-samples"):
        read_matrix(tmp_path / "unclear.csv")
    assert load_expression(tmp_path / "unclear.csv", orientation="genes").data.shape == (2, 3)
    with pytest.raises(EmoError, match="orientation 'sideways' unknown"):
        read_matrix(tmp_path / "unclear.csv", orientation="sideways")
