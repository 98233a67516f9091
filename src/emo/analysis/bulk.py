"""Loading measured and predicted expression plus the sample sheet for the downstream analyses.

Every analysis works on pandas frames `samples × genes` (float64) and a sample sheet indexed by the
same sample ids. Inputs may be `targets.h5ad` / EMO-average `average.h5ad` (obs = samples), or plain
tables (CSV/TSV/Parquet, optionally gzipped), read by `emo.expression.readers` (the one matrix and
table reader): a table's orientation is `auto` (from the header of its first column: `gene`/`symbol`-
like → genes in rows, `sample_id`/`slide_id`-like → samples in rows), `genes-by-samples` or
`samples-by-genes` (`orientation`; the old `genes`/`samples` still work).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emo.errors import EmoError
from emo.expression.readers import read_matrix, read_table
from emo.io import dense

#: sample-sheet / obs columns holding intrinsic subtypes, in the order they are looked for
SUBTYPE_COLUMNS = ("pam50_subtype", "pam50", "intrinsic_subtype", "subtype", "pam50_call", "pam50_mrna")
#: Sheet values that mean "not known" (TCGA writes them in brackets).
MISSING_TOKENS = {"", "na", "nan", "none", "null", "unknown", "not evaluated", "not available",
                  "indeterminate", "not applicable", "not reported", "missing", "?"}


@dataclass
class Expression:
    """Expression `data` [samples × genes] with the sample sheet `obs` (may have no columns)."""

    data: pd.DataFrame
    obs: pd.DataFrame
    source: str


def load_expression(
    path: str | Path | pd.DataFrame,
    *,
    orientation: str = "auto",
    split: str | None = None,
    log_cpm: bool = False,
) -> Expression:
    """Read an expression matrix as `samples × genes`; `log_cpm` turns raw counts into log2(CPM + 1)."""
    if isinstance(path, pd.DataFrame):
        data, obs, source = path.copy(), pd.DataFrame(index=path.index), "<table>"
    else:
        path = Path(path)
        source = str(path)
        if not path.exists():
            raise EmoError(f"{path}: file not found; check the path")
        if path.suffix == ".h5ad":
            data, obs = _read_h5ad(path)
        else:
            data = read_matrix(path, orientation, allow_missing=True).T.rename_axis(index=None, columns=None)
            obs = pd.DataFrame(index=data.index)
    data.index = data.index.astype(str)
    data.columns = data.columns.astype(str)
    obs.index = obs.index.astype(str)
    if data.columns.duplicated().any():
        dup = data.columns[data.columns.duplicated()][0]
        raise EmoError(f"{source}: gene {dup!r} appears more than once; de-duplicate the matrix")
    if data.index.duplicated().any():
        dup = data.index[data.index.duplicated()][0]
        raise EmoError(f"{source}: sample {dup!r} appears more than once; de-duplicate the matrix")
    try:
        data = data.astype(np.float64)
    except ValueError:
        raise EmoError(f"{source}: expression values are not all numeric; check the orientation "
                       "(--orientation) and that only the first column holds labels") from None
    if split is not None:
        if "split" not in obs.columns:
            raise EmoError(f"{source}: no 'split' column to select split {split!r}; use targets.h5ad or drop --split")
        keep = obs["split"].astype(str) == split
        if not keep.any():
            raise EmoError(f"{source}: no sample in split {split!r} (have {sorted(obs['split'].astype(str).unique())})")
        data, obs = data.loc[keep.to_numpy()], obs.loc[keep.to_numpy()]
    if log_cpm:
        values = data.to_numpy()
        if np.nanmin(values) < 0:
            raise EmoError(f"{source}: --log-cpm needs raw counts but found negative values; drop --log-cpm")
        libsize = np.nansum(values, axis=1, keepdims=True)
        if (libsize <= 0).any():
            bad = data.index[(libsize[:, 0] <= 0)][0]
            raise EmoError(f"{source}: sample {bad!r} has no counts; remove it")
        data = pd.DataFrame(np.log2(values / libsize * 1e6 + 1.0), index=data.index, columns=data.columns)
    return Expression(data=data, obs=obs, source=source)


def _read_h5ad(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    import anndata

    try:
        adata = anndata.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many kinds
        raise EmoError(f"{path}: cannot read as AnnData ({exc.__class__.__name__}: {exc})") from None
    data = pd.DataFrame(dense(adata.X), index=adata.obs_names, columns=adata.var_names)
    return data, adata.obs.copy()


def load_sheet(path: str | Path | pd.DataFrame, samples: pd.Index, id_column: str | None = None) -> pd.DataFrame:
    """Read a sample sheet and index it by the column whose values match `samples` best.

    Exact duplicate rows are dropped (TCGA clinical tables repeat patients); conflicting duplicates
    are an error. A DataFrame is used as it is when its index already holds the sample ids.
    """
    wanted = set(samples.astype(str))
    if isinstance(path, pd.DataFrame):
        if id_column is None and path.index.astype(str).isin(wanted).any():
            sheet = path.copy()
            sheet.index = sheet.index.astype(str)
            return sheet
        sheet, path = path.reset_index(), "<sample sheet>"
    else:
        path = Path(path)
        sheet = read_table(path)
    if id_column is None:
        overlaps = {c: sheet[c].astype(str).isin(wanted).sum() for c in sheet.columns}
        id_column = max(overlaps, key=overlaps.get)
        if overlaps[id_column] == 0:
            raise EmoError(f"{path}: no column matches the expression sample ids (e.g. {sorted(wanted)[:3]}); "
                           "give --sample-column or fix the ids")
    elif id_column not in sheet.columns:
        raise EmoError(f"{path}: no column {id_column!r}; columns are {list(sheet.columns)}")
    sheet[id_column] = sheet[id_column].astype(str)
    sheet = sheet.drop_duplicates()
    dup = sheet[id_column].duplicated()
    if dup.any():
        raise EmoError(f"{path}: sample {sheet.loc[dup, id_column].iloc[0]!r} has conflicting rows; keep one")
    return sheet.set_index(id_column)


def attach_sheet(expr: Expression, sheet: str | Path | pd.DataFrame | None, id_column: str | None = None) -> Expression:
    """Join a sample sheet onto the expression's obs (sheet columns win); keeps expression samples only."""
    if sheet is None:
        return expr
    table = load_sheet(sheet, expr.data.index, id_column)
    common = expr.data.index.intersection(table.index)
    if len(common) == 0:
        raise EmoError(f"{'sample sheet' if isinstance(sheet, pd.DataFrame) else sheet}: none of its sample ids "
                       f"match {expr.source}")
    obs = expr.obs.drop(columns=[c for c in table.columns if c in expr.obs.columns])
    obs = obs.join(table, how="left")
    return Expression(data=expr.data, obs=obs, source=expr.source)


