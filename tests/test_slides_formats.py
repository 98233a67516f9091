"""Every slide a user brings: readers that prove they decode, and the formats keeping µm/px in their own places.

Each format is generated in the test (tifffile, imagecodecs, wsidicomizer, Pillow) from the same
H&E-like image with known markers, tiled, and compared with the plain zlib pyramid of that image.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emo.errors import EmoError
from emo.slides import READERS, TileStore, TilingConfig, open_slide, tile_slide
from emo.slides.tiling import find_slides, slide_id_of
from slides_synthetic import APERIO_JP2000_RGB, MPP, synthetic_rgb, write_dicom_wsi, write_ome_tiff, write_pyramid, write_svs_like

CONFIG = TilingConfig(tile_size_um=100, target_mpp=0.5, normalize=False)  # 400 level-0 px tiles at 0.25 µm/px


@pytest.fixture(scope="module")
def image():
    return synthetic_rgb()


@pytest.fixture(scope="module")
def reference(image, tmp_path_factory):
    """The zlib pyramid (every reader decodes it) tiled with CONFIG."""
    folder = tmp_path_factory.mktemp("reference")
    tile_slide(write_pyramid(folder / "reference.tif", image[0]), folder / "reference.h5", CONFIG)
    return TileStore(folder / "reference.h5")


def assert_same_tiles(store: TileStore, reference: TileStore, atol: float) -> None:
    """Same grid, tissue decisions and µm/px as the reference; pixels equal up to codec loss."""
    assert store.mpp == pytest.approx(reference.mpp)
    np.testing.assert_array_equal(store.coords_px, reference.coords_px)
    idx = np.arange(0, len(store), 3)
    diff = np.abs(store.read_tiles(idx).astype(int) - reference.read_tiles(idx)).mean()
    assert diff <= atol, diff


# --- readers that cannot decode are passed over ----------------------------------------------------


@pytest.mark.parametrize(
    "codec, served",
    [
        ("aperio-jpeg2000", "tifffile"),  # the TCGA case: libvips opens the header, has no JPEG 2000 decoder
        ("zstd", "tifffile"),  # libvips' libtiff lacks zstd; tifffile (imagecodecs) and OpenSlide have it
        ("jpegxl", "tifffile"),  # neither libvips nor OpenSlide decode it
    ],
)
def test_reader_that_cannot_decode_is_passed_over(image, reference, tmp_path, codec, served):
    rgb = image[0]
    if codec == "aperio-jpeg2000":
        path = write_svs_like(tmp_path / "jp2k.svs", rgb, mpp=MPP, compression=APERIO_JP2000_RGB)
    else:
        path = write_pyramid(tmp_path / f"{codec}.tif", rgb, compression=codec)
    fast = READERS["pyvips"](path)  # the header opens ...
    with pytest.raises(Exception):
        fast.probe([0])  # ... the tiles do not decode
    reader = open_slide(path, target_mpp=CONFIG.target_mpp)
    assert reader.name == served
    np.testing.assert_array_equal(reader.read_region(0, 300, 200, 100, 50), rgb[200:250, 300:400])  # lossless codecs
    row = tile_slide(path, tmp_path / "s.h5", CONFIG)
    store = TileStore(tmp_path / "s.h5")
    assert row["reader"] == store.attrs["reader"] == served
    if codec == "aperio-jpeg2000":  # two levels (1×, 4×) where the reference has three: compare the grid only
        np.testing.assert_array_equal(store.coords_px, reference.coords_px)
    else:
        assert_same_tiles(store, reference, atol=0.5)
    store.read_tiles([0])
    assert store._reader.name == served  # the reader that tiled the slide serves its tiles


def test_jpeg2000_falls_through_to_openslide(image, tmp_path):
    path = write_svs_like(tmp_path / "jp2k.svs", image[0], compression=APERIO_JP2000_RGB)
    reader = open_slide(path, readers=["pyvips", "openslide"], target_mpp=2.0)  # 2.0 µm/px: tiling reads level 1
    assert reader.name == "openslide" and reader.best_level(2.0) == 1
    assert reader.mpp == pytest.approx(0.499) and "aperio" in reader.mpp_source


def test_no_reader_decodes_names_each(image, tmp_path):
    path = write_pyramid(tmp_path / "lerc.tif", image[0], compression="lerc")
    with pytest.raises(EmoError, match=r"corrupt or unreadable pixel data \(pyvips: cannot decode"):
        open_slide(path, readers=["pyvips", "openslide"])


def test_cmu_slide_is_claimed_by_the_fast_reader(shared_data):
    slide = shared_data("slides/CMU-1-Small-Region.svs")
    regions = {}
    for name in ("pyvips", "tifffile", "openslide"):  # every reader decodes the real slide, alike
        reader = READERS[name](slide)
        reader.probe([0, len(reader.level_dimensions) - 1])
        assert reader.mpp == pytest.approx(0.499)
        regions[name] = reader.read_region(0, 1000, 1200, 300, 200)
    for name in ("pyvips", "tifffile"):
        np.testing.assert_array_equal(regions[name], regions["openslide"])
    reader = open_slide(slide, target_mpp=0.453)
    assert reader.name == "pyvips" and reader.mpp_source == "Aperio ImageDescription MPP"


# --- formats and where they keep µm/px -------------------------------------------------------------


@pytest.mark.parametrize("size, unit", [(250.0, "nm"), (0.25, "µm"), (0.00025, "mm")])
def test_ome_tiff_mpp_from_ome_xml(image, reference, tmp_path, size, unit):
    path = write_ome_tiff(tmp_path / "slide.ome.tif", image[0], size, unit)
    assert slide_id_of(path) == "slide"
    row = tile_slide(path, tmp_path / "s.h5", CONFIG)
    assert row["mpp"] == pytest.approx(MPP) and row["mpp_source"] == f"OME-XML PhysicalSizeX ({size} {unit})"
    assert row["reader"] == "pyvips"
    assert_same_tiles(TileStore(tmp_path / "s.h5"), reference, atol=0.5)


@pytest.mark.parametrize("unit, per_unit_um", [("INCH", 25400.0), ("CENTIMETER", 10000.0)])
def test_generic_tiff_mpp_from_resolution_tags(image, reference, tmp_path, unit, per_unit_um):
    import tifffile

    path = tmp_path / "generic.tif"
    tifffile.imwrite(path, image[0], tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(per_unit_um / MPP, per_unit_um / MPP), resolutionunit=unit)  # fmt: skip
    row = tile_slide(path, tmp_path / "s.h5", CONFIG)
    name = {"INCH": "inch", "CENTIMETER": "cm"}[unit]
    assert row["mpp"] == pytest.approx(MPP) and row["mpp_source"] == f"TIFF XResolution ({per_unit_um / MPP:g} px/{name})"
    # one level: tiles are resampled from level 0, the reference's come from its 2× level
    assert_same_tiles(TileStore(tmp_path / "s.h5"), reference, atol=4)


def test_dicom_wsi_through_openslide(tmp_path):
    import openslide

    assert tuple(int(v) for v in openslide.__library_version__.split(".")[:1]) >= (4,)  # DICOM needs OpenSlide ≥ 4
    rgb, _ = synthetic_rgb(1536, 2048, tissue_until=1536)
    svs = write_svs_like(tmp_path / "source.svs", rgb, mpp=0.25)
    files = write_dicom_wsi(tmp_path / "case-7", svs)
    assert len(files) == 2  # one .dcm per pyramid level
    assert find_slides([tmp_path / "case-7"]) == [files[0]]  # the folder is one slide
    assert slide_id_of(files[0]) == "case-7"
    row = tile_slide(files[0], tmp_path / "dicom.h5", CONFIG)
    assert row["reader"] == "openslide" and row["mpp"] == pytest.approx(0.25)
    assert row["mpp_source"] == "OpenSlide openslide.mpp-x (dicom)"
    tile_slide(svs, tmp_path / "svs.h5", CONFIG)
    assert_same_tiles(TileStore(tmp_path / "dicom.h5"), TileStore(tmp_path / "svs.h5"), atol=8)  # JPEG re-encoded


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_plain_image_mpp_from_its_resolution(image, tmp_path, suffix):
    mpp = 0.5  # 50,800 dpi: JPEG's JFIF density is 16-bit, so 0.25 µm/px (101,600 dpi) does not fit
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(image[0]).save(path, dpi=(25400 / mpp, 25400 / mpp), **({"quality": 95} if suffix == ".jpg" else {}))
    reader = open_slide(path)
    assert reader.name == ("image" if suffix != ".tif" else "pyvips")  # a flat TIFF is a one-level pyramid
    assert reader.mpp == pytest.approx(mpp, rel=1e-3) and "px/" in reader.mpp_source
    row = tile_slide(path, tmp_path / "s.h5", CONFIG)
    store = TileStore(tmp_path / "s.h5")
    assert row["mpp"] == pytest.approx(mpp, rel=1e-3) and store.tile_size_px == 200
    assert store.attrs["tile_size_level0"] == pytest.approx(200, abs=0.5)  # 100 µm at 0.5 µm/px
    assert len(store) == 9 * 8 and (store.coords_px[:, 0] + 200 <= 1800).all()  # 12 × 8 grid; glass (x ≥ 1800) dropped


def test_plain_image_at_screen_dpi_needs_mpp(image, tmp_path):
    path = tmp_path / "screen.png"
    Image.fromarray(image[0]).save(path, dpi=(72, 72))
    with pytest.raises(EmoError, match="no µm/px"):
        open_slide(path)
    reader = open_slide(path, mpp=MPP)
    assert reader.mpp == MPP and reader.mpp_source == "--mpp" and not reader.warnings


# --- µm/px sanity ----------------------------------------------------------------------------------


def test_mpp_disagreeing_with_the_file_is_noted(image, tmp_path):
    path = write_pyramid(tmp_path / "s.tif", image[0])
    assert not open_slide(path, mpp=0.26).warnings  # within 10 %
    reader = open_slide(path, mpp=0.3)
    assert reader.mpp == 0.3 and reader.mpp_source.startswith("--mpp (the file says 0.25, TIFF XResolution")
    assert len(reader.warnings) == 1 and "--mpp 0.3" in reader.warnings[0] and "0.25 µm/px" in reader.warnings[0]


# --- image modes of real H&E -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cmu_rgb(demo_source_slide):
    """The real CMU H&E, 8-bit RGB (0.499 µm/px)."""
    reader = open_slide(demo_source_slide)
    rgb = reader.read_region(0, 0, 0, *reader.dimensions)
    reader.close()
    return rgb


MODES_CONFIG = TilingConfig(mpp=0.499, tile_size_um=200, normalize=False)


def _tiled(path, rgb, mode):
    """`rgb` written in `mode` to `path` (16-bit modes as TIFF, the full 0-65535 range), tiled."""
    import tifffile

    if "16" in mode:
        pixels = rgb.astype(np.uint16) * 257
        if mode.startswith("RGBA"):
            pixels = np.dstack([pixels, np.full(rgb.shape[:2], 65535, np.uint16)])
        tifffile.imwrite(path, pixels, photometric="rgb", extrasamples=[2] if mode.startswith("RGBA") else None)
    else:
        Image.fromarray(rgb).convert(mode, **({"palette": Image.Palette.ADAPTIVE} if mode == "P" else {})).save(path)
    tile_slide(path, path.with_suffix(".h5"), MODES_CONFIG)
    return TileStore(path.with_suffix(".h5"))


@pytest.mark.parametrize("mode, suffix", [("RGBA", ".png"), ("P", ".png"), ("RGB16", ".tif"), ("RGBA16", ".tif")])
def test_images_of_any_colour_mode_tile_as_8_bit_rgb(cmu_rgb, tmp_path, mode, suffix):
    reference = _tiled(tmp_path / f"rgb{suffix}", cmu_rgb, "RGB")  # 8-bit RGB in the same container
    store = _tiled(tmp_path / f"slide{suffix}", cmu_rgb, mode)
    if mode == "P":  # a 256-colour palette shifts the tissue mask at the edges: compare the tiles both kept
        common = sorted(set(store.tile_ids) & set(reference.tile_ids))
        assert len(common) >= 0.9 * len(reference)
        ours, theirs = (s.read_tiles([s.tile_ids.index(t) for t in common]).astype(int) for s in (store, reference))
        assert np.abs(ours - theirs).mean() < 6
    else:
        assert_same_tiles(store, reference, atol=0.5)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_grayscale_image_is_refused_saying_so(cmu_rgb, tmp_path, suffix):
    path = tmp_path / f"gray{suffix}"
    Image.fromarray(cmu_rgb[0]).convert("L").save(path)
    with pytest.raises(EmoError, match=rf"^{path}: a grayscale image; emo needs a colour \(RGB\) H&E scan"):
        tile_slide(path, tmp_path / "s.h5", MODES_CONFIG)


@pytest.mark.parametrize("mpp, says", [
    (1e6, "--mpp 1e+06 (the file says 0.499 µm/px) makes a 271 µm tile 0.000271 px of the slide: over 100 µm/px, beyond any microscope"),
    (150, "--mpp 150 (the file says 0.499 µm/px) makes a 271 µm tile 1.81 px of the slide: over 100 µm/px, beyond any microscope"),
    (0.0499, "--mpp 0.0499 (the file says 0.499 µm/px) makes a 271 µm tile 5.43e+03 px of the slide: larger than the "
             "slide (2220 × 2967 px)"),
])
def test_absurd_mpp_names_mpp_the_files_value_and_the_tile_size(demo_source_slide, tmp_path, mpp, says):
    with pytest.raises(EmoError) as err:
        tile_slide(demo_source_slide, tmp_path / "s.h5", TilingConfig(mpp=mpp))
    assert str(err.value) == f"{demo_source_slide}: {says}; check --mpp"


def test_slide_smaller_than_a_tile_at_its_own_mpp_says_so(demo_source_slide, tmp_path):
    with pytest.raises(EmoError, match=r"0.499 µm/px from Aperio ImageDescription MPP \(the file says 0.499 µm/px\) makes "
                                       r"a 2000 µm tile 4.01e\+03 px of the slide: larger than the slide"):
        tile_slide(demo_source_slide, tmp_path / "s.h5", TilingConfig(tile_size_um=2000))
