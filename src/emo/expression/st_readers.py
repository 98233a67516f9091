"""Spatial transcriptomics input, one representation for every platform.

An AnnData with raw counts in X (spots × genes, CSR float32), `obsm["spatial"]` = spot centres (x, y)
in pixels of the image at `uns["emo_spatial"]["image_path"]` (its full resolution: the H&E photo
for her2st, the full-resolution image when given for Visium), and `uns["emo_spatial"]` =
{image_path, mpp (µm per pixel of that image), spot_diameter_um, spot_pitch_um, section_id,
image_scale, source}. `image_scale` maps the platform's original full-resolution pixel frame onto
the image (1 for full images; e.g. 2000 / 6954 for her2st's A1 preview or Visium's hires scale
factor when only the PNG exists), so `obsm["spatial"] / image_scale` are original full-res pixels.
obs (index = spot id) has `spot_id`, `section_id`, `array_x`, `array_y` and the platform's extras.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from emo.errors import EmoError

SPATIAL_KEY = "emo_spatial"
HER2ST_MPP = 0.688
HER2ST_SPOT_DIAMETER_UM, HER2ST_SPOT_PITCH_UM = 100.0, 200.0
VISIUM_SPOT_DIAMETER_UM, VISIUM_SPOT_PITCH_UM = 55.0, 100.0


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # her2st photos are ~92 Mpx; PIL only reads the header here
    with Image.open(path) as im:
        return im.size


def _make(counts, spot_ids, var: pd.DataFrame, obs: pd.DataFrame, xy: np.ndarray, meta: dict):
    import anndata as ad

    x = sparse.csr_matrix(counts, dtype=np.float32)
    obs = obs.copy()
    obs.index = pd.Index(np.asarray(spot_ids).astype(str))
    obs.insert(0, "spot_id", obs.index.to_numpy())
    obs.insert(1, "section_id", meta["section_id"])
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    adata.uns[SPATIAL_KEY] = {k: (v if v is not None else "") for k, v in meta.items()}
    return adata


def _check_counts(values: np.ndarray, what: str) -> None:
    if values.size and (values.min() < 0 or not np.all(np.mod(values, 1) == 0)):
        raise EmoError(f"{what}: expected raw counts (non-negative integers); found e.g. "
                       f"{values[(values < 0) | (np.mod(values, 1) != 0)][0]!r}")


def read_her2st(data_dir: str | Path, section: str, *, mpp: float | None = None,
                require_counts: bool = True) -> "anndata.AnnData":  # noqa: F821
    """One section of the legacy ST layout (her2st, `emo.expression.her2st.Her2stLayout`).

    The image is `images/<S>.jpg` (full resolution) or else `images/<S>_lowres.png`, whose pixel
    frame is the full one scaled by png_width / full_width (`image_dims.json`); without either,
    `image_path` is empty and coordinates stay in full-resolution pixels. µm/px of the full image
    comes from `mpp` or `mpp_estimate.json` (else 0.688) and is divided by the scale. With
    `require_counts=False` a section without `counts/<S>.tsv.gz` is read from its spots alone
    (every spot of the spot file, X has no genes): enough to predict it.
    """
    from emo.expression.her2st import Her2stLayout

    layout = Her2stLayout(data_dir)
    counts_path, spots_path = layout.counts(section), layout.spots(section)
    with_counts = require_counts or counts_path.exists()
    for p in (counts_path, spots_path) if with_counts else (spots_path,):
        if not p.exists():
            raise EmoError(f"{p}: not found; a legacy ST section needs counts/<S>.tsv.gz and spots/<S>.tsv "
                           "(spots/<S>.tsv and an image are enough to predict it)")
    spots = pd.read_csv(spots_path, sep="\t")
    if not {"x", "y", "pixel_x", "pixel_y"} <= set(spots.columns):
        raise EmoError(f"{spots_path}: needs columns x, y, pixel_x, pixel_y (has {', '.join(spots.columns)})")
    n_spot_rows = len(spots)
    spots.index = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
    if spots.index.duplicated().any():
        raise EmoError(f"{spots_path}: spot {spots.index[spots.index.duplicated()][0]!r} listed twice")
    if with_counts:
        counts = pd.read_csv(counts_path, sep="\t", index_col=0)
        counts.index = counts.index.astype(str)
        if not all(pd.api.types.is_numeric_dtype(t) for t in counts.dtypes):
            raise EmoError(f"{counts_path}: non-numeric count values; expected spots × genes integers")
        values = counts.to_numpy(dtype=np.float64)
        _check_counts(values, str(counts_path))
        unknown = counts.index.difference(spots.index)
        if len(unknown):
            raise EmoError(f"{counts_path}: {len(unknown)} count rows have no spot in {spots_path} "
                           f"(e.g. {unknown[0]!r}); their position is unknown")
        spots = spots.loc[counts.index]
        genes = counts.columns.astype(str)
    else:
        values, genes = np.zeros((len(spots), 0)), pd.Index([], dtype=str)

    full_mpp = mpp
    if full_mpp is None:
        table = json.loads(layout.mpp_estimate.read_text()) if layout.mpp_estimate.exists() else {}
        full_mpp = float(table.get(section, {}).get("um_per_px", HER2ST_MPP))
    image, scale = layout.image(section), 1.0
    if image is not None and image == layout.preview_image(section):
        dims_path = layout.image_dims
        dims = json.loads(dims_path.read_text()).get(section) if dims_path.exists() else None
        if not dims:
            raise EmoError(f"{image}: a preview image needs the full image width in {dims_path}")
        scale = _image_size(image)[0] / float(dims["full_width"])
    xy = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64) * scale
    obs = pd.DataFrame({"array_x": spots["x"].to_numpy(int), "array_y": spots["y"].to_numpy(int)})
    for col in ("new_x", "new_y", "selected"):
        if col in spots:
            obs[col] = spots[col].to_numpy()
    meta = {"image_path": str(image.resolve()) if image else None, "mpp": full_mpp / scale,
            "spot_diameter_um": HER2ST_SPOT_DIAMETER_UM, "spot_pitch_um": HER2ST_SPOT_PITCH_UM,
            "section_id": section, "image_scale": scale, "source": "legacy_st",
            "n_spots_without_counts": int(n_spot_rows - len(spots)), "has_counts": bool(with_counts)}
    var = pd.DataFrame(index=pd.Index(genes, name=None))
    return _make(values, spots.index, var, obs, xy, meta)


def read_her2st_labels(data_dir: str | Path, section: str) -> pd.Series:
    """Pathologist label per spot id, joined on the spot file's adjusted array position (new_x, new_y)."""
    from scipy.spatial import cKDTree

    from emo.expression.her2st import Her2stLayout

    layout = Her2stLayout(data_dir)
    path, spots_path = layout.labels(section), layout.spots(section)
    if not path.exists():
        raise EmoError(f"{path}: no pathologist labels for section {section}")
    labels = pd.read_csv(path, sep="\t").dropna(subset=["x", "y"])  # a few rows carry no position
    spots = pd.read_csv(spots_path, sep="\t")
    dist, idx = cKDTree(spots[["new_x", "new_y"]].to_numpy()).query(labels[["x", "y"]].to_numpy())
    far = dist > 0.05
    if far.any():
        raise EmoError(f"{path}: label at array position ({labels['x'].iloc[far.argmax()]}, "
                       f"{labels['y'].iloc[far.argmax()]}) matches no spot of {spots_path}")
    ids = spots["x"].astype(int).astype(str).to_numpy()[idx] + "x" + spots["y"].astype(int).astype(str).to_numpy()[idx]
    return pd.Series(labels["label"].to_numpy(), index=pd.Index(ids, name="spot_id"), name="label")