def predictions_by_sample(pred: pd.DataFrame, obs: pd.DataFrame, what: str = "predictions") -> pd.DataFrame:
    """Rows of `pred` re-indexed by targets `sample_id` (via a sample_id column, the index, or obs slide_id).

    Several slides of one sample are averaged, as EMO-average averages tiles within a slide.
    """
    ids = pd.Index(pred.attrs.get("sample_id", pred.index), dtype=str)
    samples = pd.Index(obs.index.astype(str))
    sample_of = pd.Series(samples, index=samples)
    if "slide_id" in obs:
        slides = obs["slide_id"].astype(str)
        by_slide = pd.Series(samples.to_numpy(), index=slides.to_numpy())
        by_slide = by_slide[~by_slide.index.duplicated()]
        sample_of = pd.concat([by_slide, sample_of[~sample_of.index.isin(by_slide.index)]])
    mapped = ids.map(sample_of)
    keep = ~pd.isna(mapped)
    if not keep.any():
        raise EmoError(
            f"{what}: none of {len(ids)} rows (e.g. {ids[0]!r}) matches a targets sample_id or obs['slide_id']; "
            "name prediction rows by slide_id and give targets an obs column slide_id"
        )
    out = pred.loc[np.asarray(keep)].copy()
    out.index = pd.Index(np.asarray(mapped[keep]), name="sample_id")
    out.attrs = {}
    out = out.groupby(level=0, sort=False).mean()
    out.attrs["n_unmatched"] = int((~keep).sum())
    return out


def align(measured: Expression, predicted: Expression) -> tuple[Expression, Expression]:
    """Restrict both to the shared samples (predicted rows named by sample or by obs `slide_id`), same order."""
    pred = predictions_by_sample(predicted.data, measured.obs, what=predicted.source)
    common = measured.data.index.intersection(pred.index)
    obs = measured.obs.loc[common]
    return (Expression(measured.data.loc[common], obs, measured.source),
            Expression(pred.loc[common], obs, predicted.source))


def select_genes(data: pd.DataFrame, genes: str | list[str] | None, *, source: str) -> pd.DataFrame:
    """Columns for a panel/gene list (`"pam50"`, `"ESR1,PGR"`) or a genes.csv with a `selected` column."""
    if genes is None:
        return data
    from emo.panels import read_gene_file, resolve_genes

    if isinstance(genes, str) and Path(genes).suffix in {".csv", ".tsv", ".parquet", ".txt"}:
        wanted = read_gene_file(genes)  # a missing file is an error, not a gene named like it
    else:
        wanted = resolve_genes(genes)
    present = [g for g in wanted if g in data.columns]
    if not present:
        raise EmoError(f"{source}: none of the requested genes ({', '.join(wanted[:5])}…) is in the matrix")
    return data[present]


def clean_labels(values: pd.Series) -> pd.Series:
    """Strings with missing-value tokens (`[Not Evaluated]`, `NA`, …) become NaN."""
    if pd.api.types.is_numeric_dtype(values):
        return values
    text = values.astype("string").str.strip()
    token = text.str.strip("[]").str.lower()
    return text.mask(token.isin(MISSING_TOKENS) | text.isna()).astype(object)


def subtype_column(obs: pd.DataFrame, requested: str | None, source: str = "sample sheet") -> str | None:
    """The intrinsic-subtype column: `requested` (which must exist), else the first of SUBTYPE_COLUMNS present."""
    if requested:
        if requested not in obs.columns:
            raise EmoError(f"{source}: no subtype column {requested!r} (columns: {list(obs.columns)[:12]}); "
                           "fix --subtype-column")
        return requested
    lower = {str(c).lower(): c for c in obs.columns}
    return next((lower[c] for c in SUBTYPE_COLUMNS if c in lower), None)
