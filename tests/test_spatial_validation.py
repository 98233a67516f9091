"""Spatial validation: ROI building, GeoMx normalisation, ML mixed models with LRT, per-slide Spearman."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from emo.analysis.roi_validation import (
    GENE_COLUMNS,
    ROI_COLUMNS,
    SPEARMAN_COLUMNS,
    build_rois,
    fit_lme,
    geomx_normalise,
    spatial_validation,
)
from emo.errors import EmoError
from emo.panels import composite_probes


def simulate(rng, beta, n_slides=12, n_rois=12, sd_slide=1.0, sd=0.5, gene="G"):
    """measured = 1 + beta·predicted + slide intercept + noise; predictions vary within and between slides."""
    slide = np.repeat(np.arange(n_slides), n_rois)
    predicted = rng.normal(size=slide.size) + 0.7 * rng.normal(size=n_slides)[slide]
    measured = 1.0 + beta * predicted + sd_slide * rng.normal(size=n_slides)[slide] + sd * rng.normal(size=slide.size)
    return pd.DataFrame({"slide_id": [f"S{s:02d}" for s in slide], "roi_id": [f"R{i % n_rois}" for i in range(slide.size)],
                         "gene": gene, "measured": measured, "predicted": predicted})


def test_known_fixed_effect_is_recovered_and_lrt_matches_statsmodels():
    import statsmodels.formula.api as smf

    d = simulate(np.random.default_rng(3), beta=0.4)
    res = fit_lme(d["measured"], d["predicted"], d["slide_id"])
    assert res["ci_low"] <= 0.4 <= res["ci_high"] and res["lrt_p"] < 1e-8 and res["converged"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = smf.mixedlm("measured ~ predicted", d, groups=d["slide_id"]).fit(reml=False)
        null = smf.mixedlm("measured ~ 1", d, groups=d["slide_id"]).fit(reml=False)
    assert res["lrt_stat"] == pytest.approx(2 * (full.llf - null.llf), rel=1e-6)
    assert res["lrt_p"] == pytest.approx(sps.chi2.sf(2 * (full.llf - null.llf), 1), rel=1e-5)
    assert res["coef"] == pytest.approx(full.params["predicted"], rel=1e-6)
    assert [res["ci_low"], res["ci_high"]] == pytest.approx(list(full.conf_int().loc["predicted"]), rel=1e-6)


def test_lrt_p_values_are_calibrated_under_the_null():
    rng = np.random.default_rng(7)
    p = np.array([fit_lme(*simulate(rng, 0.0, n_slides=8, n_rois=10)[["measured", "predicted", "slide_id"]].T.to_numpy())["lrt_p"]
                  for _ in range(200)])
    lo, hi = sps.binom.interval(0.999, 200, 0.05)
    print(f"null: {np.mean(p < 0.05):.3f} of 200 LRT P < 0.05 (99.9 % interval {lo / 200:.3f}–{hi / 200:.3f})")
    assert lo <= (p < 0.05).sum() <= hi
    assert sps.kstest(p, "uniform").pvalue > 0.001


def test_spatial_validation_tables_figures_and_failures(tmp_path):
    rng = np.random.default_rng(11)
    frames = [simulate(rng, 0.5, gene="UP"), simulate(rng, -0.3, gene="DOWN"), simulate(rng, 0.0, gene="NONE")]
    flat = simulate(rng, 0.0, gene="FLAT")
    flat["measured"] = 3.0 + 1e-3 * rng.normal(size=len(flat))  # variance 1e-6 < 0.001: dropped like CCL5
    const = simulate(rng, 0.2, gene="CONSTPRED")
    const["predicted"] = 1.0  # a fit that cannot work is recorded, not raised
    table = pd.concat(frames + [flat, const], ignore_index=True)
    genes = spatial_validation(table, tmp_path)
    out = pd.read_csv(tmp_path / "genes.csv")
    assert list(out.columns) == GENE_COLUMNS
    assert set(out["gene"]) == {"UP", "DOWN", "NONE", "CONSTPRED"}
    g = out.set_index("gene")
    assert g.loc["UP", "fdr_bh"] < 1e-6 and g.loc["DOWN", "fdr_bh"] < 1e-3 and g.loc["DOWN", "coef"] < 0
    assert g.loc["NONE", "fdr_bh"] > 0.01
    assert np.isnan(g.loc["CONSTPRED", "lrt_p"])
    assert (g[["n_slides", "n_rois"]].loc["UP"] == [12, 144]).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dropped_low_variance"] == ["FLAT"] and "CONSTPRED" in summary["fit_notes"]
    assert genes.set_index("gene").loc["CONSTPRED", "note"] == "constant prediction"
    # Per-slide Spearman equals scipy on each slide.
    spear = pd.read_csv(tmp_path / "per_slide_spearman.csv")
    assert list(spear.columns) == SPEARMAN_COLUMNS
    up = frames[0][frames[0]["slide_id"] == "S03"]
    ref = sps.spearmanr(up["measured"], up["predicted"])
    row = spear[(spear["slide_id"] == "S03") & (spear["gene"] == "UP")].iloc[0]
    assert row["rho"] == pytest.approx(ref.statistic, abs=1e-12) and row["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    for name in ("lme_fdr.png", "within_slide_rho.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def _spatial_slide(path, slide_id, genes, rng, grid=10, step=100.0):
    """An EMO-spatial AnnData: tiles on a grid (centres in level-0 px), predictions per gene."""
    import anndata

    yy, xx = np.mgrid[0:grid, 0:grid]
    centres = np.column_stack([xx.ravel(), yy.ravel()]).astype(float) * step + step / 2
    obs = pd.DataFrame({"x_px": centres[:, 0] - step / 2, "y_px": centres[:, 1] - step / 2},
                       index=[f"{int(x)}_{int(y)}" for x, y in centres - step / 2])
    obs["x_um"], obs["y_um"] = obs["x_px"] * 0.5, obs["y_px"] * 0.5
    x = rng.normal(size=(grid * grid, len(genes))).astype(np.float32)
    ad = anndata.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes), obsm={"spatial": centres})
    ad.write_h5ad(path / f"{slide_id}.h5ad")
    return ad


def test_build_rois_from_geojson_and_spot_map(tmp_path):
    rng = np.random.default_rng(5)
    krt = composite_probes()["multi-KRT"]
    genes = ["CD3E", "MKI67"] + krt
    slides = {s: _spatial_slide(tmp_path, s, genes, rng) for s in ("A", "B")}
    # Two square ROIs per slide in level-0 px: [0, 300)² and [500, 800)² hold 3×3 tile centres each.
    squares = {"r1": (0, 300), "r2": (500, 800)}
    features = [
        {"type": "Feature", "properties": {"slide_id": s, "roi_id": r},
         "geometry": {"type": "Polygon", "coordinates": [[[a, a], [b, a], [b, b], [a, b], [a, a]]]}}
        for s in slides for r, (a, b) in squares.items()
    ]
    (tmp_path / "rois.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    raw = pd.DataFrame([
        {"slide_id": s, "roi_id": r, "CD3E": rng.integers(50, 500), "MKI67": rng.integers(50, 500),
         "Multi KRT": rng.integers(50, 500), "NegProbe-1": rng.integers(5, 20), "NegProbe-2": rng.integers(5, 20),
         "NOT_PREDICTED": 100}
        for s in slides for r in squares
    ])
    raw.to_csv(tmp_path / "measured.csv", index=False)
    long = build_rois(sorted(tmp_path.glob("*.h5ad")), tmp_path / "measured.csv", rois=tmp_path / "rois.geojson",
                      normalise_geomx=True, out=tmp_path / "rois.csv")
    assert list(long.columns) == ROI_COLUMNS and len(long) == 4 * 3
    assert set(long["gene"]) == {"CD3E", "MKI67", "Multi KRT"}
    assert long.attrs["unmatched_probes"] == ["NOT_PREDICTED"]
    ad = slides["B"]
    inside = (ad.obsm["spatial"][:, 0] < 300) & (ad.obsm["spatial"][:, 1] < 300)
    assert inside.sum() == 9
    row = long[(long.slide_id == "B") & (long.roi_id == "r1")].set_index("gene")
    assert row.loc["CD3E", "predicted"] == pytest.approx(float(ad[inside, "CD3E"].X.mean()), rel=1e-6)
    assert row.loc["Multi KRT", "predicted"] == pytest.approx(float(ad[inside, krt].X.sum(axis=1).mean()), rel=1e-5)
    r = raw[(raw.slide_id == "B") & (raw.roi_id == "r1")].iloc[0]
    assert row.loc["MKI67", "measured"] == pytest.approx(np.log2(r["MKI67"] / ((r["NegProbe-1"] + r["NegProbe-2"]) / 2)))
    # The same ROIs given as a tile → ROI map give the same table.
    centres = {s: ad.obsm["spatial"] for s, ad in slides.items()}
    mapping = pd.DataFrame([
        {"slide_id": s, "tile_id": tid, "roi_id": r}
        for s, ad in slides.items() for r, (a, b) in squares.items()
        for tid, (x, y) in zip(ad.obs_names, centres[s]) if a <= x < b and a <= y < b
    ])
    via_map = build_rois(sorted(tmp_path.glob("*.h5ad")), raw, spot_map=mapping, normalise_geomx=True)
    pd.testing.assert_frame_equal(long.sort_values(ROI_COLUMNS[:3]).reset_index(drop=True),
                                  via_map.sort_values(ROI_COLUMNS[:3]).reset_index(drop=True))
    with pytest.raises(EmoError, match="negative-control"):
        geomx_normalise(raw.set_index(["slide_id", "roi_id"]).drop(columns=["NegProbe-1", "NegProbe-2"]))


def test_cli_contract(tmp_path):
    rng = np.random.default_rng(2)
    table = pd.concat([simulate(rng, 0.5, n_slides=6, gene="UP"), simulate(rng, 0.0, n_slides=6, gene="NONE")])
    table.to_csv(tmp_path / "rois.csv", index=False)
    res = subprocess.run([sys.executable, "-m", "emo", "analyze", "spatial-validation", "--table", str(tmp_path / "rois.csv"),
                          "--out", str(tmp_path / "sv")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert list(pd.read_csv(tmp_path / "sv" / "genes.csv").columns) == GENE_COLUMNS
    assert list(pd.read_csv(tmp_path / "sv" / "per_slide_spearman.csv").columns) == SPEARMAN_COLUMNS
    table.drop(columns="predicted").to_csv(tmp_path / "bad.csv", index=False)
    res = subprocess.run([sys.executable, "-m", "emo", "analyze", "spatial-validation", "--table", str(tmp_path / "bad.csv"),
                          "--out", str(tmp_path / "sv2")], capture_output=True, text=True)
    assert res.returncode == 2 and "missing columns ['predicted']" in res.stderr


def test_build_rois_cli(tmp_path):
    from typer.testing import CliRunner

    import emo.cli  # noqa: F401 — registers the commands
    from emo.cli._apps import app

    rng = np.random.default_rng(4)
    (tmp_path / "spatial").mkdir()
    ad = _spatial_slide(tmp_path / "spatial", "S1", ["CD3E", "MS4A1"], rng)
    mapping = pd.DataFrame({"slide_id": "S1", "spot_id": ad.obs_names[:40], "roi_id": np.repeat(["a", "b", "c", "d"], 10)})
    mapping.to_csv(tmp_path / "map.csv", index=False)
    pd.DataFrame({"slide_id": "S1", "roi_id": list("abcde"), "CD3E": rng.normal(size=5), "PTPRC": 1.0}).to_csv(
        tmp_path / "measured.csv", index=False)
    res = CliRunner().invoke(app, ["analyze", "build-rois", "--spatial", str(tmp_path / "spatial"), "--measured",
                                   str(tmp_path / "measured.csv"), "--spot-map", str(tmp_path / "map.csv"),
                                   "--out", str(tmp_path / "rois.csv")])
    assert res.exit_code == 0, res.output
    assert "left out: PTPRC" in res.output and "1 measured ROIs have no tile" in res.output
    long = pd.read_csv(tmp_path / "rois.csv")
    assert list(long.columns) == ROI_COLUMNS and sorted(long["roi_id"]) == list("abcd")
    b = long[long["roi_id"] == "b"].iloc[0]
    assert b["predicted"] == pytest.approx(float(ad.X[10:20, 0].mean()), rel=1e-6)
