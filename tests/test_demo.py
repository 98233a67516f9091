"""Demo cohort: real H&E pseudo-slides that OpenSlide reads with their µm/px, and expression whose
planted genes follow the documented morphology measurements (re-measured here from the written
slides) while noise genes do not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emo.errors import EmoError


pytestmark = pytest.mark.slow  # the whole demo study (tiling, features, 11 heads, report) end to end


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, demo_source_slide):
    from emo.demo import make_demo_cohort

    out = tmp_path_factory.mktemp("demo")
    return make_demo_cohort(out, n_slides=8, grid=(2, 3), n_noise_genes=10, seed=1)


def test_slides_are_pyramids_openslide_reads_with_mpp(cohort):
    import openslide

    slides = sorted(cohort["slides"].glob("*.tiff"))
    assert [s.stem for s in slides] == [f"demo_{i:02d}" for i in range(1, 9)]
    slide = openslide.OpenSlide(str(slides[0]))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.499, abs=1e-3)
    assert slide.dimensions == (3 * 512, 2 * 512) and slide.level_count == 3
    assert slide.level_downsamples[1] == pytest.approx(2)
    full = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"), dtype=float)
    half = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]).convert("RGB"), dtype=float)
    box = full.reshape(half.shape[0], 2, half.shape[1], 2, 3).mean(axis=(1, 3))
    assert np.abs(box - half).mean() < 4  # level 1 is the level-0 image, halved
    assert full.std() > 20  # real tissue, not a flat canvas


def test_planted_genes_follow_remeasured_morphology_and_noise_genes_do_not(cohort):
    import openslide

    from emo.demo import morphology

    planted = json.loads(cohort["planted"].read_text())
    recorded = pd.read_csv(cohort["morphology"], index_col="slide_id")
    # re-measure from the JPEG-compressed slides as OpenSlide returns them
    threshold = float(planted["description"].split("OD > ")[1].split(",")[0])
    remeasured = {}
    for slide_id in recorded.index:
        s = openslide.OpenSlide(str(cohort["slides"] / f"{slide_id}.tiff"))
        rgb = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
        glass = np.abs(rgb.astype(float) - 242).mean(axis=2).reshape(2, 512, 3, 512).mean(axis=(1, 3)) < 3
        placed = (~glass).repeat(512, 0).repeat(512, 1)
        remeasured[slide_id] = morphology(rgb, threshold, placed)
    remeasured = pd.DataFrame.from_dict(remeasured, orient="index")
    for column in ("haematoxylin_od", "nuclear_fraction", "tissue_density", "texture"):
        assert np.corrcoef(remeasured[column], recorded[column])[0, 1] > 0.97, column

    expression = pd.read_csv(cohort["expression"], sep=None, engine="python", index_col="gene")
    samples = pd.read_csv(cohort["samples"], sep=None, engine="python")
    assert list(expression.columns) == list(samples["sample_id"])
    assert list(samples["slide_id"]) == list(recorded.index)
    z = (recorded - recorded.mean()) / recorded.std(ddof=0)
    residuals = []
    for gene, spec in planted["planted_genes"].items():
        r = np.corrcoef(expression.loc[gene], z[spec["measurement"]])[0, 1]
        assert np.sign(r) == np.sign(spec["weight"]) and abs(r) > 0.6, gene
        residuals.append(expression.loc[gene].to_numpy() - 6.0 - spec["weight"] * z[spec["measurement"]].to_numpy())
    # the documented formula, solved back: what is left is noise of the documented size
    assert np.std(residuals) == pytest.approx(planted["planted_genes"][gene]["noise_sd"], rel=0.3)
    noise = expression.loc[planted["noise_genes"]]
    assert len(noise) == 10 and not set(noise.index) & set(planted["planted_genes"])
    assert noise.std(axis=1).between(0.4, 1.8).all()


def test_demo_study_file_is_a_valid_study_over_the_written_slides(cohort):
    from emo.run import load_study

    study = load_study(cohort["study"])
    assert [p.name for p in study.slide_paths()] == [f"demo_{i:02d}.tiff" for i in range(1, 9)]
    assert study.path(study.expression.matrices[0]) == cohort["expression"]
    assert study.path(study.expression.samples) == cohort["samples"]
    assert study.slides.tile_size_um == 128


def test_missing_source_without_download_is_a_clear_error(monkeypatch, tmp_path):
    import emo.demo

    monkeypatch.setattr(emo.demo, "_candidates", lambda: [tmp_path / "nowhere.svs"])
    with pytest.raises(EmoError, match="re-run with --download"):
        emo.demo.find_source_slide(download=False)


# ---------------------------------------------------------------- `emo demo` / `emo run` end to end

DEMO_SLIDES = 48  # the default demo: its numbers are the ones users see


def _emo(*args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "emo", *args], capture_output=True, text=True, env=env, **kw)


def _stage_records(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {p.stem: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((run_dir / ".emo" / "stages").glob("*.json"))}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_source_slide):
    out = tmp_path_factory.mktemp("emo-demo")
    done = _emo("demo", "--out", str(out), "--slides", str(DEMO_SLIDES))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_demo_recovers_planted_genes_on_held_out_slides_and_not_noise(demo_run):
    out, done = demo_run
    assert done.stdout.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    planted = json.loads((out / "planted.json").read_text())
    genes = pd.read_csv(out / "evaluate" / "test" / "genes.csv").set_index("gene")
    null = pd.read_csv(out / "evaluate" / "test" / "genes_null.csv").set_index("gene")
    summary = json.loads((out / "evaluate" / "test" / "summary.json").read_text())
    assert summary["n_samples"] >= 10  # held-out slides only: never in train/tune
    planted_genes, noise_genes = list(planted["planted_genes"]), planted["noise_genes"]
    assert set(genes.index) == set(planted_genes) | set(noise_genes)
    rho, r2 = genes["spearman_rho"], genes["r2"]
    assert rho[planted_genes].mean() > 0.5, rho[planted_genes]
    assert abs(rho[noise_genes].mean()) < 0.25, rho[noise_genes]
    assert r2[planted_genes].median() > 0.5 and r2[noise_genes].median() < 0.1, (r2[planted_genes], r2[noise_genes])
    # the null heads (labels permuted between patients) explain little held-out variance of the planted genes
    assert null.loc[planted_genes, "r2"].median() < 0.2, null.loc[planted_genes]
    # the model's count of genes at FDR < 0.05 lies above the null distribution's 95 % interval
    fdr = summary["null"]["counts"]["fdr_lt_0.05"]
    assert summary["null"]["n_permutations"] == 10 and fdr["model"] > fdr["null_high"], fdr


def test_demo_report_has_the_demo_section_with_figures(demo_run):
    out, _ = demo_run
    page = (out / "report.html").read_text()
    for section in ('id="stages"', 'id="demo"', 'id="evaluate"', 'id="tiles"', 'id="model"', 'id="targets"'):
        assert section in page, section
    demo = page[page.index('id="demo"'):page.index("</section>", page.index('id="demo"'))]
    assert "synthetic" in demo and "Nothing here is a biological finding" in demo
    assert demo.count("data:image/png;base64,") == 1 and "MORPH_TEXTURE_1" in demo
    assert page.count("data:image/png;base64,") >= 5
    assert "http://" not in page.replace("http://www.w3.org", "") and "<script" not in page


def _section(page: str, name: str) -> str:
    start = page.index(f'id="{name}"')
    return page[start:page.index("</section>", start)]


def test_demo_report_reads_for_a_pathologist(demo_run):
    """Maps of the top genes over the H&E, a model summary in words with provenance folded away, plain
    labels, the empty panel table explained, every figure linked to an existing file, one <h2> per section."""
    import re
    from urllib.parse import unquote

    out, _ = demo_run
    page = (out / "report.html").read_text()
    assert page.count("<h2>") == page.count("<section ")  # fragments add no headings of their own
    predictions = _section(page, "predictions")
    assert "data:image/png;base64," in predictions and "Predicted expression per tile over the H&amp;E" in predictions
    assert re.search(r'href="predictions/spatial/demo_\d+\.h5ad"', predictions)
    model = _section(page, "model")
    for label in ("image features", "efficientnet_lite0, 1280-dimensional", "penalty range", "training data"):
        assert label in model, label
    assert "<details><summary>provenance" in model and "params_hash" in model.split("<details><summary>provenance")[1]
    evaluate = _section(page, "evaluate")
    assert "fdr_lt_" not in page and "genes with FDR &lt; 0.05" in evaluate
    assert "No gene of these clinical panels is among the evaluated genes" in evaluate
    assert "null 95 % interval" in evaluate and "fitted 10 times on labels exchanged between whole patients" in evaluate
    assert "No validation split selected genes" in evaluate
    best = evaluate[evaluate.index("best genes: validated"):]
    best = best[:best.index("</table>")]
    assert "NOISE_" not in best and "selected on validation" not in best  # only genes passing the rule
    assert "log scale" in predictions  # colour bars carry the unit
    figures = re.findall(r"<figure.*?</figure>", page, flags=re.S)
    assert len(figures) >= 5
    for fig in figures:
        links = re.findall(r'href="([^"]+)"', fig)
        assert links, fig[:200]
        assert all((out / unquote(link)).is_file() for link in links), links


def test_demo_outputs_open_in_scanpy_squidpy_and_qupath(demo_run):
    import anndata

    from scverse_plots import assert_scanpy_and_squidpy_plot

    out, _ = demo_run
    adata = anndata.read_h5ad(out / "predictions" / "spatial" / "demo_01.h5ad")
    lib = adata.uns["spatial"]["demo_01"]
    import openslide

    width = openslide.OpenSlide(str(out / "slides" / "demo_01.tiff")).dimensions[0]
    assert lib["images"]["hires"].shape[1] == round(width * lib["scalefactors"]["tissue_hires_scalef"])
    assert_scanpy_and_squidpy_plot(adata, "MORPH_DENSITY_1")
    geo = json.loads((out / "predictions" / "geojson" / "demo_01.geojson").read_text())
    assert len(geo["features"]) == adata.n_obs
    props = geo["features"][0]["properties"]
    assert len(props["measurements"]) == 5  # no genes chosen: the five best by tuning ρ
    first = next(iter(props["measurements"]))
    assert props["classification"]["name"].startswith(f"{first}: ") and props["classification"]["name"].endswith("in this slide")


def test_second_demo_run_skips_every_stage(demo_run):
    out, _ = demo_run
    before = _stage_records(out)
    again = _emo("demo", "--out", str(out), "--slides", str(DEMO_SLIDES))
    assert again.returncode == 0, again.stderr[-2000:]
    assert before and _stage_records(out) == before  # no stage record rewritten
    lines = [x for x in again.stderr.splitlines() if x.startswith("stage ")]
    assert len(lines) == 8 and all("up to date, skipped" in x for x in lines), lines  # analyze: not configured


def test_killed_run_resumes_without_redoing_finished_slides(tmp_path, demo_source_slide):
    """SIGKILL during the features stage; the re-run keeps every finished tile store and feature file
    (same inode and mtime), skips the tile stage and completes."""
    import signal
    import time

    from emo.demo import make_demo_cohort

    paths = make_demo_cohort(tmp_path, n_slides=8, grid=(2, 2), n_noise_genes=4, seed=2)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "emo", "run", str(paths["study"])], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    features = tmp_path / "features" / "efficientnet_lite0"
    deadline = time.monotonic() + 300
    while not list(features.glob("*.h5")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_features = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in features.glob("*.h5")}
    assert 1 <= len(finished_features) < 8, "kill the run while the features stage is in flight"
    tiles = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "tiles").glob("*.h5")}
    records = _stage_records(tmp_path)
    assert list(records) == ["tile"] and len(tiles) == 8

    done = _emo("run", str(paths["study"]))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stage tile: up to date, skipped" in done.stderr
    assert _stage_records(tmp_path)["tile"] == records["tile"]
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "tiles").glob("*.h5")} == tiles
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in features.glob("*.h5")}
    assert len(after) == 8 and all(after[name] == v for name, v in finished_features.items())
    assert set(_stage_records(tmp_path)) == {"tile", "features", "expression", "train", "predict", "null", "evaluate", "report"}
    assert (tmp_path / "report.html").is_file()
