"""Built-in report sections: tiling QC, targets, model, predictions, evaluation,
spatial validation and a generic section for anything under analyze/*/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    counts = summary[[c for c in summary.columns if c.startswith("n_")]]
    if not counts.empty:
        body += h.table(counts.sum().to_frame("total").T, caption="tiles over all slides")
    per_slide = h.table(summary, max_rows=500, source=folder / "summary.csv")
    body += h.details(f"per slide ({len(summary)} slides)", per_slide) if len(summary) > 10 else per_slide
    pngs = sorted(folder.glob("*.png"))
    if pngs:
        body += "<p class=note>Kept tiles outlined in green on each slide's thumbnail.</p>"
    body += h.images(pngs, limit=6)
    return body


# ------------------------------------------------------------------------------------ targets
@register_section("targets", title="Training targets", order=20, find=lambda d: _glob(d, "**/targets.h5ad"))
def targets(path: Path, run_dir: Path) -> str:
    from emo.expression.targets import read_targets

    ad = read_targets(path, backed=True)
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
    """Model folders, the study's own first and one permuted-label null model (the first of evaluate/null/) last."""
    found = [p for p in _glob(run_dir, "**/manifest.json")
             if any(part.startswith("model") or part.endswith("_model") for part in p.relative_to(run_dir).parts[:-1])]
    null = sorted(p for p in found if _json(p).get("permuted_labels"))
    return sorted(set(found) - set(null)) + null[:1]


def _penalty_range(m: dict) -> str:
    tuning = m.get("tuning") if isinstance(m.get("tuning"), dict) else {}
    alphas = tuning.get("alphas")
    if not alphas:
        return ""
    text = f"{min(alphas):.3g} – {max(alphas):.3g} ({len(alphas)} values tried"
    return text + (f"; median chosen {tuning['alpha_median']:.3g})" if "alpha_median" in tuning else ")")


def _spot_model_summary(m: dict) -> dict[str, str]:
    c = m["config"]
    sizes = ", ".join(f"{v:g}" for v in c.get("tile_sizes_um", []))
    return {
        "model": f"{m.get('kind', '?')} (spot-level)",
        "image features": f"{c.get('backbone', '?')} on spot-centred tiles of {sizes} µm ({c.get('tile_px', '?')} px)",
        "head": (f"ridge onto {c.get('n_components') or 'every gene (no'} target principal components"
                 f"{')' if not c.get('n_components') else ''}, neighbour context {c.get('context_radius', 0)} spot pitches"),
        "penalty": f"α = {c.get('alpha', '?')} per feature",
        "genes": str(len(m.get("genes") or [])),
        "training data": f"sections {', '.join(m.get('train_sections', []))}"
                         + (f"; target basis from {', '.join(m['basis_sections'])}" if m.get("basis_sections") else ""),
        "created": f"{m.get('created', '')} with emo {m.get('emo_version', '?')}",
    }


def model_summary(m: dict) -> dict[str, str]:
    """The manifest in a reader's words: what the model is, what it was trained on, how it was tuned."""
    if isinstance(m.get("config"), dict) and "train_sections" in m:
        return _spot_model_summary(m)
    backbone = m.get("backbone") if isinstance(m.get("backbone"), dict) else {}
    geometry = m.get("tile_geometry") if isinstance(m.get("tile_geometry"), dict) else {}
    head = m.get("head") or m.get("kind", "?")
    rows = {
        "model": f"{m.get('kind', '?')} ({m.get('level', 'slide')}-level)",
        "image features": (f"{backbone.get('name', '?')}, {backbone.get('dim', '?')}-dimensional, "
                           f"{backbone.get('input_size', '?')} px input" if backbone else ""),
        "head": f"{head}" + (f" {json.dumps(m['head_config'])}" if m.get("head_config") else ""),
        "penalty range": _penalty_range(m),
        "genes": str(len(m.get("genes") or [])),
        "training data": (f"{m.get('n_train', '?')} training and {m.get('n_tune', '?')} tuning samples from "
                          f"{m.get('targets', '?')}" if "n_train" in m else str(m.get("targets", ""))),
        "tiles": (f"{geometry.get('tile_size_um', '?')} µm at {geometry.get('target_mpp', '?')} µm/px "
                  f"({geometry.get('tile_size_px', '?')} px), stain normalisation "
                  f"{'on (' + str(m.get('stain_reference')) + ')' if geometry.get('normalize') else 'off'}" if geometry else ""),
        "labels permuted (null model)": "yes" if m.get("permuted_labels") else "",
        "created": f"{m.get('created', '')} with emo {m.get('emo_version', '?')}",
    }
    return {k: v for k, v in rows.items() if v}


