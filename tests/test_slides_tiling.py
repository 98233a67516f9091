"""Tiling on real slides and generated pyramids: store contract, geometry, tissue, resume."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from PIL import Image

from emo.slides import READERS, TileStore, TilingConfig, open_slide, tile_slide, tile_slide_at, tile_slides
from emo.slides.geometry import plan_geometry
from slides_synthetic import MARKER_PX, MPP, synthetic_rgb, write_pyramid

CONTRACT_DATASETS = {"coords_px", "coords_um", "tile_id", "tissue", "sharpness", "roi"}
CONTRACT_ATTRS = {
    "slide_id", "slide_path", "mpp", "tile_size_um", "target_mpp", "tile_size_px", "tile_size_level0",
    "normalize", "stain_matrix", "max_concentrations", "stain_reference", "n_dropped_tissue",
    "n_dropped_sharpness", "n_dropped_roi", "emo_version", "params_json",
}  # fmt: skip


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    rgb, markers = synthetic_rgb()
    path = write_pyramid(tmp_path_factory.mktemp("slides") / "synthetic.tif", rgb)
    return path, rgb, markers


def test_cmu_slide_store_follows_contract(shared_data, tmp_path):
    slide = shared_data("slides/CMU-1-Small-Region.svs")
    summary = tile_slides([slide], tmp_path / "tiles", TilingConfig())
    row = summary.iloc[0]
    assert row.status == "ok" and row.reader == "pyvips" and row.mpp == pytest.approx(0.499)
    path = tmp_path / "tiles" / "CMU-1-Small-Region.h5"
    with h5py.File(path) as f:
        assert CONTRACT_DATASETS <= set(f)
        assert CONTRACT_ATTRS <= set(f.attrs)
        assert f.attrs["tile_size_px"] == 598
        assert f.attrs["stain_matrix"].shape == (3, 2)
    store = TileStore(path)
    n = len(store)
    assert n == row.n_kept > 0 and row.n_dropped_tissue > 0
    assert n + row.n_dropped_tissue + row.n_dropped_roi + row.n_dropped_sharpness == store.attrs["n_tiles_grid"]
    np.testing.assert_allclose(store.coords_um, store.coords_px * 0.499)
    assert store.tile_ids[0] == f"{store.coords_px[0, 0]}_{store.coords_px[0, 1]}"
    assert (store.tissue >= 0.5).all()
    tiles = store.read_tiles([0, n - 1])
    assert tiles.shape == (2, 598, 598, 3) and tiles.dtype == np.uint8
    raw = store.read_tiles([0, n - 1], normalize=False)
    assert np.abs(tiles.astype(int) - raw).mean() > 1  # normalisation changed the pixels
    batches = list(store.iter_batches(4))
    assert [len(i) for i, _ in batches] == [min(4, n - s) for s in range(0, n, 4)]
    thumb = Image.open(path.with_suffix(".png"))
    assert thumb.size[0] > 100
    # a re-run skips the finished slide
    again = tile_slides([slide], tmp_path / "tiles", TilingConfig())
    assert again.iloc[0].status == "skipped" and again.iloc[0].n_kept == n
    assert (tmp_path / "tiles" / "summary.csv").is_file()


def test_readers_agree_on_generated_pyramid(pyramid):
    path, rgb, _ = pyramid
    regions = {}
    for name in ("pyvips", "tifffile", "openslide"):
        reader = READERS[name](path)
        assert reader.mpp == pytest.approx(MPP)
        assert reader.level_dimensions == [(2400, 1600), (1200, 800), (600, 400)]
        regions[name] = [reader.read_region(0, 300, 200, 100, 50), reader.read_region(2, 10, 20, 30, 40)]
        reader.close()
    np.testing.assert_array_equal(regions["pyvips"][0], rgb[200:250, 300:400])
    for name in ("tifffile", "openslide"):
        for a, b in zip(regions["pyvips"], regions[name]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("target_mpp, level", [(0.453, 0), (0.5, 1), (0.6, 1), (1.2, 2)])
def test_level_choice_never_coarser_than_target(pyramid, target_mpp, level):
    reader = open_slide(pyramid[0])
    geom = plan_geometry(reader, 100.0, target_mpp)
    assert geom.level == level
    assert geom.level_mpp <= target_mpp * 1.001


@pytest.mark.parametrize("target_mpp", [0.453, 0.6])
def test_tile_geometry_is_physical_to_one_pixel(pyramid, tmp_path, target_mpp):
    path, _, markers = pyramid
    config = TilingConfig(tile_size_um=100, target_mpp=target_mpp, normalize=False)
    row = tile_slide(path, tmp_path / "s.h5", config)
    store = TileStore(tmp_path / "s.h5")
    size = store.tile_size_px
    assert size == round(100 / target_mpp)
    # physical tile size: within one target pixel of 100 µm
    assert abs(store.attrs["tile_size_level0"] * MPP - 100) <= target_mpp
    # tissue detection: nothing on the glass (x ≥ 1800)
    assert row["n_kept"] > 0 and (store.coords_px[:, 0] + store.attrs["tile_size_level0"] <= 1800 + 1).all()
    step = store.attrs["tile_size_level0"]
    for mx, my in markers:
        inside = np.flatnonzero(
            (store.coords_px[:, 0] <= mx) & (mx < store.coords_px[:, 0] + step)
            & (store.coords_px[:, 1] <= my) & (my < store.coords_px[:, 1] + step)
        )  # fmt: skip
        assert len(inside) == 1
        i = int(inside[0])
        tile = store.read_tiles([i])[0].astype(int)
        dark = tile.sum(axis=2) < 300
        ys, xs = np.nonzero(dark)
        expected = (np.array([mx, my]) - store.coords_px[i]) * MPP / target_mpp  # marker centre in tile px
        np.testing.assert_allclose([xs.mean() + 0.5, ys.mean() + 0.5], expected, atol=1.0)
        assert xs.max() - xs.min() + 1 == pytest.approx(MARKER_PX * MPP / target_mpp, abs=1.5)
        # µm position of the tile corner
        np.testing.assert_allclose(store.coords_um[i], store.coords_px[i] * MPP)


def test_spot_centred_store(pyramid, tmp_path):
    path, _, markers = pyramid
    out = tile_slide_at(path, np.array(markers), tmp_path / "spots.h5", tile_size_um=50, tile_ids=["a", "b"],
                        config=TilingConfig(target_mpp=0.5, normalize=False))  # fmt: skip
    store = TileStore(out)
    assert store.tile_ids == ["a", "b"] and store.tile_size_px == 100
    tiles = store.read_tiles([0, 1]).astype(int)
    for tile in tiles:  # each tile centred on its marker
        ys, xs = np.nonzero(tile.sum(axis=2) < 300)
        np.testing.assert_allclose([xs.mean() + 0.5, ys.mean() + 0.5], [50, 50], atol=1.0)


def test_her2st_photograph_with_user_mpp(shared_data, tmp_path):
    image = shared_data("her2st/images/B4.jpg")
    config = TilingConfig(mpp=0.688, target_mpp=0.906, normalize=False)  # 2× coarser target keeps this test lean
    row = tile_slide(image, tmp_path / "B4.h5", config)
    store = TileStore(tmp_path / "B4.h5")
    assert row["reader"] == "image" and store.mpp == 0.688 and store.tile_size_px == 299
    assert 50 < len(store) < row["n_dropped_tissue"]  # tissue is a minority of the photograph
    # kept tiles lie on the stained section, which is in the lower-left part of the photograph
    assert np.median(store.coords_px[:, 1]) > 0.4 * 9923
    tile = store.read_tiles([0])[0]
    assert tile.shape == (299, 299, 3)


@pytest.mark.parametrize("name", ["tifffile", "openslide"])
def test_fallback_readers_give_the_same_tiles(pyramid, name):
    from emo.slides.geometry import read_tiles_at

    path, _, markers = pyramid
    geom = plan_geometry(open_slide(path), 100.0, 0.453)
    corners = np.array(markers) - geom.tile_size_level0 / 2  # tiles centred on the markers
    fast = read_tiles_at(open_slide(path, readers=["pyvips"]), geom, corners)
    other = read_tiles_at(open_slide(path, readers=[name]), geom, corners)
    assert other.shape == fast.shape
    for a, b in zip(fast, other):  # same place (marker centroid), same colours (tile mean)
        ca = np.argwhere(a.astype(int).sum(axis=2) < 300).mean(axis=0)
        cb = np.argwhere(b.astype(int).sum(axis=2) < 300).mean(axis=0)
        np.testing.assert_allclose(ca, cb, atol=1.0)
        np.testing.assert_allclose(a.mean(axis=(0, 1)), b.mean(axis=(0, 1)), atol=2.0)


def test_svs_levels_map_to_the_right_pages(tmp_path):
    from slides_synthetic import write_svs_like

    rgb, _ = synthetic_rgb(1536, 2048, tissue_until=1536)
    path = write_svs_like(tmp_path / "aperio.svs", rgb)
    regions = {}
    for name in ("pyvips", "tifffile", "openslide"):
        reader = READERS[name](path)
        assert reader.mpp == pytest.approx(0.499)
        assert reader.level_dimensions == [(1536, 2048), (384, 512)]  # thumbnail, label, macro are not levels
        regions[name] = reader.read_region(1, 10, 20, 50, 40)
    for name in ("pyvips", "tifffile"):
        np.testing.assert_array_equal(regions[name], regions["openslide"])
    assert plan_geometry(open_slide(path), 271, 2.0).level == 1  # 4 × 0.499 ≤ 2.0


def _exit_on_two(x: int) -> int:
    if x == 2:
        os._exit(1)  # a library crashing the worker process (segfault on a corrupt file)
    return x


def test_crashed_worker_does_not_abort_the_batch():
    from emo.executors import get_executor, map_isolated

    with get_executor("local", workers=2, progress=False) as executor:
        results, failures = map_isolated(executor, _exit_on_two, [1, 2, 3], desc="slides")
    # slides in flight beside the crash are tried again on their own, so only the culprit fails
    assert results == [1, None, 3] and list(failures) == [1] and failures[1].startswith("worker crashed: BrokenProcessPool")


def test_read_tiles_do_not_depend_on_batch(shared_data, tmp_path):
    """A tile's pixels are the same whether read alone or together with its neighbours."""
    slide = shared_data("slides/CMU-1-Small-Region.svs")
    config = TilingConfig(tile_size_um=64, target_mpp=1.0, normalize=True)
    tile_slide(slide, tmp_path / "cmu.h5", config)
    store = TileStore(tmp_path / "cmu.h5")
    assert len(store) >= 4
    together = store.read_tiles(np.arange(len(store)))
    for i in (0, len(store) // 2, len(store) - 1):
        assert np.array_equal(store.read_tiles([i])[0], together[i])