def add_her2st_labels(adata, data_dir: str | Path) -> None:
    """Put the section's pathologist labels in `obs["label"]` (missing for unlabelled spots)."""
    labels = read_her2st_labels(data_dir, adata.uns[SPATIAL_KEY]["section_id"])
    adata.obs["label"] = pd.Categorical(labels.reindex(adata.obs_names).to_numpy())


def _visium_positions(spatial: Path) -> pd.DataFrame:
    names = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    for name in ("tissue_positions.csv", "tissue_positions_list.csv"):
        path = spatial / name
        if path.exists():
            first = path.open().readline().split(",")[0].strip()
            table = pd.read_csv(path, header=0 if first == "barcode" else None)
            if table.shape[1] != 6:
                raise EmoError(f"{path}: expected 6 columns ({', '.join(names)}), found {table.shape[1]}")
            table.columns = names
            return table.set_index("barcode")
    raise EmoError(f"{spatial}: no tissue_positions.csv or tissue_positions_list.csv (Space Ranger spatial/ folder)")


def read_visium(folder: str | Path, *, image_path: str | Path | None = None, section_id: str | None = None,
                spot_diameter_um: float = VISIUM_SPOT_DIAMETER_UM):
    """A 10x Visium Space Ranger output folder (`filtered_feature_bc_matrix.h5` + `spatial/`).

    µm/px comes from the spot diameter in full-resolution pixels (55 µm spots). With `image_path`
    (the full-resolution image given to Space Ranger) coordinates are full-res pixels; otherwise
    the hires PNG is used and coordinates are scaled by `tissue_hires_scalef`.
    """
    import anndata as ad
    import h5py

    folder = Path(folder)
    h5_path, spatial = folder / "filtered_feature_bc_matrix.h5", folder / "spatial"
    if not h5_path.exists():
        raise EmoError(f"{h5_path}: not found; pass a Space Ranger output folder (outs/)")
    with h5py.File(h5_path, "r") as h5:
        if "matrix" not in h5:
            raise EmoError(f"{h5_path}: no 'matrix' group; only Space Ranger v2+ HDF5 matrices are read")
        m = h5["matrix"]
        shape = tuple(m["shape"][()])
        genes_by_spots = sparse.csc_matrix((m["data"][()], m["indices"][()], m["indptr"][()]), shape=shape)
        barcodes = m["barcodes"][()].astype(str)
        feat = m["features"]
        var = pd.DataFrame({"gene_ids": feat["id"][()].astype(str),
                            "feature_types": feat["feature_type"][()].astype(str)},
                           index=pd.Index(feat["name"][()].astype(str)))
    keep = (var["feature_types"] == "Gene Expression").to_numpy()
    x = genes_by_spots.T.tocsr()[:, keep]
    _check_counts(x.data, str(h5_path))
    var = var[keep]
    var.index = ad.utils.make_index_unique(var.index)  # symbols repeat (e.g. TBCE); gene_ids stay exact
    positions = _visium_positions(spatial)
    missing = pd.Index(barcodes).difference(positions.index)
    if len(missing):
        raise EmoError(f"{spatial}: {len(missing)} barcodes of {h5_path.name} have no position (e.g. {missing[0]!r})")
    positions = positions.loc[barcodes]
    scalefactors_path = spatial / "scalefactors_json.json"
    if not scalefactors_path.exists():
        raise EmoError(f"{scalefactors_path}: not found; it gives the spot diameter in pixels (µm/px)")
    sf = json.loads(scalefactors_path.read_text())
    full_mpp = spot_diameter_um / float(sf["spot_diameter_fullres"])
    scale = 1.0
    if image_path is not None:
        image = Path(image_path)
        if not image.exists():
            raise EmoError(f"{image}: image not found")
    else:
        image = spatial / "tissue_hires_image.png"
        key = "tissue_hires_scalef"
        if not image.exists():
            image, key = spatial / "tissue_lowres_image.png", "tissue_lowres_scalef"
        if image.exists():
            scale = float(sf[key])
        else:
            image = None
    xy = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64) * scale
    obs = pd.DataFrame({"array_x": positions["array_col"].to_numpy(int), "array_y": positions["array_row"].to_numpy(int),
                        "in_tissue": positions["in_tissue"].to_numpy(int)})
    meta = {"image_path": str(image.resolve()) if image else None, "mpp": full_mpp / scale,
            "spot_diameter_um": spot_diameter_um, "spot_pitch_um": VISIUM_SPOT_PITCH_UM,
            "section_id": section_id or folder.name, "image_scale": scale, "source": "visium"}
    return _make(x, barcodes, var, obs, xy, meta)


