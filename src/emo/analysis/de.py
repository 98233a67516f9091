"""Differential expression ER+ vs ER−: per gene OLS expression ~ ER + covariates (paper, Results).

All genes that share a design (the same samples with values) are fitted with one least-squares solve,
so a transcriptome costs about as much as one gene. Rules for missing values, documented once here:

* samples with a missing contrast or covariate value are dropped from every gene (complete cases);
* a gene's missing expression values drop those samples for that gene only (genes with the same
  missing pattern share one solve);
* genes that are all-NaN, constant, or have fewer samples than parameters + 2 are skipped and
  counted in the summary (`skipped_*`), never silently given a P value.

The contrast (ER status by default) is coded 1 for positive and 0 for negative; categorical
covariates get treatment (dummy) coding with the first sorted level as reference, as statsmodels'
formulas do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from emo.analysis.bulk import Expression, align, attach_sheet, clean_labels, load_expression, select_genes
from emo.analysis.config import DEConfig
from emo.errors import EmoError

__all__ = ["DEConfig", "DEFAULT_COVARIATES", "design_matrix", "ols_contrast", "differential_expression", "report_section"]

#: The paper's covariates → sheet column names tried (case-insensitive) for each.
DEFAULT_COVARIATES: dict[str, tuple[str, ...]] = {
    "age": ("age", "age_at_diagnosis", "age_at_initial_pathologic_diagnosis", "age_years"),
    "her2": ("her2_status", "her2", "her2_ihc", "her2status"),
    "tumour_size": ("tumor_size", "tumour_size", "size", "tumor_size_mm", "tumour_size_mm", "pathologic_t"),
    "lymph_node": ("lymph_node_status", "node_status", "lymph_nodes", "ln_status", "nodal_status",
                   "pathologic_n"),
}
CONTRAST_ALIASES = ("er_status", "er", "er_ihc", "erstatus", "estrogen_receptor_status")
POSITIVE = {"1", "1.0", "positive", "pos", "+", "er+", "yes", "true", "p"}
NEGATIVE = {"0", "0.0", "negative", "neg", "-", "er-", "no", "false", "n"}


def _find_column(obs: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    lower = {str(c).lower(): c for c in obs.columns}
    return next((lower[n] for n in names if n in lower), None)


def _binary(values: pd.Series, name: str) -> pd.Series:
    text = clean_labels(values).astype("string").str.strip().str.lower()
    coded = pd.Series(np.nan, index=values.index)
    coded[text.isin(POSITIVE)] = 1.0
    coded[text.isin(NEGATIVE)] = 0.0  # anything else (e.g. 'equivocal') stays missing
    if coded.nunique() < 2:
        raise EmoError(f"contrast column {name!r}: need both positive and negative samples, "
                       f"found values {sorted(text.dropna().unique())[:6]}; choose another --contrast")
    return coded


def design_matrix(
    obs: pd.DataFrame, contrast: str = "er_status", covariates: list[str] | None = None
) -> tuple[pd.DataFrame, dict]:
    """Design [samples × (intercept, contrast, covariate terms)] on complete cases, plus notes.

    `covariates=None` uses the paper's (age, HER2, tumour size, lymph-node status) where the sheet has
    them; named covariates must exist. A covariate with one level among the used samples is an error.
    """
    notes: dict = {"covariates_missing": []}
    col = contrast if contrast in obs.columns else _find_column(obs, (contrast.lower(),) + (
        CONTRAST_ALIASES if contrast.lower() in CONTRAST_ALIASES else ()))
    if col is None:
        raise EmoError(f"sample sheet: no contrast column {contrast!r} (columns: {list(obs.columns)[:12]}); "
                       "give --samples with it or choose --contrast")
    if covariates is None:
        cov_cols = []
        for label, names in DEFAULT_COVARIATES.items():
            found = _find_column(obs, names)
            (cov_cols.append(found) if found else notes["covariates_missing"].append(label))
    else:
        cov_cols = []
        for name in covariates:
            found = name if name in obs.columns else _find_column(obs, (name.lower(),))
            if found is None:
                raise EmoError(f"sample sheet: no covariate column {name!r} (columns: {list(obs.columns)[:12]})")
            cov_cols.append(found)
    frame = pd.DataFrame({"contrast": _binary(obs[col], col)}, index=obs.index)
    for c in cov_cols:
        frame[c] = clean_labels(obs[c])
    complete = frame.notna().all(axis=1)
    notes.update(contrast=col, covariates=cov_cols, n_samples=int(len(frame)),
                 dropped_missing_clinical=int((~complete).sum()))
    frame = frame[complete]
    parts = [pd.Series(1.0, index=frame.index, name="intercept"), frame["contrast"].rename(col)]
    for c in cov_cols:
        values = frame[c]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().all():
            if numeric.nunique() < 2:
                raise EmoError(f"covariate {c!r} has one level ({numeric.iloc[0]!r}) among the "
                               f"{len(frame)} samples used; drop it from --covariates")
            parts.append(numeric.astype(float).rename(c))
            continue
        levels = sorted(values.astype(str).unique())
        if len(levels) < 2:
            raise EmoError(f"covariate {c!r} has one level ({levels[0]!r}) among the {len(frame)} samples "
                           "used; drop it from --covariates")
        cat = pd.Categorical(values.astype(str), categories=levels)
        dummies = pd.get_dummies(cat, prefix=c, drop_first=True, dtype=float)
        dummies.index = frame.index
        parts.append(dummies)
    design = pd.concat(parts, axis=1)
    if len(design) <= design.shape[1] + 1:
        raise EmoError(f"only {len(design)} complete samples for {design.shape[1]} model terms; "
                       "use fewer covariates or more samples")
    if np.linalg.matrix_rank(design.to_numpy()) < design.shape[1]:
        raise EmoError(f"covariates {cov_cols} are collinear with each other or with {col!r}; drop one")
    return design, notes


def _fit_block(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OLS for all columns of y at once: coefficient and standard error of term 1 (the contrast)."""
    q, r = np.linalg.qr(x)
    beta = np.linalg.solve(r, q.T @ y)
    resid = y - x @ beta
    dof = x.shape[0] - x.shape[1]
    sigma2 = np.einsum("ij,ij->j", resid, resid) / dof
    r_inv = np.linalg.solve(r, np.eye(r.shape[0]))
    var_contrast = (r_inv[1] @ r_inv[1])  # [(X'X)^-1]_11 = row 1 of R^-1 squared
    return beta[1], np.sqrt(sigma2 * var_contrast)


