"""Built-in report sections: tiling QC, targets, model, predictions, evaluation,
spatial validation and a generic section for anything under analyze/*/."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from emo.reports import html as h
from emo.reports.registry import register_section

SKIP_DIRS = {".git", ".venv", "__pycache__"}


def _glob(run_dir: Path, pattern: str) -> list[Path]:
    return sorted(p for p in run_dir.glob(pattern) if not SKIP_DIRS.intersection(p.relative_to(run_dir).parts))


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _rel(path: Path, run_dir: Path) -> str:
    return h.esc(path.relative_to(run_dir)) if path != run_dir else "."


# ------------------------------------------------------------------------------------ tiling
@register_section("tiles", title="Tiling QC", order=10, find=lambda d: [p.parent for p in _glob(d, "**/tiles/summary.csv")])
def tiles(folder: Path, run_dir: Path) -> str:
    summary = pd.read_csv(folder / "summary.csv")
    body = f"<p>{len(summary)} slides in <code>{_rel(folder, run_dir)}</code>.</p>"
    numeric = summary.select_dtypes("number")
    if not numeric.empty:
        totals = numeric.sum().to_frame("total").T
        body += h.table(totals, caption="totals over slides")
    body += h.table(summary, max_rows=50, caption="per slide")
    body += h.images(sorted(folder.glob("*.png")), limit=12)
    return body


# ------------------------------------------------------------------------------------ targets
@register_section("targets", title="Training targets", order=20, find=lambda d: _glob(d, "**/targets.h5ad"))
def targets(path: Path, run_dir: Path) -> str:
    import anndata

    ad = anndata.read_h5ad(path, backed="r")
    body = f"<p><code>{_rel(path, run_dir)}</code>: {ad.n_obs} samples × {ad.n_vars} genes.</p>"
    cols = [c for c in ("cohort", "split") if c in ad.obs]
    if cols:
        counts = ad.obs.groupby(cols, observed=True).size().rename("samples").reset_index()
        body += h.table(counts, caption="samples by " + " and ".join(cols))
    if "kept" in ad.var:
        body += f"<p>{int(ad.var['kept'].sum())} genes kept after the variance filter.</p>"
    emo_uns = ad.uns.get("emo")
    if isinstance(emo_uns, dict):
        body += h.details("parameters and versions (uns['emo'])", h.mapping(dict(emo_uns)))
    ad.file.close()
    return body


# ------------------------------------------------------------------------------------ model
def _manifests(run_dir: Path) -> list[Path]:
    return [p for p in _glob(run_dir, "**/manifest.json") if any(part.startswith("model") for part in p.relative_to(run_dir).parts[:-1])]


@register_section("model", title="Model", order=30, find=_manifests)
def model(path: Path, run_dir: Path) -> str:
    m = _json(path)
    genes = m.get("genes") or []
    head = {k: v for k, v in m.items() if k not in {"genes", "tuning_metrics", "metrics"}}
    body = f"<p><code>{_rel(path, run_dir)}</code>: {len(genes)} genes.</p>" + h.mapping(head, caption="manifest")
    for key in ("tuning_metrics", "metrics"):
        if isinstance(m.get(key), dict):
            body += h.mapping(m[key], caption=key.replace("_", " "))
    body += h.images(sorted(path.parent.glob("*.png")))
    return body


# ------------------------------------------------------------------------------------ predictions
def _prediction_dirs(run_dir: Path) -> list[Path]:
    """Prediction folders, except the null baseline's (emo run: evaluate/null/), reported by evaluate."""
    return [p.parent for p in _glob(run_dir, "**/average.csv") if p.parent.relative_to(run_dir).parts[:2] != ("evaluate", "null")]


@register_section("predictions", title="Predictions", order=40, find=_prediction_dirs)
def predictions(folder: Path, run_dir: Path) -> str:
    avg = pd.read_csv(folder / "average.csv", index_col=0)
    body = f"<p><code>{_rel(folder, run_dir)}</code>: EMO-average for {avg.shape[0]} slides × {avg.shape[1]} genes"
    spatial = sorted((folder / "spatial").glob("*.h5ad")) if (folder / "spatial").is_dir() else []
    body += f"; EMO-spatial for {len(spatial)} slides.</p>"
    pngs = sorted(p for p in folder.rglob("*.png"))
    return body + h.images(pngs, limit=12)


