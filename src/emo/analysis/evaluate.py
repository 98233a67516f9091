"""`emo evaluate`: EMO-average predictions against measured RNA-seq on one split (paper: "Model
validation", "Model selection for testing", "Proliferation score analysis"; Figs. 1, 2, 5).

Per gene: Spearman ρ and P, BH-FDR, Pearson r, R²pred. On a validation split the selection rule
(R² > 0.2 and FDR < 0.001) picks the genes brought forward; on a test split only those genes are
tested, with Bonferroni-adjusted P, and R² is skipped for external cohorts whose scale differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emo.analysis import stats
from emo.analysis.bulk import predictions_by_sample, subtype_column
from emo.analysis.proliferation import proliferation_genes
from emo.analysis.config import EvaluateConfig, EvaluateThresholds
from emo.errors import EmoError
from emo.io import dense, provenance, write_json_atomic, write_table_atomic, write_text_atomic
from emo.panels import get_panel

__all__ = [
    "EvaluateConfig", "EvaluateThresholds", "Evaluation", "compute_evaluation", "evaluate", "gene_table",
    "null_summary", "plot_evaluation", "read_gene_list", "write_evaluation",
]

GENE_COLUMNS = ["gene", "n", "spearman_rho", "spearman_p", "fdr_bh", "pearson_r", "r2", "selected"]
TEST_COLUMNS = ["p_bonferroni", "validated"]
PANELS = ("pam50", "oncotype_dx", "endopredict")
NULL_DEFINITION = (
    "The null: the same head fitted {k} times on labels exchanged between whole patients, each predicting the same "
    "slides; its gene counts show how many genes pass by chance and through the features' own structure."
)


def read_gene_list(path: Path) -> list[str]:
    """The selected genes of a validation run: its selected_genes.txt or genes.csv (`read_gene_file`)."""
    from emo.panels import read_gene_file

    if not Path(path).exists():
        raise EmoError(f"{path}: gene list not found; pass the selected_genes.txt written by the validation run")
    return read_gene_file(path)


def gene_table(measured: pd.DataFrame, predicted: pd.DataFrame, *, r2_mask: np.ndarray | None = None) -> pd.DataFrame:
    """Per-gene statistics of aligned samples × genes frames; `r2_mask` selects the samples R² uses."""
    m, p = measured.to_numpy(np.float64), predicted.to_numpy(np.float64)
    rho, rho_p = stats.spearman(m, p)
    r, _ = stats.pearson(m, p)
    if r2_mask is None:
        r2 = stats.r2_score(m, p)
    elif r2_mask.any():
        r2 = stats.r2_score(m[r2_mask], p[r2_mask])
    else:
        r2 = np.full(m.shape[1], np.nan)
    return pd.DataFrame(
        {
            "gene": measured.columns.astype(str),
            "n": stats.pairwise_n(m, p),
            "spearman_rho": rho,
            "spearman_p": rho_p,
            "fdr_bh": stats.adjust_pvalues(rho_p, "fdr_bh"),
            "pearson_r": r,
            "r2": r2,
        }
    )


def _counts(table: pd.DataFrame, cfg: EvaluateConfig) -> dict[str, int]:
    out = {"n_genes": int(len(table)), f"fdr_lt_{cfg.fdr_report:g}": int((table["fdr_bh"] < cfg.fdr_report).sum())}
    for t in cfg.r2_report:
        out[f"r2_gt_{t:g}"] = int((table["r2"] > t).sum())
    if "validated" in table:  # a test split: every gene in it was tested, none selected here
        out["validated"] = int(table["validated"].sum())
    else:
        out["selected"] = int(table["selected"].sum())
    return out


def _proliferation(measured: pd.DataFrame, predicted: pd.DataFrame, obs: pd.DataFrame, subtype: str | None) -> dict | None:
    genes = proliferation_genes(measured.columns)
    if not genes:
        return None
    score = pd.DataFrame(
        {"measured": measured[genes].mean(axis=1), "predicted": predicted[genes].mean(axis=1)}, index=measured.index
    )
    rho, p = stats.spearman(score["measured"].to_numpy(), score["predicted"].to_numpy())
    out: dict[str, Any] = {
        "genes": genes,
        "n_genes": len(genes),
        "n_samples": int(len(score)),
        "spearman_rho": float(rho[0]),
        "spearman_p": float(p[0]),
        "scores": score,
    }
    if subtype:
        score["subtype"] = obs.loc[score.index, subtype].astype("string").fillna("NA").to_numpy()
        out["subtype_column"] = subtype
        out["by_subtype"] = {
            str(k): {"n": int(len(g)), "median_measured": float(g["measured"].median()),
                     "median_predicted": float(g["predicted"].median())}
            for k, g in score.groupby("subtype")
        }
    return out


def _panel_summary(table: pd.DataFrame, is_test: bool) -> pd.DataFrame:
    rows = []
    evaluated = set(table["gene"])
    selected = set(table.loc[table["selected"], "gene"])
    validated = set(table.loc[table["validated"], "gene"]) if is_test else set()
    for name in PANELS:
        genes = get_panel(name)
        rows.append(
            {
                "panel": name,
                "n_panel": len(genes),
                "n_evaluated": len(evaluated.intersection(genes)),
                "n_selected": len(selected.intersection(genes)),
                "n_validated": len(validated.intersection(genes)) if is_test else np.nan,
                "selected_genes": ",".join(g for g in genes if g in selected),
            }
        )
    return pd.DataFrame(rows)


@dataclass
class Evaluation:
    """What one evaluation computed; `write_evaluation` and `plot_evaluation` turn it into files."""

    config: EvaluateConfig
    is_test: bool
    table: pd.DataFrame  # per gene (GENE_COLUMNS [+ TEST_COLUMNS])
    measured: pd.DataFrame  # samples × genes, aligned with `predicted`
    predicted: pd.DataFrame
    panels: pd.DataFrame
    summary: dict[str, Any]
    null_table: pd.DataFrame | None = None  # per permutation and gene (`permutation` + the table's columns)
    null_counts: pd.DataFrame | None = None  # per permutation the gene counts of `_counts`
    concordance: pd.DataFrame | None = None
    proliferation: dict[str, Any] | None = None
    figures: list[str] = field(default_factory=list)


def _apply_rules(table: pd.DataFrame, cfg: EvaluateConfig, is_test: bool, *, select: bool) -> pd.DataFrame:
    """The paper's selection rule (validation) and Bonferroni validation (test) as table columns."""
    if select:
        table["selected"] = (table["r2"] > cfg.r2_min) & (table["fdr_bh"] < cfg.fdr_max)
    if is_test:
        table["p_bonferroni"] = stats.adjust_pvalues(table["spearman_p"], "bonferroni")
        table["validated"] = (table["p_bonferroni"] < cfg.alpha) & (table["spearman_rho"] > 0)
    return table