def read_spatial_h5ad(path: str | Path, *, image_path: str | Path | None = None, section_id: str | None = None,
                      spot_diameter_um: float = VISIUM_SPOT_DIAMETER_UM, library_id: str | None = None):
    """An `.h5ad` in emo's own form, or in the squidpy convention (`uns["spatial"][library]["scalefactors"]`,
    `obsm["spatial"]` in full-resolution pixels). Raw counts are taken from X, else `layers["counts"]`.
    """
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise EmoError(f"{path}: not found")
    adata = ad.read_h5ad(path)
    if "spatial" not in adata.obsm:
        raise EmoError(f"{path}: no obsm['spatial'] spot coordinates; not a spatial AnnData")
    x = adata.X
    values = x.data if sparse.issparse(x) else np.asarray(x)
    try:
        _check_counts(values, str(path))
    except EmoError:
        if "counts" not in adata.layers:
            raise EmoError(f"{path}: X holds no raw counts and there is no layers['counts']; "
                           "spot targets are normalised from raw counts") from None
        adata.X = adata.layers["counts"]
        _check_counts(adata.X.data if sparse.issparse(adata.X) else np.asarray(adata.X), f"{path} layers['counts']")
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    if SPATIAL_KEY in adata.uns:
        return adata
    libraries = adata.uns.get("spatial", {})
    if library_id is None:
        if len(libraries) != 1:
            raise EmoError(f"{path}: uns['spatial'] holds {len(libraries)} libraries "
                           f"({', '.join(libraries) or 'none'}); pass library_id")
        library_id = next(iter(libraries))
    sf = libraries[library_id].get("scalefactors", {})
    if "spot_diameter_fullres" not in sf:
        raise EmoError(f"{path}: uns['spatial'][{library_id!r}]['scalefactors'] lacks spot_diameter_fullres (µm/px)")
    if image_path is not None and not Path(image_path).exists():
        raise EmoError(f"{image_path}: image not found")
    adata.obs.insert(0, "spot_id", adata.obs_names.astype(str))
    if "section_id" not in adata.obs:
        adata.obs.insert(1, "section_id", section_id or library_id)
    for src, dst in (("array_col", "array_x"), ("array_row", "array_y")):
        if src in adata.obs and dst not in adata.obs:
            adata.obs[dst] = adata.obs[src].to_numpy()
    adata.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    adata.uns[SPATIAL_KEY] = {"image_path": str(Path(image_path).resolve()) if image_path else "",
                              "mpp": spot_diameter_um / float(sf["spot_diameter_fullres"]),
                              "spot_diameter_um": spot_diameter_um, "spot_pitch_um": VISIUM_SPOT_PITCH_UM,
                              "section_id": section_id or library_id, "image_scale": 1.0, "source": "squidpy_h5ad"}
    return adata


