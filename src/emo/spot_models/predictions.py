"""A section's spot predictions as files people open: CSV (spots × genes) and an AnnData that scanpy
and squidpy plot over the section's H&E as is (same spots, coordinates and images as the measured data)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from emo.io import atomic_path, write_table_atomic


def prediction_anndata(pred: pd.DataFrame, measured: ad.AnnData, model: str | Path | None = None) -> ad.AnnData:
    """Predicted normalised log1p expression in X, with the measured section's obs, `obsm["spatial"]` and
    `uns["spatial"]` (thumbnails and scale factors) so predicted and measured maps line up."""
    from emo.expression.st_readers import SPATIAL_KEY, section_spatial_uns

    obs = measured.obs.loc[pred.index].copy()
    out = ad.AnnData(X=pred.to_numpy(dtype=np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(pred.columns.astype(str))))
    out.obsm["spatial"] = np.asarray(measured[pred.index].obsm["spatial"], dtype=np.float64)
    out.uns[SPATIAL_KEY] = dict(measured.uns[SPATIAL_KEY])
    out.uns["emo"] = {"kind": "spot predictions", "values": "predicted normalised log1p expression",
                      "model": str(Path(model).resolve()) if model else ""}
    out.uns["spatial"] = section_spatial_uns(measured)
    return out


def write_spot_predictions(out_dir: str | Path, section: str, pred: pd.DataFrame, measured: ad.AnnData,
                           model: str | Path | None = None) -> tuple[Path, Path]:
    """`<out_dir>/<section>.csv` and `<out_dir>/<section>.h5ad` (the latter for scanpy/squidpy)."""
    out_dir = Path(out_dir)
    csv = write_table_atomic(out_dir / f"{section}.csv", pred, index=True)
    h5ad = out_dir / f"{section}.h5ad"
    adata = prediction_anndata(pred, measured, model)
    with atomic_path(h5ad) as tmp:
        adata.write_h5ad(tmp)
    return csv, h5ad