@register_section("model", title="Model", order=30, find=_manifests)
def model(path: Path, run_dir: Path) -> str:
    m = _json(path)
    body = f"<p><code>{_rel(path.parent, run_dir)}</code></p>" + h.mapping(model_summary(m))
    if isinstance(m.get("tuning"), dict):
        tuning = {k: v for k, v in m["tuning"].items() if not isinstance(v, list)}
        body += h.mapping(tuning, caption="tuning (selection on the tuning split)")
    for key in ("tuning_metrics", "metrics"):
        if isinstance(m.get(key), dict):
            body += h.mapping(m[key], caption=key.replace("_", " "))
    body += h.images(sorted(path.parent.glob("*.png")))
    prov = {k: v for k, v in m.items() if k not in {"genes"}}
    body += h.details("provenance: the full manifest", h.mapping(prov) + f"<p class=note>{h.source_links([path])[3:]}</p>")
    body += h.details(f"genes ({len(m.get('genes') or [])})", f"<p>{h.esc(', '.join(m.get('genes') or []))}</p>")
    return body


# ------------------------------------------------------------------------------------ predictions
def _prediction_dirs(run_dir: Path) -> list[Path]:
    """Prediction folders, except the null baseline's (emo run: evaluate/null/), reported by evaluate."""
    return [p.parent for p in _glob(run_dir, "**/average.csv") if p.parent.relative_to(run_dir).parts[:2] != ("evaluate", "null")]


def _top_genes(run_dir: Path, averages: pd.DataFrame, n: int = 3) -> tuple[list[str], str]:
    """Best-predicted genes of the run's test (else first) evaluation, or the most variable predictions."""
    tables = [p for p in _glob(run_dir, "**/genes.csv") if "split" in _json(p.parent / "summary.json")]
    tables.sort(key=lambda p: not _json(p.parent / "summary.json").get("test"))
    for path in tables:
        genes = pd.read_csv(path)
        if {"gene", "spearman_rho"} <= set(genes.columns):
            top = genes[genes["gene"].isin(averages.columns)].sort_values("spearman_rho", ascending=False)
            if len(top):
                return top["gene"].head(n).tolist(), f"best predicted on split {path.parent.name} (Spearman ρ)"
    return averages.var().sort_values(ascending=False).index[:n].tolist(), "most variable predictions across slides"


def prediction_maps(folder: Path, genes: list[str], slides: list[str], note: str) -> str:
    """Grid of predicted-expression maps (rows: slides, columns: genes; one colour scale per gene)."""
    import matplotlib.pyplot as plt

    from emo.prediction.render import expression_map
    from emo.prediction.slides import spatial_columns

    files = [folder / "spatial" / f"{s}.h5ad" for s in slides]
    data = [spatial_columns(p, genes, images=True) for p in files]
    unit = data[0]["uns"].get("unit", "target scale")
    fig, axes = plt.subplots(len(slides), len(genes), figsize=(4.2 * len(genes), 3.6 * len(slides)), squeeze=False)
    for j, gene in enumerate(genes):
        allv = np.concatenate([d["values"][:, j] for d in data])
        clim = tuple(np.nanpercentile(allv, [2, 98])) if len(allv) else None
        for i, (slide, d) in enumerate(zip(slides, data)):
            expression_map(axes[i, j], d["spatial"].get(d["uns"].get("slide_id", slide)), d["centres"], d["values"][:, j],
                           square=True, mpp=d["uns"].get("mpp"), label=f"predicted {gene}\n({unit})",
                           title=f"{slide}: {gene}", clim=clim)
    fig.tight_layout()
    caption = (f"Predicted expression per tile over the H&E of three slides (highest, median and lowest EMO-average of "
               f"{genes[0]}); genes {note}; one colour scale per gene, in {unit}")
    return h.plot(fig, caption, files)