def _split_samples(ad: Any, targets: Path, split: str, cfg: EvaluateConfig) -> tuple[pd.DataFrame, pd.Series]:
    """Targets obs (string index) and the mask of samples in `split` (and `cohorts`)."""
    obs = ad.obs.copy()
    obs.index = obs.index.astype(str)
    in_split = obs["split"].astype(str) == split
    if not in_split.any():
        raise EmoError(f"{targets}: no samples in split {split!r}; splits are {sorted(obs['split'].astype(str).unique())}")
    if cfg.cohorts:
        in_split &= obs["cohort"].astype(str).isin(cfg.cohorts) if "cohort" in obs else False
        if not in_split.any():
            raise EmoError(f"{targets}: no samples of cohorts {list(cfg.cohorts)} in split {split!r}")
    return obs, in_split


def _null_tables(cfg: EvaluateConfig, obs: pd.DataFrame, measured: pd.DataFrame, r2_mask: np.ndarray,
                 is_test: bool) -> pd.DataFrame:
    """The same statistics for each permuted-label head's predictions of the same samples, stacked."""
    from emo.prediction.average import read_average

    samples, genes = list(measured.index), list(measured.columns)
    tables = []
    for k, path in enumerate(cfg.null_predictions):
        null_pred = predictions_by_sample(read_average(path), obs, what=str(path))
        missing = [s for s in samples if s not in null_pred.index]
        null_genes = [g for g in genes if g in null_pred.columns]
        if missing or not null_genes:
            raise EmoError(
                f"{path}: null predictions lack {len(missing)} samples / all genes of the evaluated split; "
                "predict the same slides with the permuted-label model"
            )
        table = gene_table(measured[null_genes], null_pred.loc[samples, null_genes], r2_mask=r2_mask)
        tables.append(_apply_rules(table, cfg, is_test, select=True).assign(permutation=k))
    stacked = pd.concat(tables, ignore_index=True)
    return stacked[["permutation", *[c for c in stacked.columns if c != "permutation"]]]


