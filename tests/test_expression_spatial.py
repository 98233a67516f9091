"""Spatial transcriptomics input: her2st (legacy ST, real data), Visium folders and squidpy .h5ad (generated)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, sparse

from emo.errors import EmoError
from emo.expression.st_readers import (SPATIAL_KEY, add_her2st_labels, normalize_spots, read_her2st, read_spatial,
                                    read_spatial_h5ad, read_visium)

IMAGE_SECTIONS = ["B4", "C2", "C3", "C4", "A1", "A2"]


@pytest.fixture(scope="module")
def her2st():
    from conftest import require_data

    root = require_data("her2st/counts").parent
    return root, {s: read_her2st(root, s) for s in IMAGE_SECTIONS}


def test_every_count_row_joins_to_its_spot(her2st):
    root, sections = her2st
    for section, adata in sections.items():
        counts_ids = pd.read_csv(root / "counts" / f"{section}.tsv.gz", sep="\t", usecols=[0]).iloc[:, 0].astype(str)
        spots = pd.read_csv(root / "spots" / f"{section}.tsv", sep="\t")
        spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
        assert list(adata.obs_names) == list(counts_ids) == list(adata.obs["spot_id"])
        meta = adata.uns[SPATIAL_KEY]
        expect = spots.loc[counts_ids, ["pixel_x", "pixel_y"]].to_numpy() * meta["image_scale"]
        np.testing.assert_allclose(adata.obsm["spatial"], expect)
        assert meta["n_spots_without_counts"] == len(spots) - len(counts_ids)
        assert meta["spot_diameter_um"] == 100 and meta["section_id"] == section
        assert sparse.issparse(adata.X) and adata.X.sum() > 0 and adata.n_vars > 10_000
    dims = json.loads((root / "image_dims.json").read_text())
    a1 = sections["A1"].uns[SPATIAL_KEY]
    assert a1["image_scale"] == pytest.approx(2000 / dims["A1"]["full_width"])
    mpp = json.loads((root / "mpp_estimate.json").read_text())
    assert a1["mpp"] == pytest.approx(mpp["A1"]["um_per_px"] / a1["image_scale"])
    assert sections["B4"].uns[SPATIAL_KEY]["mpp"] == pytest.approx(mpp["B4"]["um_per_px"])


def _tissue_fractions(adata) -> tuple[float, float]:
    """Tissue (saturation > 40/255) under spots vs more than two spot pitches away from any spot."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    meta = adata.uns[SPATIAL_KEY]
    with Image.open(meta["image_path"]) as im:
        width = im.size[0]
        if im.format == "JPEG":
            im.draft("RGB", (im.size[0] // 8, im.size[1] // 8))  # decode at 1/8: fast
        im = im.convert("RGB")
        if im.size[0] > 1200:
            im = im.reduce(2)
        tissue = np.asarray(im.convert("HSV"))[..., 1] > 40
    f = tissue.shape[1] / width
    centres = np.zeros(tissue.shape, bool)
    xy = np.round(adata.obsm["spatial"] * f).astype(int)
    xy = np.clip(xy, 0, np.array(tissue.shape[::-1]) - 1)
    centres[xy[:, 1], xy[:, 0]] = True
    dist = ndimage.distance_transform_edt(~centres)
    radius = meta["spot_diameter_um"] / 2 / meta["mpp"] * f
    far = 2 * meta["spot_pitch_um"] / meta["mpp"] * f
    return tissue[dist <= radius].mean(), tissue[dist > far].mean()


@pytest.mark.parametrize("section", IMAGE_SECTIONS)
def test_spot_pixels_land_on_tissue(her2st, section):
    adata = her2st[1][section]
    under, off = _tissue_fractions(adata)
    print(f"{section}: tissue under spots {under:.3f}, away from spots {off:.3f}")
    assert under > 0.45 and under > 5 * off
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(adata.uns[SPATIAL_KEY]["image_path"]) as im:
        size = np.array(im.size)
    rotated = adata.copy()  # the check can fail: spots rotated by 180° about the image centre
    rotated.obsm["spatial"] = size - 1 - rotated.obsm["spatial"]
    print(f"{section}: rotated {_tissue_fractions(rotated)[0]:.3f}")
    assert _tissue_fractions(rotated)[0] < under - 0.15


def test_normalize_spots_closed_form(her2st):
    adata = her2st[1]["C3"]
    counts = adata.X.toarray().astype(np.float64)
    counts[0] = 0  # a spot without any count stays zero
    adata = adata.copy()
    adata.X = sparse.csr_matrix(counts, dtype=np.float32)
    out = normalize_spots(adata)
    totals = counts.sum(axis=1, keepdims=True)
    expect = np.log1p(np.divide(counts * 1e4, totals, out=np.zeros_like(counts), where=totals > 0))
    np.testing.assert_allclose(out.X.toarray(), expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.expm1(out.X[1:].toarray().astype(np.float64)).sum(axis=1), 1e4, rtol=1e-4)
    assert out.X[0].nnz == 0 and (out.layers["counts"].toarray() == counts).all()
    assert (adata.X.toarray() == counts).all()  # input untouched


def test_pathologist_labels_join_spots():
    from conftest import require_data

    root = require_data("her2st/labels").parent
    adata = normalize_spots(read_her2st(root, "B1"))
    add_her2st_labels(adata, root)
    labels = pd.read_csv(root / "labels" / "B1_labeled_coordinates.tsv", sep="\t").dropna(subset=["x"])
    assert adata.obs["label"].notna().sum() == len(labels) == adata.n_obs
    # HER2-positive tumours: ERBB2 is higher in invasive cancer spots than in connective or adipose tissue.
    erbb2 = adata[:, "ERBB2"].X.toarray().ravel()
    label = adata.obs["label"].astype(str).to_numpy()
    cancer = erbb2[label == "invasive cancer"].mean()
    assert cancer > erbb2[label == "connective tissue"].mean() + 0.5
    assert cancer > erbb2[label == "adipose tissue"].mean() + 0.5


def _write_visium(folder, *, header: bool, seed: int = 0):
    """A small Space Ranger outs/ folder: HDF5 matrix, positions, scale factors and a hires PNG."""
    import h5py
    from PIL import Image

    rng = np.random.default_rng(seed)
    n_spots, n_genes = 40, 12
    barcodes = [f"{''.join(rng.choice(list('ACGT'), 16))}-1" for _ in range(n_spots)]
    names = [f"GENE{i}" for i in range(n_genes - 1)] + ["GENE0"]  # one duplicated symbol
    counts = rng.poisson(3, (n_genes + 1, n_spots))  # last feature is an antibody, not a gene
    csc = sparse.csc_matrix(counts)
    (folder / "spatial").mkdir(parents=True)
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as h5:
        m = h5.create_group("matrix")
        m["barcodes"] = np.array(barcodes, dtype="S")
        m["data"], m["indices"], m["indptr"] = csc.data.astype(np.int32), csc.indices, csc.indptr
        m["shape"] = np.array(counts.shape, dtype=np.int32)
        f = m.create_group("features")
        f["id"] = np.array([f"ENSG{i:011d}" for i in range(n_genes)] + ["CD3"], dtype="S")
        f["name"] = np.array(names + ["CD3_TotalSeqB"], dtype="S")
        f["feature_type"] = np.array(["Gene Expression"] * n_genes + ["Antibody Capture"], dtype="S")
        f["genome"] = np.array(["GRCh38"] * (n_genes + 1), dtype="S")
    rows, cols = rng.integers(0, 78, n_spots), rng.integers(0, 128, n_spots)
    pos = pd.DataFrame({"barcode": barcodes + ["TTTT-1"], "in_tissue": 1, "array_row": [*rows, 0],
                        "array_col": [*cols, 0], "pxl_row_in_fullres": [*(rows * 80 + 100.5), 0],
                        "pxl_col_in_fullres": [*(cols * 40 + 200.25), 0]})
    name = "tissue_positions.csv" if header else "tissue_positions_list.csv"
    pos.to_csv(folder / "spatial" / name, index=False, header=header)
    sf = {"spot_diameter_fullres": 110.0, "tissue_hires_scalef": 0.1, "tissue_lowres_scalef": 0.03,
          "fiducial_diameter_fullres": 160.0}
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    Image.new("RGB", (600, 700), "white").save(folder / "spatial" / "tissue_hires_image.png")
    return counts[:n_genes].T, pos.iloc[:n_spots], sf


@pytest.mark.parametrize("header", [True, False])
def test_visium_folder(tmp_path, header):
    counts, pos, sf = _write_visium(tmp_path / "outs", header=header)
    adata = read_spatial(tmp_path / "outs")
    assert adata.shape == counts.shape and (adata.X.toarray() == counts).all()
    assert list(adata.obs_names) == list(pos["barcode"]) and adata.var_names.is_unique
    assert list(adata.var["gene_ids"][:2]) == ["ENSG00000000000", "ENSG00000000001"]
    full = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    np.testing.assert_allclose(adata.obsm["spatial"], full * 0.1)
    meta = adata.uns[SPATIAL_KEY]
    assert meta["mpp"] == pytest.approx(55 / 110 / 0.1) and meta["spot_diameter_um"] == 55
    assert meta["image_path"].endswith("tissue_hires_image.png")
    assert (adata.obs["array_y"].to_numpy() == pos["array_row"].to_numpy()).all()
    fullres = read_visium(tmp_path / "outs", image_path=tmp_path / "outs/spatial/tissue_hires_image.png")
    np.testing.assert_allclose(fullres.obsm["spatial"], full)
    assert fullres.uns[SPATIAL_KEY]["mpp"] == pytest.approx(0.5)


def test_squidpy_h5ad_round_trip(tmp_path):
    counts, pos, sf = _write_visium(tmp_path / "outs", header=True)
    full = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    sq = ad.AnnData(X=sparse.csr_matrix(counts.astype(np.float32)),
                    obs=pd.DataFrame({"array_row": pos["array_row"].to_numpy()}, index=pos["barcode"].to_numpy()))
    sq.obsm["spatial"] = full
    sq.uns["spatial"] = {"lib1": {"images": {"hires": np.zeros((70, 60, 3), np.uint8)}, "scalefactors": sf}}
    sq.write_h5ad(tmp_path / "sq.h5ad")
    got = read_spatial(tmp_path / "sq.h5ad")
    assert (got.X.toarray() == counts).all() and got.uns[SPATIAL_KEY]["mpp"] == pytest.approx(0.5)
    np.testing.assert_allclose(got.obsm["spatial"], full)
    assert got.uns[SPATIAL_KEY]["section_id"] == "lib1" and (got.obs["array_y"] == pos["array_row"].to_numpy()).all()
    # Normalised X with the counts in a layer is accepted; without the layer it is refused.
    sq.layers["counts"] = sq.X.copy()
    sq.X = normalize_spots(sq).X
    sq.write_h5ad(tmp_path / "norm.h5ad")
    assert (read_spatial_h5ad(tmp_path / "norm.h5ad").X.toarray() == counts).all()
    del sq.layers["counts"]
    sq.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(EmoError, match="bad.h5ad"):
        read_spatial_h5ad(tmp_path / "bad.h5ad")


def test_cli_spatial_writes_representation(tmp_path):
    from typer.testing import CliRunner

    from emo.cli import app

    counts, pos, _ = _write_visium(tmp_path / "outs", header=False)
    res = CliRunner().invoke(app, ["expression", "spatial", str(tmp_path / "outs"), "--out", str(tmp_path / "v.h5ad")])
    assert res.exit_code == 0, res.output
    back = read_spatial(tmp_path / "v.h5ad")  # emo's own form reads back unchanged
    assert (back.X.toarray() == counts).all() and back.uns[SPATIAL_KEY]["mpp"] == pytest.approx(5.0)


@pytest.mark.parametrize("section", ["C4", "A1"])  # full-resolution photo; preview PNG with scaled coordinates
def test_cli_her2st_section_plots_in_scanpy_and_squidpy(her2st, section, tmp_path):
    from typer.testing import CliRunner

    from emo.cli import app
    from scverse_plots import assert_scanpy_and_squidpy_plot

    root, sections = her2st
    out = tmp_path / f"{section}.h5ad"
    res = CliRunner().invoke(app, ["expression", "spatial", str(root), "--section", section, "--out", str(out)])
    assert res.exit_code == 0, res.output
    adata = ad.read_h5ad(out)
    lib = adata.uns["spatial"][section]
    meta = sections[section].uns[SPATIAL_KEY]
    # the hires image is the section photo shrunk to 2000 px; its scale factor maps obsm["spatial"] onto it
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(meta["image_path"]) as im:
        width = im.width
    assert max(lib["images"]["hires"].shape[:2]) == min(2000, max(im.size))
    assert lib["scalefactors"]["tissue_hires_scalef"] == pytest.approx(lib["images"]["hires"].shape[1] / width)
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(100.0 / meta["mpp"])
    assert (adata.layers["counts"] != sections[section].X).nnz == 0
    gene = adata.var_names[np.asarray(adata.X.sum(axis=0)).ravel().argmax()]
    assert_scanpy_and_squidpy_plot(adata, gene)