@register_section("predictions", title="Predictions", order=40, find=_prediction_dirs)
def predictions(folder: Path, run_dir: Path) -> str:
    from emo.prediction.average import read_average

    avg = read_average(folder / "average.csv")
    body = f"<p><code>{_rel(folder, run_dir)}</code>: EMO-average for {avg.shape[0]} slides × {avg.shape[1]} genes"
    spatial = sorted((folder / "spatial").glob("*.h5ad")) if (folder / "spatial").is_dir() else []
    body += (f"; EMO-spatial (one value per tile) for {len(spatial)} slides. Each <code>spatial/*.h5ad</code> opens in "
             "scanpy/squidpy (<code>sc.pl.spatial(adata, color=GENE)</code>) and each <code>geojson/*.geojson</code> in "
             "QuPath (tiles carry the measured genes and are classified by thirds of the first one).</p>")
    have = {p.stem for p in spatial}
    if have and len(avg.columns):
        genes, note = _top_genes(run_dir, avg)
        ranked = avg.loc[[s for s in avg.index if s in have], genes[0]].sort_values()
        if len(ranked):
            slides = list(dict.fromkeys([ranked.index[-1], ranked.index[len(ranked) // 2], ranked.index[0]]))
            body += prediction_maps(folder, genes, slides, note)
    body += h.table(avg.reset_index(), max_rows=10, caption="EMO-average (mean over tiles), first slides",
                    source=folder / "average.csv")
    pngs = sorted((folder / "heatmaps").rglob("*.png")) if (folder / "heatmaps").is_dir() else []
    if pngs:
        body += h.details(f"heatmaps of the chosen genes ({len(pngs)} files)", h.images(pngs, limit=12))
    return body


# ------------------------------------------------------------------------------------ evaluate
def _evaluate_dirs(run_dir: Path) -> list[Path]:
    return [p.parent for p in _glob(run_dir, "**/genes.csv") if "split" in _json(p.parent / "summary.json")]


def _counts_table(s: dict) -> pd.DataFrame:
    """Gene counts of the model beside the null's mean, 95 % interval and the model's empirical P."""
    counts = pd.DataFrame({"model": s.get("counts", {})})
    null = s.get("null", {}).get("counts", {})
    if null:
        k = s["null"].get("n_permutations", "?")
        counts[f"null mean ({k} permutations)"] = pd.Series({key: c["null_mean"] for key, c in null.items()})
        counts["null 95 % interval"] = pd.Series({key: f"{c['null_low']:.3g} – {c['null_high']:.3g}" for key, c in null.items()})
        counts["P (model count vs null)"] = pd.Series({key: c["p_empirical"] for key, c in null.items()})
    counts.index = [h.plain_label(k) for k in counts.index]
    return counts.reset_index(names="genes")


def best_genes(genes: pd.DataFrame, s: dict) -> tuple[pd.DataFrame, str]:
    """Genes passing the split's rule (selected on validation, validated on test), by ρ, negative ρ
    flagged; and the caption that names the rule."""
    cfg = s.get("config", {})
    rule, label = (("validated", f"Bonferroni P < {cfg.get('alpha', 0.05):g} and ρ > 0") if s.get("test") else
                   ("selected", f"R² > {cfg.get('r2_min', 0.2):g} and FDR < {cfg.get('fdr_max', 0.001):g}"))
    passing = genes[genes[rule].astype(bool)] if rule in genes else genes.iloc[:0]
    passing = passing.sort_values("spearman_rho", ascending=False).drop(columns=["selected", "validated"], errors="ignore")
    if (passing["spearman_rho"] < 0).any():
        passing.insert(1, "direction", np.where(passing["spearman_rho"] < 0, "negative ρ: predicted against measured", ""))
    return passing, f"best genes: {rule} ({label}), by Spearman ρ"


@register_section("evaluate", title="Validation and test (emo evaluate)", order=50, find=_evaluate_dirs)
def evaluate(folder: Path, run_dir: Path) -> str:
    s = _json(folder / "summary.json")
    kind = "test split (Bonferroni)" if s.get("test") else "selection split"
    body = f"<p><code>{_rel(folder, run_dir)}</code>: split <b>{h.esc(s.get('split'))}</b>, {kind}, {s.get('n_samples')} samples"
    body += f" ({s.get('n_external_samples', 0)} external, R² not computed on them).</p>" if s.get("n_external_samples") else ".</p>"
    if s.get("test") and not s.get("selected_list"):
        body += ("<p class=note>No validation split selected genes before this test: every gene is tested, with "
                 "Bonferroni over all of them, so no gene is marked as selected.</p>")
    if "null" in s:
        body += f"<p>{h.esc(s['null'].get('definition', ''))}</p>"
    body += h.table(_counts_table(s), caption="gene counts")
    if "concordance" in s:
        body += h.mapping(s["concordance"], caption="concordance of ρ with the validation run")
    if (folder / "panels.csv").exists():
        panels = pd.read_csv(folder / "panels.csv")
        body += h.table(panels, caption="gene panels", source=folder / "panels.csv",
                        empty="No clinical gene panel was evaluated.")
        if len(panels) and "n_evaluated" in panels and not panels["n_evaluated"].any():
            body += ("<p class=note>No gene of these clinical panels is among the evaluated genes (the model predicts "
                     "other genes, e.g. synthetic or a custom list), so the panel counts are all zero.</p>")
    if "proliferation" in s:
        p = dict(s["proliferation"])
        p.pop("by_subtype", None)
        body += h.mapping(p, caption="proliferation score (predicted vs measured)")
        if "by_subtype" in s["proliferation"]:
            by = pd.DataFrame(s["proliferation"]["by_subtype"]).T.reset_index(names="subtype")
            body += h.table(by, caption="proliferation score by subtype")
    passing, caption = best_genes(pd.read_csv(folder / "genes.csv"), s)
    body += h.table(passing, max_rows=20, caption=caption, source=folder / "genes.csv",
                    empty="No gene passes the rule on this split.")
    captions = {folder / "null_distribution.png": "genes passing each threshold: the permuted-label heads (grey, "
                "95 % interval shaded) against the model (red)",
                folder / "top_genes.png": "measured vs predicted for the genes passing the rule, by ρ"}
    body += h.images(sorted(folder.glob("*.png")), captions=captions)
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
