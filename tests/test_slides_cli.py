"""`emo tile` from the command line: ROI handling and one clear error line per bad input."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from emo.cli import main
from emo.slides import TileStore
from slides_synthetic import synthetic_rgb, write_pyramid


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    rgb, _ = synthetic_rgb()
    return write_pyramid(tmp_path_factory.mktemp("cli") / "synthetic.tif", rgb)


def run_cli(monkeypatch, capfd, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["emo", "tile", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("emo: error:"), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]


# Tiles of 100 µm at 0.5 µm/px on the 0.25 µm/px pyramid are 400 level-0 px: a 6 × 4 grid, tissue in x < 1800.
GRID = ("--tile-um", 100, "--target-mpp", 0.5, "--no-normalize")


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _geojson(path, rings):
    feature = {"type": "Feature", "properties": {"objectType": "annotation"}, "geometry": {"type": "Polygon", "coordinates": rings}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def test_roi_geojson_with_hole(monkeypatch, capfd, pyramid, tmp_path):
    _geojson(tmp_path / "synthetic.geojson", [_square(0, 0, 1600, 1600), _square(450, 450, 1150, 1150)])
    code, out, err = run_cli(monkeypatch, capfd, pyramid, "--out", tmp_path / "o", "--roi", tmp_path, *GRID)
    assert code == 0, err
    store = TileStore(tmp_path / "o" / "tiles" / "synthetic.h5")
    centres = {(int(x + 200), int(y + 200)) for x, y in store.coords_px}
    expected = {(x, y) for x in (200, 600, 1000, 1400) for y in (200, 600, 1000, 1400)}
    assert centres == expected - {(600, 600), (1000, 600), (600, 1000), (1000, 1000)}  # the hole is respected
    assert store.attrs["n_dropped_roi"] in (4, 8)  # the hole, plus the half-tissue column x = 1600–2000 if kept by tissue
    assert store.roi.all()
    # A re-run finds the slide finished and says so.
    code, out, err = run_cli(monkeypatch, capfd, pyramid, "--out", tmp_path / "o", "--roi", tmp_path, *GRID)
    assert code == 0, err
    assert "0 tiled, 1 already done;" in out


def test_roi_mask_image(monkeypatch, capfd, pyramid, tmp_path):
    mask = np.zeros((160, 240), np.uint8)
    mask[:, :120] = 255  # left half of the slide
    Image.fromarray(mask).save(tmp_path / "mask.png")
    args = ("--out", tmp_path / "o", "--roi", tmp_path / "mask.png", "--save-tiles", *GRID)
    code, _, err = run_cli(monkeypatch, capfd, pyramid, *args)
    assert code == 0, err
    store = TileStore(tmp_path / "o" / "tiles" / "synthetic.h5")
    assert len(store) == 12 and (store.coords_px[:, 0] + 200 < 1200).all()
    saved = np.asarray(Image.open(tmp_path / "o" / "tiles" / "synthetic" / f"{store.tile_ids[3]}.jpg"))
    assert saved.shape == (200, 200, 3)
    assert np.abs(saved.astype(int) - store.read_tiles([3])[0]).mean() < 6  # JPEG of the same tile


def test_batch_continues_past_a_corrupt_slide(monkeypatch, capfd, pyramid, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.tif").write_bytes(pyramid.read_bytes())
    (folder / "broken.svs").write_bytes(b"II*\x00" + np.random.default_rng(0).bytes(5000))
    code, out, err = run_cli(monkeypatch, capfd, folder, "--out", tmp_path / "o", "--workers", 2, *GRID)
    assert_one_line_error(code, err, "broken.svs", "corrupt")
    summary = (tmp_path / "o" / "tiles" / "summary.csv").read_text()
    assert "good,ok," in summary and "broken,failed," in summary
    assert (tmp_path / "o" / "tiles" / "good.h5").is_file() and (tmp_path / "o" / "tiles" / "good.png").is_file()


def _blank_png(path):
    Image.fromarray(np.full((1200, 1200, 3), 244, np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", ["missing.svs", "not found"]),
        ("unsupported", ["notes.txt", "unsupported format"]),
        ("no_mpp", ["photo.png", "--mpp"]),
        ("empty", ["blank.png", "no tissue"]),
        ("corrupt", ["corrupt.svs", "corrupt or unreadable"]),
        ("damaged_tiles", ["damaged.tif", "corrupt or unreadable pixel data"]),
        ("wrong_frame", ["outside the slide", "coordinate frame"]),
        ("roi_on_glass", ["covers none of the slide's tissue"]),
    ],
)
def test_bad_input_gives_one_line(monkeypatch, capfd, pyramid, tmp_path, case, words):
    extra: list = []
    if case == "missing":
        slide = tmp_path / "missing.svs"
    elif case == "unsupported":
        slide = tmp_path / "notes.txt"
        slide.write_text("not a slide")
    elif case == "no_mpp":
        slide = _blank_png(tmp_path / "photo.png")
    elif case == "empty":
        slide, extra = _blank_png(tmp_path / "blank.png"), ["--mpp", 0.5]
    elif case == "corrupt":
        slide = tmp_path / "corrupt.svs"
        slide.write_bytes(np.random.default_rng(1).bytes(20000))
    elif case == "damaged_tiles":  # valid TIFF structure, level-0 JPEG tiles zeroed (e.g. a bad copy)
        slide = write_pyramid(tmp_path / "damaged.tif", synthetic_rgb()[0], compression="jpeg")
        data = bytearray(slide.read_bytes())
        data[20_000:400_000] = bytes(380_000)
        slide.write_bytes(bytes(data))
        extra = ["--target-mpp", 0.3]  # finer than level 1: read from the damaged level 0
    else:
        slide = pyramid
        # wrong frame: level-0 px of a 4× larger scan; on glass: a region with no tissue (another slide's ROI)
        ring = _square(0, 0, 9000, 6000) if case == "wrong_frame" else _square(1900, 100, 2300, 1500)
        extra = ["--roi", _geojson(tmp_path / "roi.geojson", [ring])]
    code, _, err = run_cli(monkeypatch, capfd, slide, "--out", tmp_path / "o", *GRID, *extra)
    assert_one_line_error(code, err, *words)
    if case == "missing":  # nothing is written for a slide that is not there
        assert not (tmp_path / "o" / "tiles" / "summary.csv").exists()


def test_tile_prints_where_mpp_came_from_and_warns_on_a_disagreeing_mpp(monkeypatch, capfd, pyramid, tmp_path):
    code, out, err = run_cli(monkeypatch, capfd, pyramid, "--out", tmp_path / "a", *GRID)
    assert code == 0 and "synthetic: 0.25 µm/px from TIFF XResolution (40000 px/cm), read by pyvips" in out and not err
    code, out, err = run_cli(monkeypatch, capfd, pyramid, "--out", tmp_path / "b", "--mpp", 0.26, *GRID)
    assert code == 0 and "0.26 µm/px from --mpp" in out and not err  # within 10 % of the file: no warning
    code, out, err = run_cli(monkeypatch, capfd, pyramid, "--out", tmp_path / "c", "--mpp", 0.3, *GRID)
    assert code == 0, err
    assert err.strip().startswith("emo: warning:") and "--mpp 0.3" in err and "file's 0.25 µm/px" in err


def test_all_tiles_dropped_at_a_wrong_mpp_points_at_mpp(monkeypatch, capfd, shared_data, tmp_path):
    """The CMU slide is 0.499 µm/px; at --mpp 4.99 a 271 µm tile is 54 px blown up 11× and every tile is blurry."""
    slide = shared_data("slides/CMU-1-Small-Region.svs")
    code, _, err = run_cli(monkeypatch, capfd, slide, "--out", tmp_path, "--mpp", 4.99, "--no-normalize")
    assert_one_line_error(code, err, "CMU-1-Small-Region.svs", "spans 54 px at 4.99 µm/px", "the file says 0.499", "check --mpp")
    assert "rescan" not in err


def _classified(path, features):
    """QuPath GeoJSON export: one annotation per (class, ring); class None is unclassified."""
    items = []
    for name, ring in features:
        props = {"objectType": "annotation"} | ({"classification": {"name": name, "color": [200, 0, 0]}} if name else {})
        items.append({"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": [ring]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


@pytest.mark.parametrize(
    "classes, columns, used",
    [
        (None, {200, 600, 1000, 1400}, ["Stroma", "Tumor", "Unclassified"]),  # all but Ignore*, whose square is cut out
        ("Tumor", {200, 600}, ["Tumor"]),
        ("Stroma,Unclassified", {1000, 1400}, ["Stroma", "Unclassified"]),
        ("Tumor,Ignore*", {200, 600}, ["Ignore*", "Tumor"]),  # named, Ignore* is used like any class
    ],
)
def test_roi_qupath_classes(monkeypatch, capfd, pyramid, tmp_path, classes, columns, used):
    roi = _classified(tmp_path / "roi.geojson", [
        ("Tumor", _square(0, 0, 800, 1600)), ("Stroma", _square(800, 0, 1200, 1600)),
        (None, _square(1200, 0, 1600, 1600)), ("Ignore*", _square(500, 500, 700, 700)),
    ])  # fmt: skip
    extra = ["--roi-classes", classes] if classes else []
    code, _, err = run_cli(monkeypatch, capfd, pyramid, "--out", tmp_path / "o", "--roi", roi, *extra, *GRID)
    assert code == 0, err
    store = TileStore(tmp_path / "o" / "tiles" / "synthetic.h5")
    centres = {(int(x + 200), int(y + 200)) for x, y in store.coords_px}
    ignored = {(600, 600)} if classes is None or "Ignore*" not in classes else set()
    assert centres == {(x, y) for x in columns for y in (200, 600, 1000, 1400)} - ignored
    assert json.loads(store.attrs["roi_classes"]) == used


def test_roi_classes_not_in_the_file(monkeypatch, capfd, pyramid, tmp_path):
    roi = _classified(tmp_path / "roi.geojson", [("Tumor", _square(0, 0, 800, 1600)), ("Ignore*", _square(900, 0, 1000, 100))])
    code, _, err = run_cli(monkeypatch, capfd, pyramid, "--out", tmp_path / "o", "--roi", roi, "--roi-classes", "Necrosis", *GRID)
    assert_one_line_error(code, err, "roi.geojson", "no annotation of class Necrosis", "Ignore* (1), Tumor (1)", "--roi-classes")
