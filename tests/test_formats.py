"""Stored artifacts carry a format version and validated attributes: a store from an incompatible emo,
or with impossible values, is one line naming the file, the field and the fix."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from emo.errors import EmoError
from emo.features.store import FeatureStore, write_feature_store
from emo.models.model import read_manifest, write_manifest
from emo.slides import TileStore, TilingConfig, tile_slide


CONFIG = TilingConfig(tile_size_um=200, normalize=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_source_slide):
    path = tmp_path_factory.mktemp("store") / "cmu.h5"
    tile_slide(demo_source_slide, path, CONFIG)
    return path


def _edited(store, tmp_path, **attrs):
    copy = tmp_path / "edited.h5"
    shutil.copy(store, copy)
    with h5py.File(copy, "a") as f:
        f.attrs.update(attrs)
    return copy


def test_tile_store_records_its_format_version(store):
    assert TileStore(store).attrs["format_version"] == 1


@pytest.mark.parametrize("field, value, says", [
    ("format_version", 2, "format_version=2 (written by emo"),
    ("tile_size_px", -5, "tile_size_px=-5: input should be greater than 0"),
    ("mpp", 0.0, "mpp=0.0: input should be greater than 0"),
    ("level", -1, "level=-1: input should be greater than or equal to 0"),
])
def test_bad_tile_store_is_one_line_naming_file_field_and_fix(store, tmp_path, field, value, says):
    bad = _edited(store, tmp_path, **{field: value})
    with pytest.raises(EmoError) as err:
        TileStore(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: tile store field ") and says in message and message.endswith("`emo tile`")
    assert "\n" not in message


def test_tile_store_from_an_incompatible_emo_is_re_tiled_not_skipped(store, tmp_path, demo_source_slide):
    from emo.slides import tile_slides
    from emo.slides.tiling import slide_id_of

    (tmp_path / "tiles").mkdir()
    bad = _edited(store, tmp_path, format_version=2).rename(tmp_path / "tiles" / f"{slide_id_of(demo_source_slide)}.h5")
    assert tile_slides([demo_source_slide], tmp_path / "tiles", CONFIG)["status"].tolist() == ["ok"]  # same parameters, not skipped
    assert TileStore(bad).attrs["format_version"] == 1


def test_feature_store_is_version_checked(tmp_path):
    attrs = {"slide_id": "S", "backbone": "b", "dim": 4}
    path = write_feature_store(tmp_path / "S.h5", np.zeros((3, 4)), np.zeros((3, 2)), np.zeros((3, 2)), ["a", "b", "c"], attrs)
    assert FeatureStore(path).attrs["format_version"] == 1
    write_feature_store(path, np.zeros((3, 4)), np.zeros((3, 2)), np.zeros((3, 2)), ["a", "b", "c"], {**attrs, "format_version": 9})
    with pytest.raises(EmoError, match=r"S.h5: feature store field format_version=9 .* re-extract with `emo features`$"):
        FeatureStore(path)
    write_feature_store(path, np.zeros((3, 4)), np.zeros((3, 2)), np.zeros((3, 2)), ["a", "b", "c"], {**attrs, "dim": 8})
    with pytest.raises(EmoError, match=r"field dim=8 but its features are 4 wide"):
        FeatureStore(path)


def test_model_manifest_is_version_checked(tmp_path):
    write_manifest(tmp_path, {"kind": "ridge", "emo_version": "0.1.0"})
    assert read_manifest(tmp_path)["format_version"] == 1
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 3}))
    with pytest.raises(EmoError, match=r"manifest.json: model manifest field format_version=3 .* retrain"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "emo_version": "0.1.0"}))
    with pytest.raises(EmoError, match=r"model manifest field kind: field required"):
        read_manifest(tmp_path)
