"""`emo run` spot-level study on real her2st data: train B4,C2 → predict C4; a second run skips everything."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from emo.errors import EmoError
from emo.expression import read_her2st
from emo.run import SPOT_TEMPLATE, load_study, parse_study, run_study

pytestmark = pytest.mark.slow  # a spot-level study on real her2st sections


ROOT = Path(__file__).resolve().parents[1]


def _study(tmp_path: Path, data: Path, genes: Path) -> Path:
    study = {
        "out": "out",
        "spots": {"data_dir": str(data), "train_sections": ["B4", "C2"], "test_sections": ["C4"], "genes": str(genes),
                    "tile_sizes_um": [224], "basis_sections": ["B1", "G2"]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_spatial_study_runs_then_skips(shared_data, tmp_path):
    data = shared_data("her2st")
    for name in ("images/B4.jpg", "images/C2.jpg", "images/C4.jpg"):
        shared_data(f"her2st/{name}")
    genes_file = shared_data("her2st/hist2st_785_genes.txt")
    config = load_study(_study(tmp_path, data, genes_file))
    status = run_study(config)
    assert status == dict.fromkeys(["spot_train", "spot_predict", "spot_evaluate", "report"], "ran")

    out = tmp_path / "out"
    genes = genes_file.read_text().split()
    pred = pd.read_csv(out / "spot_predictions" / "C4.csv", index_col=0)
    section = read_her2st(data, "C4")  # spots with both counts and a position
    assert list(pred.index) == list(section.obs_names) and len(pred) > 100
    assert pred.index.str.fullmatch(r"\d+x\d+").all() and set(genes) <= set(pred.columns)
    sections = pd.read_csv(out / "spot_evaluate" / "sections.csv").set_index("section")
    print(f"\nemo run spatial B4,C2 → C4: {sections.loc['C4'].to_dict()}")
    assert sections.loc["C4", "n_genes"] == len(genes) and sections.loc["C4", "n_spots"] == len(pred)
    assert sections.loc["C4", "mean_r"] > 0.05
    assert (out / "spot_evaluate" / "r_histogram.png").stat().st_size > 0
    page = (out / "report.html").read_text()
    assert "Spot-level prediction" in page
    # maps of measured and predicted expression over the H&E, linked to their file; plain labels
    assert 'href="spot_evaluate/maps_C4.png"' in page and "measured (top) and predicted (bottom)" in page
    assert "n_fdr05" not in page and "genes with FDR &lt; 0.05" in page
    from PIL import Image

    assert Image.open(out / "spot_evaluate" / "maps_C4.png").size[0] > 1000

    import anndata

    from scverse_plots import assert_scanpy_and_squidpy_plot

    adata = anndata.read_h5ad(out / "spot_predictions" / "C4.h5ad")
    assert list(adata.obs_names) == list(pred.index) and list(adata.var_names) == list(pred.columns)
    assert abs(adata.X - pred.to_numpy(dtype="float32")).max() < 1e-6
    assert adata.obsm["spatial"].tolist() == section.obsm["spatial"].tolist()
    best = pd.read_csv(out / "spot_evaluate" / "genes_C4.csv").sort_values("r").gene.iloc[-1]
    assert_scanpy_and_squidpy_plot(adata, best)

    records = {p.name: p.read_text() for p in (out / ".emo" / "stages").glob("*.json")}
    outputs = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and ".emo" not in p.parts}
    again = run_study(load_study(tmp_path / "study.yaml"))
    assert set(again.values()) == {"skipped"}
    assert {p.name: p.read_text() for p in (out / ".emo" / "stages").glob("*.json")} == records
    assert {p: p.stat().st_mtime_ns for p in outputs} == outputs  # nothing recomputed or rewritten
    assert json.loads(records["spot_train.json"])["params"]["train_sections"] == ["B4", "C2"]


def test_spatial_study_config_errors(shared_data, tmp_path):
    data = shared_data("her2st")
    with pytest.raises(EmoError, match="also train_sections"):
        parse_study({"spatial": {"data_dir": str(data), "train_sections": ["B4"], "test_sections": ["B4"], "genes": "pam50"}})
    with pytest.raises(EmoError, match=r"\['C4'\] are test_sections.*remove them from basis_sections"):
        parse_study({"spatial": {"data_dir": str(data), "train_sections": ["B4"], "test_sections": ["C4"], "genes": "pam50",
                                 "basis_sections": ["B1", "C4"]}})
    config = parse_study({"spatial": {"data_dir": str(data), "train_sections": ["A3"], "test_sections": ["C4"], "genes": "pam50"}},
                         base_dir=tmp_path)
    with pytest.raises(EmoError, match="section A3 has no image"):
        run_study(config)
    with pytest.raises(EmoError, match="unknown key 'spatial.tile_size_um'"):
        parse_study({"spatial": {"data_dir": ".", "train_sections": ["B4"], "test_sections": ["C4"], "genes": "x",
                                 "tile_size_um": [224]}})


def test_her2st_example_and_init_spatial_template_parse(tmp_path):
    from typer.testing import CliRunner

    from emo.cli import app

    config = load_study(ROOT / "docs" / "her2st-study.yaml")
    assert config.spots.test_sections == ["C4"] and config.spots.tile_sizes_um == (224, 100, 448)
    result = CliRunner().invoke(app, ["init", str(tmp_path / "s.yaml"), "--spatial"])
    assert result.exit_code == 0, result.output
    written = load_study(tmp_path / "s.yaml")
    assert written.spots.train_sections == ["B4", "C2", "C3"] and written.spots.data_dir == "her2st"
    # every key of the spot study is in the template, and the spot model's keys are SpotModelConfig's
    from emo.models.spot import SpotModelConfig

    assert set(yaml.safe_load(SPOT_TEMPLATE)["spots"]) == set(written.spots.model_dump())
    assert written.spots.spot_model() == SpotModelConfig()


def test_old_spatial_key_is_read_and_a_gene_typo_fails_at_parse_time(shared_data, tmp_path):
    import time

    data = shared_data("her2st")
    old = {"spatial": {"data_dir": str(data), "train_sections": ["B4"], "test_sections": ["C4"], "genes": "ERBB2"}}
    assert parse_study(old, base_dir=tmp_path).spots.train_sections == ["B4"]
    start = time.monotonic()
    with pytest.raises(EmoError, match="spots: gene\\(s\\) ERBB22 not measured in section\\(s\\) B4"):
        run_study(load_study(_study(tmp_path, data, "ERBB2,ERBB22")))  # checked before any stage
    assert time.monotonic() - start < 15
