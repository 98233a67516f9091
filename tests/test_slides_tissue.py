"""Tissue vs glass vs pen ink on real tiles (histolab's test tiles, ../shared/data/tiles)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emo.slides.tiling import box_fraction
from emo.slides.tissue import pen_mask, tissue_mask

TISSUE = [
    "tissue-level0-7352-11762-7864-12274", "tissue-level2-4640-4649-8736-8746", "tissue-level2-4760-5241-8856-9338",
    "tissue-level2-3000-7666-7096-11763", "tcga-lung-rgb", "medium-nuclei-score-level1-2", "very-low-nuclei-score-level0",
]  # fmt: skip
NO_TISSUE = ["no-tissue", "no-tissue2", "no-tissue-line", "almost-white-1", "almost-white-2"]
PEN_ONLY = ["no-tissue-red-pen", "no-tissue-green-pen"]
PEN_ON_TISSUE = ["tcga-red-pen", "tcga-green-pen", "medium-nuclei-score-green-pen-level1", "wsi-blue-pen"]


def _tile(shared_data, name: str) -> np.ndarray:
    img = Image.open(shared_data(f"tiles/{name}.png")).convert("RGB")
    return np.asarray(img.reduce(4) if img.width >= 256 else img)  # thumbnail-like resolution, as in `emo tile`


@pytest.mark.parametrize("name", TISSUE)
def test_tissue_tiles_are_tissue(shared_data, name):
    rgb = _tile(shared_data, name)
    assert tissue_mask(rgb, min_object_px=8).mean() >= 0.5
    assert pen_mask(rgb).mean() < 0.02


@pytest.mark.parametrize("name", NO_TISSUE + PEN_ONLY)
def test_glass_lines_and_pen_only_are_not_tissue(shared_data, name):
    assert tissue_mask(_tile(shared_data, name), min_object_px=8).mean() < 0.5  # below the default --min-tissue


@pytest.mark.parametrize("name", PEN_ONLY + PEN_ON_TISSUE)
def test_pen_marks_are_detected_and_excluded(shared_data, name):
    rgb = _tile(shared_data, name)
    ink = pen_mask(rgb)
    assert ink.mean() > 0.03
    tissue = tissue_mask(rgb, min_object_px=8)
    assert not (tissue & pen_mask(rgb, dilate_px=0)).any()  # ink pixels never count as tissue
    # the same tile without the pen check would count ink as tissue
    assert tissue_mask(rgb, min_object_px=8, pen=False).mean() > tissue.mean()


def test_box_fraction_matches_direct_mean():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 60)) > 0.5
    coords = np.array([[0, 0], [100, 50], [400, 200]], float)  # level-0 px; scale 0.1 → thumbnail px
    frac = box_fraction(mask, 0.1, coords, 100.0)
    expected = [mask[0:10, 0:10].mean(), mask[5:15, 10:20].mean(), mask[20:30, 40:50].mean()]
    np.testing.assert_allclose(frac, expected, rtol=1e-6)


def test_sharpness_separates_blurred_tiles(shared_data):
    from PIL import ImageFilter

    from emo.slides.quality import DEFAULT_MIN_SHARPNESS, sharpness

    img = Image.open(shared_data("tiles/tcga-lung-rgb.png")).convert("RGB")
    blurred = [np.asarray(img.filter(ImageFilter.GaussianBlur(r))) for r in (0, 1, 3)]
    values = sharpness(np.stack(blurred))
    assert values[0] > values[1] > values[2]
    assert values[0] > DEFAULT_MIN_SHARPNESS > values[2]  # in focus kept, out of focus dropped
    # the Laplacian variance on a sparse grid tracks the dense one
    assert sharpness(np.stack(blurred), step=1)[0] == pytest.approx(values[0], rel=0.1)