def null_summary(model_counts: dict[str, int], null_counts: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per count: the model's, the null's mean and 95 % interval over permutations, and the empirical P
    of a count at least the model's, (1 + #{null ≥ model}) / (K + 1)."""
    out = {}
    for key in null_counts.columns:
        if key == "n_genes" or key not in model_counts:
            continue
        values = null_counts[key].to_numpy(np.float64)
        low, high = np.percentile(values, [2.5, 97.5])
        out[key] = {"model": int(model_counts[key]), "null_mean": float(values.mean()), "null_low": float(low),
                    "null_high": float(high),
                    "p_empirical": float(stats.permutation_p(model_counts[key], values[:, None])[0])}
    return out


def _concordance(table: pd.DataFrame, validation_genes: Path) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """ρ on this split against ρ on the validation run, gene by gene (≥ 3 shared genes)."""
    path = Path(validation_genes)
    if not path.exists():
        raise EmoError(f"{path}: validation genes.csv not found; pass DIR/genes.csv of the validation run")
    val = pd.read_csv(path).set_index("gene")["spearman_rho"]
    both = table.set_index("gene")["spearman_rho"].to_frame("test").join(val.rename("validation"), how="inner")
    if len(both) < 3:
        return None
    c_rho, c_p = stats.spearman(both["validation"].to_numpy(), both["test"].to_numpy())
    c_r, _ = stats.pearson(both["validation"].to_numpy(), both["test"].to_numpy())
    return both, {"n_genes": int(len(both)), "spearman_rho": float(c_rho[0]), "spearman_p": float(c_p[0]),
                  "pearson_r": float(c_r[0])}


def compute_evaluation(
    predictions: Path, targets: Path, split: str, config: EvaluateConfig | None = None, **options: Any
) -> Evaluation:
    """Per-gene statistics, selection/validation, null comparison, concordance, panels and the
    proliferation score of one split — nothing written. Keyword options override `EvaluateConfig` fields."""
    from emo.expression.targets import read_targets
    from emo.prediction.average import read_average

    cfg = EvaluateConfig.build(config, what="evaluate", **options)
    targets = Path(targets)
    ad = read_targets(targets)
    obs, in_split = _split_samples(ad, targets, split, cfg)
    is_test = split.startswith("test") if cfg.test is None else cfg.test

    pred = predictions_by_sample(read_average(predictions), obs, what=str(predictions))
    samples = [s for s in obs.index[in_split] if s in pred.index]
    if len(samples) < 3:
        raise EmoError(
            f"{predictions}: only {len(samples)} prediction rows match samples of split {split!r} in {targets}; "
            "need at least 3 (check slide_id/sample_id names and the split)"
        )
    genes = [g for g in pred.columns if g in set(ad.var_names.astype(str))]
    selected_missing: list[str] = []
    if cfg.selected is not None:
        wanted = read_gene_list(cfg.selected)
        selected_missing = [g for g in wanted if g not in set(genes)]
        genes = [g for g in wanted if g in set(genes)]
    if not genes:
        raise EmoError(f"{predictions}: no predicted gene is in {targets} var (or in the selected list); check gene symbols")
    measured = pd.DataFrame(dense(ad[samples, genes].X), index=samples, columns=genes)
    predicted = pred.loc[samples, genes]

    external = pd.Series(False, index=samples)
    if "external" in obs:
        external |= obs.loc[samples, "external"].fillna(False).astype(bool)
    if cfg.external_cohorts and "cohort" in obs:
        external |= obs.loc[samples, "cohort"].astype(str).isin(cfg.external_cohorts)
    r2_mask = ~external.to_numpy()
    table = gene_table(measured, predicted, r2_mask=r2_mask)
    if is_test:
        table["selected"] = True
        table = _apply_rules(table, cfg, is_test, select=False)[GENE_COLUMNS + TEST_COLUMNS]
    else:
        table = _apply_rules(table, cfg, is_test, select=True)[GENE_COLUMNS]

    recorded = cfg.model_dump(mode="json")
    summary: dict[str, Any] = {
        "split": split,
        "test": bool(is_test),
        "n_samples": len(samples),
        "n_external_samples": int(external.sum()),
        "n_prediction_rows_unmatched": pred.attrs.get("n_unmatched", 0),
        "n_split_samples_without_prediction": int(in_split.sum() - len(samples)),
        "cohorts": obs.loc[samples, "cohort"].astype(str).value_counts().to_dict() if "cohort" in obs else {},
        "counts": _counts(table, cfg),
        "selected_list": str(cfg.selected) if cfg.selected is not None else None,
        "selected_missing": selected_missing,
        "notes": (["test split without --selected: every gene tested, Bonferroni over all of them"]
                  if is_test and cfg.selected is None else []),
        "config": recorded,
        "targets_emo": dict(ad.uns.get("emo", {})) if isinstance(ad.uns.get("emo", {}), dict) else {},
        "provenance": provenance(predictions=str(predictions), targets=str(targets), split=split, **recorded),
    }
    result = Evaluation(cfg, bool(is_test), table, measured, predicted, _panel_summary(table, is_test), summary)
    if cfg.null_predictions:
        result.null_table = _null_tables(cfg, obs, measured, r2_mask, is_test)
        rho = result.null_table.pivot(index="permutation", columns="gene", values="spearman_rho")
        rho = rho.reindex(columns=table["gene"]).to_numpy(np.float64)
        table.insert(table.columns.get_loc("spearman_p") + 1, "permutation_p",
                     stats.permutation_p(np.abs(table["spearman_rho"].to_numpy(np.float64)), np.abs(rho)))
        result.null_counts = pd.DataFrame([_counts(t, cfg) for _, t in result.null_table.groupby("permutation")])
        k = len(cfg.null_predictions)
        summary["null"] = {"definition": NULL_DEFINITION.format(k=k), "n_permutations": k,
                           "predictions": [str(p) for p in cfg.null_predictions],
                           "counts": null_summary(summary["counts"], result.null_counts),
                           "per_permutation": result.null_counts.to_dict(orient="list")}
    if cfg.validation_genes is not None:
        found = _concordance(table, cfg.validation_genes)
        if found is not None:
            result.concordance, summary["concordance"] = found
    summary["panels"] = result.panels.drop(columns="selected_genes").to_dict(orient="records")
    result.proliferation = _proliferation(measured, predicted, obs, subtype_column(obs, cfg.subtype_column, str(targets)))
    if result.proliferation is not None:
        summary["proliferation"] = {k: v for k, v in result.proliferation.items() if k != "scores"}
    return result


def plot_evaluation(result: Evaluation, out_dir: Path) -> list[str]:
    """Figures like the paper's Figs. 1, 2 and 5 into `out_dir`; returns their file names."""
    from emo.analysis import plots

    from emo.prediction.render import expression_unit

    cfg, prolif, table = result.config, result.proliferation, result.table
    passing = table[table["validated" if result.is_test else "selected"]].sort_values("spearman_rho", ascending=False)
    unit = expression_unit(result.summary.get("targets_emo"))
    figs = {"histograms.png": lambda: plots.metric_histograms(table, result.null_table, cfg.fdr_report)}
    if result.null_counts is not None:
        figs["null_distribution.png"] = lambda: plots.null_distribution(result.summary["null"]["counts"], result.null_counts)
    if len(passing):
        figs["top_genes.png"] = lambda: plots.top_gene_scatter(passing, result.measured, result.predicted, cfg.top, unit)
    if prolif is not None:
        figs["proliferation.png"] = lambda: plots.proliferation_scatter(prolif, unit)
        if "subtype" in prolif["scores"]:
            figs["proliferation_subtypes.png"] = lambda: plots.proliferation_subtypes(prolif, unit)
    if result.concordance is not None:
        figs["concordance.png"] = lambda: plots.concordance_scatter(result.concordance)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for name, make in figs.items():
        plots.save(make(), Path(out_dir) / name)
    for stale in {"null_distribution.png", "top_genes.png"} - set(figs):  # from an earlier run of this folder
        (Path(out_dir) / stale).unlink(missing_ok=True)
    result.figures = sorted(figs)
    result.summary["figures"] = result.figures
    return result.figures


def write_evaluation(result: Evaluation, out_dir: Path) -> None:
    """genes.csv/.parquet, panels.csv, genes_null.csv + null_counts.csv (per permutation), proliferation.csv,
    selected_genes.txt (validation splits) and, last, summary.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = result.table
    write_table_atomic(out_dir / "genes.csv", table)
    write_table_atomic(out_dir / "genes.parquet", table)
    write_table_atomic(out_dir / "panels.csv", result.panels)
    if result.null_table is not None:
        write_table_atomic(out_dir / "genes_null.csv", result.null_table)
        write_table_atomic(out_dir / "null_counts.csv", result.null_counts.rename_axis("permutation"), index=True)
    if result.proliferation is not None:
        write_table_atomic(out_dir / "proliferation.csv", result.proliferation["scores"], index=True)
    if not result.is_test:
        write_text_atomic(out_dir / "selected_genes.txt", "".join(f"{g}\n" for g in table.loc[table["selected"], "gene"]))
    write_json_atomic(out_dir / "summary.json", result.summary)


def evaluate(
    predictions: Path,
    targets: Path,
    split: str,
    out_dir: Path,
    config: EvaluateConfig | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Evaluate EMO-average predictions on one split: `compute_evaluation`, then `plot_evaluation`
    (unless `figures=False`) and `write_evaluation` into `out_dir`. Returns the per-gene table.

    Keyword options override fields of `EvaluateConfig` (e.g. `r2_min=0.3`, `selected=Path(...)`).
    """
    result = compute_evaluation(predictions, targets, split, config, **options)
    if result.config.figures:
        plot_evaluation(result, out_dir)
    write_evaluation(result, out_dir)
    return result.table