def read_spatial(path: str | Path, section: str | None = None, **kwargs):
    """Dispatch on the layout: `.h5ad`, a Visium folder, or a legacy ST folder (needs `section`)."""
    path = Path(path)
    if path.suffix == ".h5ad":
        return read_spatial_h5ad(path, **kwargs)
    if (path / "filtered_feature_bc_matrix.h5").exists():
        return read_visium(path, **kwargs)
    if (path / "counts").is_dir() and (path / "spots").is_dir():
        if section is None:
            raise EmoError(f"{path}: a legacy ST folder holds many sections; name one (e.g. B4)")
        return read_her2st(path, section, **kwargs)
    raise EmoError(f"{path}: not a spatial dataset (.h5ad, Visium outs/ folder, or counts/ + spots/ folders)")


def section_spatial_uns(adata) -> dict:
    """The section's `uns["spatial"]` for scanpy/squidpy: its own when it has one, else built from
    `uns[SPATIAL_KEY]` (H&E thumbnails, scale factors for `obsm["spatial"]`)."""
    from emo.slides.spatial_uns import image_spatial_uns

    spatial = adata.uns.get("spatial")
    if isinstance(spatial, dict) and spatial:
        return spatial
    meta = adata.uns[SPATIAL_KEY]
    return image_spatial_uns(
        str(meta["section_id"]), meta.get("image_path") or None, None,
        float(meta["spot_diameter_um"]) / float(meta["mpp"]), {"mpp": float(meta["mpp"]), "source": meta.get("source")})


def scanpy_spatial(adata):
    """`adata` as scanpy/squidpy plot it as is: `uns["spatial"]` (`section_spatial_uns`) and the raw
    counts also in `layers["counts"]`. Modified in place."""
    adata.uns["spatial"] = section_spatial_uns(adata)
    if "counts" not in adata.layers:
        adata.layers["counts"] = adata.X.copy()
    return adata


def normalize_spots(adata, target_sum: float = 1e4):
    """Spot targets: each spot scaled to `target_sum` total counts, then log1p; counts kept in layers.

    Spots without any count stay all-zero. Returns a new AnnData; the input is not modified.
    """
    out = adata.copy()
    counts = sparse.csr_matrix(adata.X, dtype=np.float32)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    factor = np.divide(target_sum, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
    norm = sparse.diags(factor.astype(np.float32)) @ counts
    norm.data = np.log1p(norm.data)
    out.layers["counts"] = counts
    out.X = norm.tocsr()
    out.obs["total_counts"] = totals
    out.uns[SPATIAL_KEY] = {**out.uns.get(SPATIAL_KEY, {}), "normalization": f"log1p(counts / total * {target_sum:g})"}
    return out
