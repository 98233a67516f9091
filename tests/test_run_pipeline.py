"""`emo run`'s first stages wired to the real stage APIs (tile_slides, extract_features) on a tiny
demo cohort: a second run skips both, a changed slide redoes tiling and, downstream, features."""

from __future__ import annotations

import os

import h5py
import pytest


pytestmark = pytest.mark.slow  # tiles and embeds a real slide through emo run


@pytest.fixture
def study(tmp_path, demo_source_slide):
    from emo.demo import make_demo_cohort
    from emo.run import load_study

    paths = make_demo_cohort(tmp_path, n_slides=2, grid=(2, 2), n_noise_genes=2, seed=3)
    config = load_study(paths["study"])
    return config.model_copy(update={"features": config.features.model_copy(update={"workers": 0})})  # configs are frozen


def test_tile_and_features_stages_run_skip_and_redo(study):
    from emo.run import STAGES, StudyContext, run_stages

    stages = STAGES[:2]

    def run(config=study, **kw):
        return run_stages(stages, StudyContext(config=config, out_dir=config.out_dir), **kw)

    assert run() == {"tile": "ran", "features": "ran"}
    features = sorted((study.out_dir / "features" / "efficientnet_lite0").glob("*.h5"))
    assert [f.stem for f in features] == ["demo_01", "demo_02"]
    with h5py.File(features[0]) as f, h5py.File(study.out_dir / "tiles" / "demo_01.h5") as t:
        assert f["features"].shape[0] == t["coords_px"].shape[0] > 0
    assert run() == {"tile": "skipped", "features": "skipped"}

    slide = study.slide_paths()[1]
    os.utime(slide, (slide.stat().st_atime, slide.stat().st_mtime + 10))  # a re-exported slide
    assert run() == {"tile": "ran", "features": "ran"}
    changed = study.model_copy(update={"features": study.features.model_copy(update={"batch_size": 8})})
    assert run(changed) == {"tile": "skipped", "features": "ran"}  # a changed parameter redoes only its stage
