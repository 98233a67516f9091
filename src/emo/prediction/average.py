"""EMO-average (`average.h5ad` + `average.csv`: slides × genes, the mean of each slide's tile
predictions): its writer and its one reader."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from emo.errors import EmoError
from emo.io import atomic_path, dense, write_table_atomic


def write_average(out_dir: Path, genes: list[str], slide_ids: list[str]) -> Path:
    """EMO-average: per slide the mean over tiles (stored as var['mean'] of its spatial file)."""
    import anndata

    rows, n_tiles = [], []
    for slide_id in slide_ids:
        with h5py.File(out_dir / "spatial" / f"{slide_id}.h5ad", "r") as f:
            rows.append(f["var/mean"][...])
            n_tiles.append(f["X"].shape[0])
    x = np.asarray(rows, dtype=np.float32).reshape(len(slide_ids), len(genes))
    obs = pd.DataFrame({"n_tiles": n_tiles}, index=pd.Index(slide_ids, name="slide_id"))
    avg = anndata.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(genes, name="gene")))
    avg.uns["emo"] = {"kind": "EMO-average", "definition": "mean of tile predictions per slide"}
    dest = out_dir / "average.h5ad"
    with atomic_path(dest) as tmp:
        avg.write_h5ad(tmp)
    write_table_atomic(out_dir / "average.csv", pd.DataFrame(x, index=obs.index, columns=genes), index=True)
    return out_dir


def read_average(path: Path) -> pd.DataFrame:
    """EMO-average predictions as a slides/samples × genes float64 frame (index = slide or sample id)."""
    path = Path(path)
    if not path.exists():
        raise EmoError(f"{path}: predictions not found; pass EMO-average average.h5ad or average.csv from `emo predict`")
    if path.suffix == ".h5ad":
        import anndata

        ad = anndata.read_h5ad(path)
        frame = pd.DataFrame(dense(ad.X, np.float64), index=ad.obs_names.astype(str), columns=ad.var_names.astype(str))
        if "sample_id" in ad.obs:
            frame.attrs["sample_id"] = ad.obs["sample_id"].astype(str).to_numpy()
        return frame
    sep = "\t" if path.suffix in {".tsv", ".txt"} or path.name.endswith(".tsv.gz") else ","
    frame = pd.read_csv(path, sep=sep, index_col=0)
    frame.index = frame.index.astype(str)
    if "sample_id" in frame.columns:
        frame.attrs["sample_id"] = frame.pop("sample_id").astype(str).to_numpy()
    bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise EmoError(f"{path}: non-numeric columns {bad[:3]}; expected samples × genes with the id in the first column")
    return frame.astype(np.float64)
