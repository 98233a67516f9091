"""Expression matrices from TSV/CSV (gzipped or not), Parquet or AnnData, as genes × samples.

Every reader returns a float64 `DataFrame` with genes as rows and sample ids as columns, after
checking that every value is a finite number: a bad cell is reported with its file, sample and gene
instead of surfacing later as a NaN median or a silently dropped column.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from emo.errors import EmoError

Orientation = Literal["auto", "genes-by-samples", "samples-by-genes"]
ORIENTATIONS = ("auto", "genes-by-samples", "samples-by-genes")


def _suffixes(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def _read_text(path: Path, sep: str) -> pd.DataFrame:
    first = pd.read_csv(path, sep=sep, nrows=1, header=None, dtype=str).iloc[0].tolist()
    dup = pd.Index(first[1:])[pd.Index(first[1:]).duplicated()]
    if len(dup):
        raise EmoError(f"{path}: column {dup[0]!r} appears more than once in the header; "
                       "every sample (or gene) id must be unique")
    frame = pd.read_csv(path, sep=sep, index_col=0, low_memory=False)
    frame.index = frame.index.astype(str)
    frame.columns = frame.columns.astype(str)
    return frame


def _read_raw(path: Path) -> pd.DataFrame:
    """The table as stored (labels in the first column / header), values not yet checked."""
    name = _suffixes(path)
    if name.endswith(".parquet") or name.endswith(".pq"):
        frame = pd.read_parquet(path)
        if (isinstance(frame.index, pd.RangeIndex) and frame.shape[1]
                and not pd.api.types.is_numeric_dtype(frame.dtypes.iloc[0])):
            frame = frame.set_index(frame.columns[0])
        frame.index = frame.index.astype(str)
        frame.columns = frame.columns.astype(str)
        return frame
    if name.endswith(".h5ad"):
        import anndata as ad

        adata = ad.read_h5ad(path)
        x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
        # AnnData is samples × genes by convention; flip so the caller's orientation rules apply alike.
        return pd.DataFrame(x.T, index=adata.var_names.astype(str), columns=adata.obs_names.astype(str))
    if name.endswith(".csv"):
        return _read_text(path, ",")
    if name.endswith((".tsv", ".txt", ".tab")):
        return _read_text(path, "\t")
    raise EmoError(f"{path}: unknown matrix format; use .tsv/.csv (optionally .gz), .parquet or .h5ad")


def _orient(frame: pd.DataFrame, path: Path, orientation: str, sample_ids: Iterable[str] | None) -> pd.DataFrame:
    if orientation not in ORIENTATIONS:
        raise EmoError(f"orientation {orientation!r} unknown; choose one of {', '.join(ORIENTATIONS)}")
    if orientation == "genes-by-samples":
        return frame
    if orientation == "samples-by-genes":
        return frame.T
    if sample_ids is not None:
        ids = set(sample_ids)
        in_cols = sum(c in ids for c in frame.columns)
        in_rows = sum(r in ids for r in frame.index)
        if in_cols or in_rows:
            return frame if in_cols >= in_rows else frame.T
        raise EmoError(f"{path}: neither its row nor its column labels match any sample_id of the sample "
                       f"sheet (e.g. columns {list(frame.columns[:3])}, rows {list(frame.index[:3])}); "
                       "fix the sheet's sample_id column")
    # No sheet to compare with: transcriptomes have more genes than samples.
    return frame if frame.shape[0] >= frame.shape[1] else frame.T


def _check_values(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    bad_cols = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad_cols:
        col = bad_cols[0]
        coerced = pd.to_numeric(frame[col], errors="coerce")
        bad = frame[col][coerced.isna() & frame[col].notna()]
        row = bad.index[0] if len(bad) else frame.index[0]
        value = bad.iloc[0] if len(bad) else frame[col].iloc[0]
        raise EmoError(f"{path}: non-numeric value {value!r} for sample {col!r}, gene {row!r}; "
                       "the matrix must hold numbers only (labels in the first row and column)")
    values = frame.to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        i, j = map(int, np.argwhere(~finite)[0])
        raise EmoError(f"{path}: value {values[i, j]} for sample {frame.columns[j]!r}, gene {frame.index[i]!r} "
                       f"({int((~finite).sum())} non-finite values in all); remove or impute them first")
    return pd.DataFrame(values, index=frame.index, columns=frame.columns)


def read_matrix(path: str | Path, orientation: Orientation = "auto",
                sample_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Read an expression matrix as float64 genes × samples, every value checked finite.

    With `orientation="auto"` the axis whose labels match `sample_ids` (the sample sheet) holds the
    samples; without a sheet the longer axis is taken to be genes.
    """
    path = Path(path)
    if not path.exists():
        raise EmoError(f"{path}: matrix file not found")
    frame = _orient(_read_raw(path), path, orientation, sample_ids)
    frame.index.name, frame.columns.name = "gene", "sample_id"
    dup = frame.columns[frame.columns.duplicated()]
    if len(dup):
        raise EmoError(f"{path}: sample {dup[0]!r} appears more than once; sample ids must be unique")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise EmoError(f"{path}: the matrix is empty ({frame.shape[0]} genes × {frame.shape[1]} samples)")
    return _check_values(frame, path)


def counts_to_log_cpm(counts: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Raw counts → log2(CPM + 1): library size is each sample's total over all genes of its file."""
    values = counts.to_numpy()
    if (values < 0).any():
        i, j = map(int, np.argwhere(values < 0)[0])
        raise EmoError(f"{path}: negative count {values[i, j]} for sample {counts.columns[j]!r}, gene "
                       f"{counts.index[i]!r}; raw counts cannot be negative (log-scale values go to --matrix)")
    lib = values.sum(axis=0)
    if (lib <= 0).any():
        raise EmoError(f"{path}: sample {counts.columns[int(np.argmax(lib <= 0))]!r} has no counts at all; drop it")
    return pd.DataFrame(np.log2(values / lib * 1e6 + 1.0), index=counts.index, columns=counts.columns)
