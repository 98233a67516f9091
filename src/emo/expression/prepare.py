"""RNA-seq matrices + sample sheet → `targets.h5ad` (the training targets of every model).

Order of work (SPEC §2): read and check each matrix → counts to log2(CPM + 1) → clean gene ids →
genes shared by every matrix → match the sheet → patient-level splits → cohort median offsets
(train+tune+validation) → per-gene variance on the training split → `kept` = variance > min_variance.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


import numpy as np
import pandas as pd

from emo.errors import EmoError
from emo.expression.batch import apply_offsets, cohort_offsets
from emo.expression.genes import normalize_genes
from emo.expression.matching import match_sheet, read_sheet
from emo.expression.readers import counts_to_log_cpm, read_matrix
from emo.expression.config import PAPER_FRACTIONS, SPLITS
from emo.expression.splits import assign_splits
from emo.io import atomic_path, provenance, save_figure, write_json_atomic, write_table_atomic, write_text_atomic


def _load_matrices(matrices: Sequence[Path], counts_matrices: Sequence[Path], orientation: str,
                   sample_ids: set[str]) -> tuple[list[pd.DataFrame], list[dict]]:
    frames, info = [], []
    for path, counts in [(Path(p), False) for p in matrices] + [(Path(p), True) for p in counts_matrices]:
        frame = read_matrix(path, orientation, sample_ids)
        if counts:
            frame = counts_to_log_cpm(frame, path)
        n_in = frame.shape[0]
        frame, changes = normalize_genes(frame, counts=counts)
        frames.append(frame)
        info.append({"file": str(path), "kind": "counts → log2(CPM+1)" if counts else "log-scale",
                     "genes_in": n_in, "genes": frame.shape[0], "samples": frame.shape[1], **changes})
    return frames, info


def _shared_genes(frames: list[pd.DataFrame], info: list[dict]) -> pd.Index:
    genes = frames[0].index
    for frame in frames[1:]:
        genes = genes.intersection(frame.index, sort=False)
    if genes.empty:
        examples = "; ".join(f"{i['file']}: {', '.join(map(str, f.index[:3]))}" for f, i in zip(frames, info))
        raise EmoError(f"no gene is shared by all matrices ({examples}); use the same gene identifiers "
                       "(symbols or Ensembl ids) in every matrix")
    for frame, item in zip(frames, info):
        item["genes_missing_elsewhere"] = sorted(map(str, frame.index.difference(genes)))
    return genes


def _patient_splits(obs: pd.DataFrame, sheet_path: str, seed: int, fractions, stratify: str | None) -> pd.Series:
    if "split" in obs and obs["split"].notna().any():
        bad = obs["split"][~obs["split"].isin(SPLITS)]
        if len(bad):
            raise EmoError(f"{sheet_path}: sample {bad.index[0]!r} has split {bad.iloc[0]!r}; "
                           f"use one of {', '.join(SPLITS)} for every row (or leave the column out)")
        mixed = obs.groupby("patient_id")["split"].nunique()
        if (mixed > 1).any():
            raise EmoError(f"{sheet_path}: patient {mixed.index[mixed > 1][0]!r} is in several splits; "
                           "splits are by patient")
        wrong = obs[obs["external"] & (obs["split"] != "test")]
        if len(wrong):
            raise EmoError(f"{sheet_path}: sample {wrong.index[0]!r} of external cohort {wrong['cohort'].iloc[0]!r} "
                           f"has split {wrong['split'].iloc[0]!r}; external cohorts are test-only")
        return obs["split"]
    if stratify is not None and stratify not in obs:
        raise EmoError(f"{sheet_path}: --stratify column {stratify!r} not in the sample sheet "
                       f"(columns: {', '.join(map(str, obs.columns))})")
    cols = ["external", "cohort"] + ([stratify] if stratify else [])
    patients = obs.groupby("patient_id", sort=True)[cols].first()
    return obs["patient_id"].map(assign_splits(patients, seed=seed, fractions=fractions, stratify=stratify))


def _clean_for_h5ad(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for col in frame.columns:
        if not (pd.api.types.is_numeric_dtype(frame[col]) or pd.api.types.is_bool_dtype(frame[col])):
            frame[col] = frame[col].astype(object).where(frame[col].notna(), "").astype(str)
    return frame


def summary_paths(out: Path) -> dict[str, Path]:
    stem = out.with_suffix("")
    names = ("summary.md", "summary.json", "summary.png", "mismatches.csv")
    return {k: stem.with_name(f"{stem.name}.{k}") for k in names}


def _panel_coverage(kept: pd.Index) -> dict[str, list[str]]:
    """Genes of each shipped panel that are not among the kept targets (the paper reports panel coverage)."""
    from emo.panels import get_panel, panel_names

    return {name: [g for g in get_panel(name) if g not in kept] for name in panel_names()}


def _figure(path: Path, x: pd.DataFrame, corrected: pd.DataFrame, obs: pd.DataFrame, variance: pd.Series,
            min_variance: float) -> None:
    """Per-gene cohort medians before/after the offsets, and the training variance with its threshold."""
    import matplotlib.pyplot as plt

    fit = obs["split"].isin(["train", "tune", "validation"]).to_numpy()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, frame, title in ((axes[0], x, "before offsets"), (axes[1], corrected, "after offsets")):
        for cohort in pd.unique(obs["cohort"]):
            rows = (obs["cohort"] == cohort).to_numpy() & fit
            if rows.any():
                ax.hist(np.median(frame.to_numpy()[rows], axis=0), bins=60, histtype="step", label=cohort)
        ax.set(title=f"per-gene median, train+tune+val, {title}", xlabel="expression (log scale)", ylabel="genes")
        ax.legend(fontsize=8)
    axes[2].hist(np.log10(variance.to_numpy() + 1e-6), bins=60, color="0.4")
    axes[2].axvline(np.log10(min_variance), color="C3", label=f"min variance {min_variance:g}")
    axes[2].set(title="gene variance on the training split", xlabel="log10 variance", ylabel="genes")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _markdown(summary: dict) -> str:
    lines = [f"# Targets: {summary['out']}", "",
             f"{summary['n_samples']} samples of {summary['n_patients']} patients; reference cohort "
             f"**{summary['reference_cohort']}**; seed {summary['seed']}; splits "
             f"{'from the sample sheet' if summary['split_source'] == 'sheet' else 'random by patient'}.", "",
             "## Samples per cohort and split", "", "| cohort | " + " | ".join(SPLITS) + " | external |",
             "|---|" + "---|" * (len(SPLITS) + 1)]
    for cohort, row in summary["samples_per_split"].items():
        ext = "yes" if cohort in summary["external_cohorts"] else "no"
        lines.append(f"| {cohort} | " + " | ".join(str(row.get(s, 0)) for s in SPLITS) + f" | {ext} |")
    lines += ["", "## Genes", "", f"- shared by all matrices: {summary['genes_shared']}",
              f"- variance > 0 on the training split: {summary['genes_nonzero_variance']}",
              f"- kept (variance > {summary['min_variance']}): {summary['genes_kept']}", ""]
    for item in summary["matrices"]:
        lines.append(f"- `{item['file']}` ({item['kind']}): {item['genes_in']} rows → {item['genes']} genes, "
                     f"{item['samples']} samples; {len(item['collapsed_duplicates'])} duplicated ids collapsed, "
                     f"{len(item['renamed'])} renamed, {len(item['genes_missing_elsewhere'])} genes missing "
                     "from another matrix (listed in the JSON)")
    lines += ["", "## Cohort offsets (reference median − cohort median, train+tune+validation)", ""]
    for cohort, stats in summary["offsets"].items():
        lines.append(f"- {cohort}: median {stats['median']:+.3f}, mean |offset| {stats['mean_abs']:.3f}")
    lines += ["", "## Gene panels: genes not among the kept targets", ""]
    lines += [f"- {name}: {', '.join(missing) if missing else 'none'}" for name, missing in summary["panels_missing"].items()]
    lines += ["", f"![summary]({Path(summary['out']).with_suffix('').name}.summary.png)"]
    lines += ["", "## Mismatches", ""]
    kinds = summary["mismatches"]
    lines += [f"- {k}: {v}" for k, v in kinds.items()] or ["none"]
    return "\n".join(lines) + "\n"


def prepare_targets(matrices: Sequence[str | Path], samples: str | Path, reference_cohort: str, out: str | Path, *,
                    counts_matrices: Sequence[str | Path] = (), min_variance: float = 0.01, seed: int = 0,
                    stratify: str | None = None, external_cohorts: Sequence[str] = (), orientation: str = "auto",
                    fractions: Sequence[float] = PAPER_FRACTIONS, on_duplicate: str = "error",
                    slides: str | Path | None = None, dtype: str = "float32", figure: bool = True):
    """Build `targets.h5ad` (see docs/architecture.md "Targets") plus its summary; return the AnnData.

    `dtype` is float32 by default (the contract); float64 keeps the correction exact for audits.
    `figure=False` skips the summary PNG.
    """
    import anndata as ad

    out = Path(out)
    if not matrices and not counts_matrices:
        raise EmoError("no expression matrix given; pass --matrix (log-scale) and/or --counts-matrix (raw counts)")
    sheet = read_sheet(samples)
    cohorts = set(sheet["cohort"])
    for name, what in [(reference_cohort, "--reference-cohort")] + [(c, "--external-cohort") for c in external_cohorts]:
        if name not in cohorts:
            raise EmoError(f"{samples}: {what} {name!r} is not a cohort of the sheet (cohorts: {', '.join(sorted(cohorts))})")
    if reference_cohort in external_cohorts:
        raise EmoError(f"cohort {reference_cohort!r} cannot be both the reference and external (test-only)")

    frames, info = _load_matrices(matrices, counts_matrices, orientation, set(sheet["sample_id"]))
    origin: dict[str, str] = {}
    for frame, item in zip(frames, info):
        for sample in frame.columns:
            if sample in origin:
                raise EmoError(f"sample {sample!r} is in both {origin[sample]} and {item['file']}; "
                               "each sample must come from one matrix")
            origin[sample] = item["file"]
    genes = _shared_genes(frames, info)
    x = pd.concat([f.loc[genes] for f in frames], axis=1).T  # samples × genes

    obs, mismatches = match_sheet(sheet, origin, sheet_path=str(samples), on_duplicate=on_duplicate,
                                    slides=Path(slides) if slides else None)
    if obs.empty:
        raise EmoError(f"{samples}: no sample of the sheet is a column of the matrices; check the sample ids")
    x = x.loc[obs.index]
    obs["external"] = obs["cohort"].isin(list(external_cohorts))
    split_source = "sheet" if "split" in obs and obs["split"].notna().any() else "random"
    obs["split"] = _patient_splits(obs, str(samples), seed, tuple(fractions), stratify)

    offsets, ref_median = cohort_offsets(x, obs["cohort"], obs["split"], reference_cohort)
    corrected = apply_offsets(x, obs["cohort"], offsets)
    train = corrected[(obs["split"] == "train").to_numpy()]
    if len(train) < 2:
        raise EmoError(f"{samples}: {len(train)} training sample(s); the variance filter needs at least 2")
    variance = train.var(axis=0, ddof=1)

    var = pd.DataFrame({"variance": variance.to_numpy(), "kept": (variance > min_variance).to_numpy()},
                       index=pd.Index(genes.astype(str), name="gene"))
    for cohort in offsets.columns:
        var[f"offset_{cohort}"] = offsets[cohort].to_numpy()
    var["reference_median"] = ref_median.to_numpy()

    params = {"matrices": [str(p) for p in matrices], "counts_matrices": [str(p) for p in counts_matrices],
              "samples": str(samples), "reference_cohort": reference_cohort, "min_variance": min_variance,
              "seed": seed, "stratify": stratify or "", "external_cohorts": list(external_cohorts),
              "orientation": orientation, "fractions": [float(f) for f in fractions], "on_duplicate": on_duplicate,
              "split_source": split_source, "counts_normalisation": "log2(CPM + 1)",
              "offset_samples": "train+tune+validation"}
    first = ["patient_id", "cohort", "split"]
    obs = obs[first + [c for c in obs.columns if c not in first]].copy()
    obs = _clean_for_h5ad(obs).assign(split=pd.Categorical(obs["split"], categories=list(SPLITS)))
    adata = ad.AnnData(X=corrected.to_numpy(dtype=np.dtype(dtype)), obs=obs, var=var)
    adata.uns["emo"] = json.loads(json.dumps(provenance(**params)))

    counts = obs.groupby(["cohort", "split"], observed=True).size()
    summary = {
        "out": str(out), "n_samples": int(len(obs)), "n_patients": int(obs["patient_id"].nunique()),
        "reference_cohort": reference_cohort, "external_cohorts": list(external_cohorts), "seed": seed,
        "split_source": split_source, "min_variance": min_variance,
        "samples_per_split": {c: {s: int(n) for (cc, s), n in counts.items() if cc == c} for c in pd.unique(obs["cohort"])},
        "genes_shared": int(len(genes)), "genes_nonzero_variance": int((variance > 0).sum()),
        "genes_kept": int(var["kept"].sum()), "matrices": info,
        "offsets": {c: {"median": float(np.median(offsets[c])), "mean_abs": float(np.abs(offsets[c]).mean())}
                    for c in offsets.columns},
        "mismatches": {k: int(v) for k, v in mismatches["kind"].value_counts().items()},
        "panels_missing": _panel_coverage(var.index[var["kept"]]),
    }
    paths = summary_paths(out)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    write_json_atomic(paths["summary.json"], summary)
    write_text_atomic(paths["summary.md"], _markdown(summary))
    write_table_atomic(paths["mismatches.csv"], mismatches)
    if figure:
        _figure(paths["summary.png"], x, corrected, obs, variance, min_variance)
    adata.uns["emo_summary"] = summary
    return adata