# ------------------------------------------------------------------------------------ evaluate
def _evaluate_dirs(run_dir: Path) -> list[Path]:
    return [p.parent for p in _glob(run_dir, "**/genes.csv") if "split" in _json(p.parent / "summary.json")]


@register_section("evaluate", title="Validation and test (emo evaluate)", order=50, find=_evaluate_dirs)
def evaluate(folder: Path, run_dir: Path) -> str:
    s = _json(folder / "summary.json")
    kind = "test split (Bonferroni)" if s.get("test") else "selection split"
    body = f"<p><code>{_rel(folder, run_dir)}</code>: split <b>{h.esc(s.get('split'))}</b>, {kind}, {s.get('n_samples')} samples"
    body += f" ({s.get('n_external_samples', 0)} external, R² not computed on them).</p>" if s.get("n_external_samples") else ".</p>"
    counts = pd.DataFrame({"model": s.get("counts", {})})
    if "null" in s:
        counts["null (permuted labels)"] = pd.Series(s["null"]["counts"])
    body += h.table(counts.reset_index(names="genes"), caption="gene counts")
    if "concordance" in s:
        body += h.mapping(s["concordance"], caption="concordance of ρ with the validation run")
    if (folder / "panels.csv").exists():
        body += h.csv_table(folder / "panels.csv", caption="gene panels")
    if "proliferation" in s:
        p = dict(s["proliferation"])
        p.pop("by_subtype", None)
        body += h.mapping(p, caption="proliferation score (predicted vs measured)")
        if "by_subtype" in s["proliferation"]:
            by = pd.DataFrame(s["proliferation"]["by_subtype"]).T.reset_index(names="subtype")
            body += h.table(by, caption="proliferation score by subtype")
    genes = pd.read_csv(folder / "genes.csv").sort_values("spearman_p")
    body += h.table(genes, max_rows=20, caption="best genes")
    body += h.images(sorted(folder.glob("*.png")))
    if "config" in s:
        body += h.details("parameters", h.mapping(s["config"]))
    if "provenance" in s:
        body += h.details("provenance", h.mapping(s["provenance"]))
    return body


# ------------------------------------------------------------------------------------ spatial validation
def _spatial_dirs(run_dir: Path) -> list[Path]:
    return [p.parent for p in _glob(run_dir, "**/per_slide_spearman.csv") if (p.parent / "genes.csv").exists()]


@register_section("spatial_validation", title="Spatial validation", order=60, find=_spatial_dirs)
def spatial_validation(folder: Path, run_dir: Path) -> str:
    s = _json(folder / "summary.json")
    keys = ("n_genes", "n_slides", "n_rois", "fdr_lt_0.05", "dropped_low_variance", "fit_notes")
    body = f"<p><code>{_rel(folder, run_dir)}</code></p>" + h.mapping({k: s[k] for k in keys if k in s})
    body += h.csv_table(folder / "genes.csv", max_rows=30, caption="mixed models (LRT of the fixed effect)")
    body += h.images(sorted(folder.glob("*.png")))
    if "provenance" in s:
        body += h.details("provenance", h.mapping(s["provenance"]))
    return body


# ------------------------------------------------------------------------------------ other analyses
@register_section("analyze", title="Analyses", order=90, find=lambda d: [p for p in _glob(d, "**/analyze/*") if p.is_dir()])
def analyze(folder: Path, run_dir: Path) -> str:
    body = f"<p><code>{_rel(folder, run_dir)}</code></p>"
    for csv in sorted(folder.glob("*.csv"))[:10]:
        body += h.csv_table(csv, max_rows=15)
    if (folder / "summary.json").exists():
        body += h.details("summary.json", h.mapping(_json(folder / "summary.json")))
    return body + h.images(sorted(folder.glob("*.png")))
