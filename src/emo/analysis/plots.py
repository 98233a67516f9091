"""Figures of the evaluation and spatial-validation stages (matplotlib, Agg; PNG files)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emo.io import save_figure


def _plt():
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, dpi: int = 120) -> Path:
    return save_figure(fig, path, dpi=dpi, bbox_inches="tight")


def _legend_above(ax) -> None:
    """The legend in a row above the axes, clear of the bars."""
    ax.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, borderaxespad=0.2)


def metric_histograms(table: pd.DataFrame, null: pd.DataFrame | None = None, fdr: float = 0.05):
    """Distributions of R²pred, Spearman ρ and −log10 FDR over genes (Fig. 1B–D); the permuted-label
    heads overlaid as genes per permutation (their rows pooled, weighted 1/K)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("r2", "R²pred (measured vs predicted)"), ("spearman_rho", "Spearman ρ (measured vs predicted)"),
              ("fdr_bh", "−log10 BH-FDR of ρ")]
    k = int(null["permutation"].nunique()) if null is not None and "permutation" in null else 1
    series = [("model", table, "tab:blue", 1.0)]
    if null is not None:
        series.append((f"null ({k} permutations, per permutation)", null, "tab:grey", 1.0 / k))
    for ax, (col, label) in zip(axes, panels):
        values = {name: t[col].to_numpy(np.float64) for name, t, _, _ in series}
        if col == "fdr_bh":
            values = {name: -np.log10(np.clip(v, 1e-300, 1)) for name, v in values.items()}
        finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
        if col == "r2" and finite.size:
            finite = finite[finite > np.quantile(finite, 0.01)]  # a few hopeless genes hide the rest
        if finite.size == 0:
            ax.set_title(f"{label}: not computed")
            ax.axis("off")
            continue
        bins = np.linspace(finite.min(), finite.max() + 1e-12, 40)
        for name, _, colour, weight in series:
            v = np.clip(values[name][np.isfinite(values[name])], bins[0], bins[-1])
            ax.hist(v, bins=bins, weights=np.full(len(v), weight), color=colour, alpha=0.6, label=name)
        if col == "fdr_bh":
            ax.axvline(-math.log10(fdr), color="tab:red", ls="--", lw=1, label=f"FDR {fdr:g}")
        ax.set_xlabel(label)
        ax.set_ylabel("genes")
        _legend_above(ax)
    fig.tight_layout()
    return fig


def null_distribution(counts: dict[str, dict], null_counts: pd.DataFrame):
    """Per gene count (FDR, R², selected/validated): the permuted-label heads' counts as a histogram,
    their 95 % interval shaded, the model's count as a red line."""
    from emo.reports.html import plain_label

    plt = _plt()
    keys = [k for k in counts if k in null_counts]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        c, values = counts[key], null_counts[key].to_numpy()
        top = max(int(values.max()), c["model"]) + 1
        ax.hist(values, bins=np.arange(-0.5, top + 1.5, max(1, top // 30)), color="tab:grey", alpha=0.8,
                label=f"null, {len(values)} permutations")
        ax.axvspan(c["null_low"], c["null_high"], color="tab:grey", alpha=0.15, label="null 95 % interval")
        ax.axvline(c["model"], color="tab:red", lw=2, label=f"model: {c['model']} (P = {c['p_empirical']:.2g})")
        ax.set_xlabel(plain_label(key))
        ax.set_ylabel("permutations")
        ax.set_xlim(-0.5, top + 0.5)
        ax.legend(fontsize=7, frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0), borderaxespad=0.2)
    fig.tight_layout()
    return fig


def identity_line(ax, x, y) -> None:
    """The y = x line (perfect prediction) over the joint range of a measured-vs-predicted scatter."""
    values = np.concatenate([np.asarray(x, float).ravel(), np.asarray(y, float).ravel()])
    values = values[np.isfinite(values)]
    if len(values):
        lim = [values.min(), values.max()]
        ax.plot(lim, lim, color="grey", lw=0.8, ls="--", zorder=1, label="measured = predicted")


def top_gene_scatter(table: pd.DataFrame, measured: pd.DataFrame, predicted: pd.DataFrame, top: int = 25,
                     unit: str = "target scale"):
    """Measured vs predicted for the first `top` genes of `table` (the passing genes, by ρ; Fig. 2D);
    a negative ρ is named in the panel's title."""
    plt = _plt()
    genes = table["gene"].head(top).tolist()
    ncol = max(1, min(5, len(genes)))
    nrow = max(1, math.ceil(len(genes) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.4 * nrow + 0.4), squeeze=False)
    rho = table.set_index("gene")["spearman_rho"]
    for ax, gene in zip(axes.flat, genes):
        ax.scatter(predicted[gene], measured[gene], s=5, alpha=0.6, color="tab:blue", linewidths=0)
        identity_line(ax, predicted[gene], measured[gene])
        ax.set_title(f"{gene}  ρ={rho[gene]:.2f}" + (" (negative)" if rho[gene] < 0 else ""), fontsize=9,
                     color="tab:red" if rho[gene] < 0 else "black")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(genes):]:
        ax.axis("off")
    fig.supxlabel(f"predicted (EMO-average), {unit}")
    fig.supylabel(f"measured (RNA-seq), {unit}")
    fig.tight_layout()
    return fig


