"""`emo report`: one offline HTML page with embedded figures summarising whatever a run folder holds."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from synthetic_evaluate import make_evaluation_data

from emo.analysis import evaluate, spatial_validation
from emo.reports import build_report, register_section
from emo.reports.registry import SECTIONS


def _png(path, colour=(200, 30, 30)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    data = make_evaluation_data(run / "data")
    pd.DataFrame({"slide_id": ["s1", "s2"], "n_tiles": [120, 80], "n_dropped_background": [300, 210]}).to_csv(
        run / "tiles" / "summary.csv" if _png(run / "tiles" / "s1.png") else None, index=False)
    (run / "model").mkdir()
    (run / "model" / "manifest.json").write_text(json.dumps(
        {"emo_version": "0.1.0", "kind": "ridge", "backbone": {"name": "efficientnet_lite0"}, "genes": ["A", "B"],
         "tuning_metrics": {"mean_r": 0.31}}))
    evaluate(data["csv"], data["targets"], "validation", run / "evaluate" / "validation", null_predictions=data["null"])
    rng = np.random.default_rng(0)
    slide = np.repeat(np.arange(6), 8)
    pred = rng.normal(size=slide.size)
    table = pd.DataFrame({"slide_id": slide.astype(str), "roi_id": np.tile(np.arange(8), 6).astype(str), "gene": "CD3E",
                          "measured": pred + rng.normal(size=6)[slide] + 0.5 * rng.normal(size=slide.size), "predicted": pred})
    spatial_validation(table, run / "analyze" / "spatial-validation")
    custom = run / "analyze" / "custom"  # an analysis without a section of its own: the generic one shows it
    _png(custom / "heatmap.png", (30, 30, 200))
    pd.DataFrame({"k": [4], "score": [0.42]}).to_csv(custom / "scores.csv", index=False)
    (custom / "params.json").write_text(json.dumps({"k": 4, "seed": 0}))
    return run


def test_report_is_self_contained_with_every_section(run_dir, tmp_path):
    out = build_report(run_dir, tmp_path / "report.html")
    page = out.read_text()
    assert not re.search(r"https?://", page), "the report must not reference anything online"
    assert "<script" not in page and "<link" not in page
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    pngs = list(run_dir.rglob("*.png"))
    assert len(srcs) == len(pngs) >= 8
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for s in srcs)
    for title in ("Tiling QC", "Training targets", "Model", "Validation and test", "Spatial validation", "Analyses"):
        assert f"<h2>{title}" in page, title
    assert "efficientnet_lite0" in page and "scores.csv" in page and "null 95 % interval" in page
    # The spatial-validation folder sits under analyze/ but is reported once, by its own section.
    assert page.count("analyze/spatial-validation</h3>") + page.count("<code>analyze/spatial-validation</code>") == 1


def test_sections_are_a_registry_and_failures_stay_local(run_dir, tmp_path):
    @register_section("custom_test", title="Custom stage", order=95, find=lambda d: [d / "custom"])
    def custom(path, run):
        return f"<p>custom {path.name}</p>"

    @register_section("broken_test", title="Broken stage", order=96, find=lambda d: [d / "model"])
    def broken(path, run):
        raise ValueError("bad artifact")

    try:
        page = build_report(run_dir, tmp_path / "r.html").read_text()
    finally:
        SECTIONS.pop("custom_test")
        SECTIONS.pop("broken_test")
    assert "<h2>Custom stage</h2>" in page and "custom custom" in page
    assert "could not render model: ValueError: bad artifact" in page and "<h2>Tiling QC" in page


def test_empty_run_and_cli(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "Nothing to report" in build_report(empty).read_text()
    res = subprocess.run([sys.executable, "-m", "emo", "report", str(empty), "--out", str(tmp_path / "x.html")],
                         capture_output=True, text=True)
    assert res.returncode == 0 and (tmp_path / "x.html").exists(), res.stderr
    res = subprocess.run([sys.executable, "-m", "emo", "report", str(tmp_path / "missing")], capture_output=True, text=True)
    assert res.returncode == 2 and "not a folder" in res.stderr