def ols_contrast(data: pd.DataFrame, design: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per gene: β, SE, t and two-sided P of the design's second column; skipped genes counted."""
    y_all = data.loc[design.index].to_numpy(dtype=np.float64)
    x_all = design.to_numpy(dtype=np.float64)
    n_par = x_all.shape[1]
    finite = np.isfinite(y_all)
    n_obs = finite.sum(axis=0)
    y_masked = np.where(finite, y_all, np.nan)
    with np.errstate(invalid="ignore"):
        spread = np.nanmax(y_masked, axis=0, initial=-np.inf) - np.nanmin(y_masked, axis=0, initial=np.inf)
    all_nan = n_obs == 0
    too_few = ~all_nan & (n_obs < n_par + 2)
    constant = ~all_nan & ~too_few & ~(spread > 0)
    fit = ~(all_nan | too_few | constant)
    beta = np.full(y_all.shape[1], np.nan)
    se = np.full(y_all.shape[1], np.nan)
    # one solve per distinct missing-value pattern (usually one: no NaN); patterns keyed as packed bytes
    fit_idx = np.flatnonzero(fit)
    packed = np.ascontiguousarray(np.packbits(finite[:, fit], axis=0).T)
    keys, first, inverse = np.unique(packed.view(np.dtype((np.void, packed.shape[1]))).ravel(),
                                     return_index=True, return_inverse=True)
    for k in range(len(keys)):
        cols = fit_idx[inverse == k]
        rows = finite[:, fit_idx[first[k]]]
        x = x_all[rows]
        if np.linalg.matrix_rank(x) < n_par:  # missing samples made the design singular
            continue
        beta[cols], se[cols] = _fit_block(x, y_all[np.ix_(rows, cols)])
    singular = fit & np.isnan(beta)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = beta / se
    p = 2 * stats.t.sf(np.abs(t), n_obs - n_par)
    table = pd.DataFrame({"gene": data.columns, "n": n_obs, "beta": beta, "se": se, "t": t, "p": p})
    skipped = {"skipped_all_nan": int(all_nan.sum()), "skipped_too_few_samples": int(too_few.sum()),
               "skipped_constant": int(constant.sum()), "skipped_singular_design": int(singular.sum())}
    return table, skipped


def _de_one(expr: Expression, contrast: str, covariates: list[str] | None, alpha: float) -> tuple[pd.DataFrame, dict]:
    from statsmodels.stats.multitest import multipletests

    design, notes = design_matrix(expr.obs, contrast, covariates)
    table, skipped = ols_contrast(expr.data, design)
    notes.update(skipped, n_genes=int(table.shape[0]), design_terms=list(design.columns))
    ok = table["p"].notna()
    if not ok.any():
        raise EmoError(f"{expr.source}: no gene could be tested ({skipped}); check the expression values")
    table["fdr_bh"] = np.nan
    table.loc[ok, "fdr_bh"] = multipletests(table.loc[ok, "p"], method="fdr_bh")[1]
    table["significant"] = table["fdr_bh"] < alpha
    notes["n_significant"] = int(table["significant"].sum())
    return table.sort_values("p", kind="stable").reset_index(drop=True), notes


def concordance(measured: pd.DataFrame, predicted: pd.DataFrame) -> pd.DataFrame:
    """Genes tested in both: significant in both with the same sign of β = concordant (paper's 431)."""
    both = measured.merge(predicted, on="gene", suffixes=("_measured", "_predicted"))
    both["concordant"] = (both["significant_measured"] & both["significant_predicted"]
                          & (np.sign(both["beta_measured"]) == np.sign(both["beta_predicted"])))
    return both.sort_values("p_measured", kind="stable").reset_index(drop=True)


def differential_expression(
    measured: str | Path | pd.DataFrame,
    predicted: str | Path | pd.DataFrame | None = None,
    out_dir: str | Path | None = None,
    config: DEConfig | None = None,
    *,
    samples: str | Path | pd.DataFrame | None = None,
    sample_column: str | None = None,
    **options: Any,
) -> pd.DataFrame:
    """ER (or any binary `contrast`) DE on measured and, if given, predicted expression.

    Returns the per-gene table (`de_measured`); with predictions, the concordance table joining both.
    Writes `de_measured`, `de_predicted`, `de_concordance` (CSV + Parquet), `de_summary.json` and a
    volcano/β-scatter PNG into `out_dir`.
    """
    cfg = DEConfig.build(config, what="differential_expression", **options)
    meas = attach_sheet(load_expression(measured, orientation=cfg.orientation, split=cfg.split, log_cpm=cfg.log_cpm),
                        samples, sample_column)
    meas.data = select_genes(meas.data, cfg.genes, source=meas.source)
    results: dict[str, pd.DataFrame] = {}
    summary: dict = {"alpha": cfg.alpha}
    if predicted is not None:
        pred = load_expression(predicted, orientation=cfg.orientation)
        meas, pred = align(meas, pred)
        pred.data = select_genes(pred.data, cfg.genes, source=pred.source)
        results["predicted"], summary["predicted"] = _de_one(pred, cfg.contrast, cfg.covariates, cfg.alpha)
    results["measured"], summary["measured"] = _de_one(meas, cfg.contrast, cfg.covariates, cfg.alpha)
    result = results["measured"]
    if predicted is not None:
        result = concordance(results["measured"], results["predicted"])
        summary["n_concordant"] = int(result["concordant"].sum())
        summary["n_tested_both"] = int(len(result))
        results["concordance"] = result
    if out_dir is not None:
        _write(Path(out_dir), results, summary, params={
            "measured": str(measured) if not isinstance(measured, pd.DataFrame) else "<table>",
            "predicted": None if predicted is None else str(predicted), "contrast": cfg.contrast,
            "covariates": cfg.covariates, "genes": cfg.genes, "split": cfg.split, "alpha": cfg.alpha, "log_cpm": cfg.log_cpm})
    result.attrs["summary"] = summary
    return result


def _write(out: Path, results: dict[str, pd.DataFrame], summary: dict, params: dict) -> None:
    from emo.io import provenance, write_json_atomic, write_table_atomic

    out.mkdir(parents=True, exist_ok=True)
    for name, table in results.items():
        write_table_atomic(out / f"de_{name}.csv", table)
        write_table_atomic(out / f"de_{name}.parquet", table)
    write_json_atomic(out / "de_summary.json", {**summary, "provenance": provenance(**params)})
    _plot(out / "de.png", results)


def _plot(png: Path, results: dict[str, pd.DataFrame]) -> None:
    import matplotlib.pyplot as plt

    from emo.analysis import plots
    from emo.io import save_figure

    sources = [s for s in ("measured", "predicted") if s in results]
    ncol = len(sources) + ("concordance" in results)
    fig, axes = plt.subplots(1, ncol, figsize=(4.2 * ncol, 4), squeeze=False)
    for ax, source in zip(axes[0], sources):
        t = results[source].dropna(subset=["p"])
        colour = np.where(t["significant"], "#c0392b", "#7f8c8d")
        ax.scatter(t["beta"], -np.log10(t["p"].clip(lower=1e-300)), s=4, c=colour, lw=0)
        for _, row in t.head(8).iterrows():
            ax.annotate(row["gene"], (row["beta"], -np.log10(max(row["p"], 1e-300))), fontsize=7)
        ax.set(xlabel="β (contrast)", ylabel="−log10 P", title=f"{source}: {int(t['significant'].sum())} DE genes")
    if "concordance" in results:
        c = results["concordance"]
        ax = axes[0][-1]
        ax.scatter(c["beta_measured"], c["beta_predicted"], s=4, lw=0,
                   c=np.where(c["concordant"], "#c0392b", "#7f8c8d"))
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
        plots.identity_line(ax, c["beta_measured"], c["beta_predicted"])
        ax.set(xlabel="β measured", ylabel="β predicted", title=f"concordant: {int(c['concordant'].sum())}")
    fig.tight_layout()
    save_figure(fig, png, dpi=120)


def report_section(directory: str | Path) -> str:
    """HTML for `emo report`: DE counts, top genes and the figure ('' when DE was not run)."""
    from emo.reports.html import esc, figure, table

    d = Path(directory)
    if not (d / "de_measured.csv").exists():
        return ""
    import json

    summary = json.loads((d / "de_summary.json").read_text()) if (d / "de_summary.json").exists() else {}
    m = summary.get("measured", {})
    lines = [f"<p>Contrast {esc(m.get('contrast', 'contrast'))}: {m.get('n_significant', '?')} genes significant in "
             "measured expression"]
    if "predicted" in summary:
        lines[-1] += (f", {summary['predicted'].get('n_significant', '?')} in predicted, "
                      f"{summary.get('n_concordant', '?')} concordant (same sign, both FDR &lt; {summary['alpha']})")
    lines[-1] += ".</p>"
    lines.append(table(pd.read_csv(d / "de_measured.csv").head(15)))
    lines.append(figure(d / "de.png"))
    return "\n".join(lines)
