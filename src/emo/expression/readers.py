"""The one reader of expression matrices and sample sheets (TSV/CSV, gzipped or not, Parquet, AnnData).

`read_matrix` returns a float64 `DataFrame` with genes as rows and sample ids as columns, after
checking that every value is a number: a bad cell is reported with its file, sample and gene
instead of surfacing later as a NaN median or a silently dropped column. `emo expression prepare`
and `emo analyze` read matrices through it and sheets through `read_table`, with one orientation
vocabulary (`ORIENTATIONS`; the analyses' old `genes`/`samples` are accepted as aliases).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emo.errors import EmoError
from emo.expression.config import ORIENTATION_ALIASES, ORIENTATIONS, Orientation
from emo.io import dense

#: first-column headers that say what the rows are (for `auto` without a sample sheet)
GENE_HEADERS = {"gene", "genes", "symbol", "gene_symbol", "hgnc_symbol", "gene_name", "gene_id"}
SAMPLE_HEADERS = {"sample_id", "slide_id", "sample", "patient_id", "barcode", "title", ""}


def orientation_name(value: str) -> str:
    """`value` in the one vocabulary (`genes`/`samples` → `genes-by-samples`/`samples-by-genes`)."""
    name = ORIENTATION_ALIASES.get(value, value)
    if name not in ORIENTATIONS:
        raise EmoError(f"orientation {value!r} unknown; choose one of {', '.join(ORIENTATIONS)}")
    return name


def read_table(path: str | Path, dtype: dict[str, Any] | None = None) -> pd.DataFrame:
    """A plain table (sample sheet, per-gene results) by suffix: Parquet, CSV, or TSV/TXT/TAB
    (optionally gzipped); other suffixes are sniffed. Labels stay columns (no index is set)."""
    path = Path(path)
    if not path.exists():
        raise EmoError(f"{path}: file not found; check the path")
    name = _suffixes(path)
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if name.endswith(".csv"):
            return pd.read_csv(path, dtype=dtype)
        if name.endswith((".tsv", ".txt", ".tab")):
            return pd.read_csv(path, sep="\t", dtype=dtype)
        return pd.read_csv(path, sep=None, engine="python", dtype=dtype)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise EmoError(f"{path}: cannot read as a table ({exc}); give a CSV, TSV or Parquet file") from None


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
        x = dense(adata.X)
        # AnnData is samples × genes by convention; flip so the caller's orientation rules apply alike.
        return pd.DataFrame(x.T, index=adata.var_names.astype(str), columns=adata.obs_names.astype(str))
    if name.endswith(".csv"):
        return _read_text(path, ",")
    if name.endswith((".tsv", ".txt", ".tab")):
        return _read_text(path, "\t")
    raise EmoError(f"{path}: unknown matrix format; use .tsv/.csv (optionally .gz), .parquet or .h5ad")


def _orient(frame: pd.DataFrame, path: Path, orientation: str, sample_ids: Iterable[str] | None) -> pd.DataFrame:
    """genes × samples: as stated, else by the sample sheet's ids, else by the first column's header."""
    orientation = orientation_name(orientation)
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
    head = str(frame.index.name or "").strip().lower()
    if head in GENE_HEADERS:
        return frame
    if head in SAMPLE_HEADERS or head.startswith("unnamed"):
        return frame.T
    raise EmoError(f"{path}: cannot tell whether rows are genes or samples from the first column header "
                   f"{frame.index.name!r}; pass --orientation genes-by-samples or samples-by-genes")


def _check_values(frame: pd.DataFrame, path: Path, allow_missing: bool = False) -> pd.DataFrame:
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
    finite = np.isfinite(values) | (np.isnan(values) if allow_missing else False)
    if not finite.all():
        i, j = map(int, np.argwhere(~finite)[0])
        raise EmoError(f"{path}: value {values[i, j]} for sample {frame.columns[j]!r}, gene {frame.index[i]!r} "
                       f"({int((~finite).sum())} non-finite values in all); remove or impute them first")
    return pd.DataFrame(values, index=frame.index, columns=frame.columns)


def read_matrix(path: str | Path, orientation: Orientation = "auto",
                sample_ids: Iterable[str] | None = None, *, allow_missing: bool = False) -> pd.DataFrame:
    """Read an expression matrix as float64 genes × samples, every value checked finite (or NaN
    with `allow_missing`, for analyses of matrices with gaps).

    With `orientation="auto"` the axis whose labels match `sample_ids` (the sample sheet) holds the
    samples; without a sheet the first column's header decides (`gene`/`symbol`-like: genes in rows,
    `sample_id`/`slide_id`-like or empty: samples in rows). AnnData is samples × genes by convention.
    """
    path = Path(path)
    if not path.exists():
        raise EmoError(f"{path}: matrix file not found")
    raw = _read_raw(path)
    if _suffixes(path).endswith(".h5ad") and sample_ids is None and orientation_name(orientation) == "auto":
        orientation = "genes-by-samples"  # already flipped from AnnData's samples × genes
    frame = _orient(raw, path, orientation, sample_ids)
    frame.index.name, frame.columns.name = "gene", "sample_id"
    dup = frame.columns[frame.columns.duplicated()]
    if len(dup):
        raise EmoError(f"{path}: sample {dup[0]!r} appears more than once; sample ids must be unique")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise EmoError(f"{path}: the matrix is empty ({frame.shape[0]} genes × {frame.shape[1]} samples)")
    return _check_values(frame, path, allow_missing)


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