def proliferation_scatter(prolif: dict, unit: str = "target scale"):
    """Measured vs predicted proliferation score (mean of the proliferation genes, in their unit; Fig. 5A)."""
    plt = _plt()
    s = prolif["scores"]
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.scatter(s["predicted"], s["measured"], s=8, alpha=0.7, linewidths=0)
    identity_line(ax, s["predicted"], s["measured"])
    ax.set_xlabel(f"predicted proliferation score ({unit})")
    ax.set_ylabel(f"measured proliferation score ({unit})")
    ax.set_title(
        f"ρ = {prolif['spearman_rho']:.2f}, P = {prolif['spearman_p']:.2g}\n"
        f"{prolif['n_genes']} of 11 genes, {prolif['n_samples']} samples",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def proliferation_subtypes(prolif: dict, unit: str = "target scale"):
    """Measured and predicted proliferation score by intrinsic subtype (Fig. 5C–D)."""
    plt = _plt()
    s = prolif["scores"]
    groups = sorted(s["subtype"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(1.2 * len(groups) + 4, 3.6), sharey=False)
    for ax, col in zip(axes, ["measured", "predicted"]):
        ax.boxplot([s.loc[s["subtype"] == g, col].to_numpy() for g in groups], showfliers=False)
        for i, g in enumerate(groups, start=1):
            v = s.loc[s["subtype"] == g, col].to_numpy()
            ax.scatter(np.full(len(v), i) + np.linspace(-0.15, 0.15, len(v)), v, s=4, alpha=0.5)
        ax.set_xticks(range(1, len(groups) + 1), groups, rotation=30, fontsize=8)
        ax.set_title(f"{col} proliferation score", fontsize=9)
        ax.set_ylabel(unit)
    fig.tight_layout()
    return fig


def concordance_scatter(both: pd.DataFrame):
    """Spearman ρ per gene on validation vs test (Supp. Fig. S1C–E)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(both["validation"], both["test"], s=5, alpha=0.6, linewidths=0)
    lim = [min(both.min()), max(both.max())]
    ax.plot(lim, lim, color="grey", lw=0.8, ls="--")  # same ρ on both splits
    ax.set_xlabel("Spearman ρ, validation")
    ax.set_ylabel("Spearman ρ, test")
    fig.tight_layout()
    return fig


def lme_bars(genes: pd.DataFrame, fdr: float = 0.05):
    """−log10 FDR per gene (bars) with the fixed-effect coefficient and 95 % CI (line, Fig. 4B–C)."""
    plt = _plt()
    g = genes.dropna(subset=["lrt_p"]).sort_values("lrt_p").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.22 * len(g) + 2), 4))
    x = np.arange(len(g))
    logfdr = -np.log10(np.clip(g["fdr_bh"].to_numpy(np.float64), 1e-300, 1))
    ax.bar(x, logfdr, color=np.where(g["fdr_bh"] < fdr, "tab:blue", "lightgrey"))
    ax.axhline(-math.log10(fdr), color="tab:red", lw=0.8, ls="--")
    ax.set_ylabel("−log10 FDR (LRT)")
    ax.set_xticks(x, g["gene"], rotation=90, fontsize=7)
    ax2 = ax.twinx()
    err = np.vstack([g["coef"] - g["ci_low"], g["ci_high"] - g["coef"]])
    ax2.errorbar(x, g["coef"], yerr=err, color="black", marker="o", ms=3, lw=0.8, capsize=2)
    ax2.axhline(0, color="black", lw=0.5)
    ax2.set_ylabel("fixed-effect coefficient (95 % CI)")
    ax.set_xlim(-0.7, len(g) - 0.3)
    fig.tight_layout()
    return fig


def within_slide_rho(per_slide: pd.DataFrame, order: list[str] | None = None):
    """Boxplots of per-slide Spearman ρ across ROIs, one box per gene (Supp. Fig. S4)."""
    plt = _plt()
    genes = order or per_slide.groupby("gene")["rho"].median().sort_values(ascending=False).index.tolist()
    data = [per_slide.loc[per_slide["gene"] == g, "rho"].dropna().to_numpy() for g in genes]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.22 * len(genes) + 2), 3.6))
    ax.boxplot(data, showfliers=False)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xticks(range(1, len(genes) + 1), genes, rotation=90, fontsize=7)
    ax.set_ylabel("within-slide Spearman ρ")
    fig.tight_layout()
    return fig
