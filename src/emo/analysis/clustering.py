"""Clustering of a gene panel on measured and predicted expression (paper: Supp. Fig. S2–S3).

* Heatmaps: patients and genes ordered by hierarchical clustering (average linkage, 1 − Pearson) of
  the measured data; the predicted heatmap uses the same order, so shared structure is visible.
* Consensus clustering (Monti et al. 2003, as ConsensusClusterPlus): `n_iter` times draw
  `item_fraction` of the items without replacement, cluster them with the base clusterer
  (hierarchical average linkage on 1 − Pearson, or k-means), count how often each pair lands in the
  same cluster among the draws containing both; the final clusters cut an average-linkage tree of
  1 − consensus. k is 4 by default; `choose_k` scans 2..k_max and picks the elbow of the consensus
  CDF's relative area increase (the smallest k whose next Δ-area is below `min_delta`).
* Agreement: adjusted Rand index (scikit-learn) with a percentile bootstrap 95 % CI over items and a
  permutation P = (1 + #{ARI_perm ≥ ARI}) / (1 + n_perm).

Each gene is z-scored across patients (`scale="zscore"`) before clustering so that measured and
predicted values, which live on different scales, are clustered alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
from scipy.spatial.distance import pdist, squareform
from sklearn.metrics import adjusted_rand_score

from emo.analysis.bulk import align, attach_sheet, clean_labels, load_expression, select_genes, subtype_column
from emo.analysis.config import ClustersConfig, Method
from emo.errors import EmoError

__all__ = ["ClusterAnalysis", "ClustersConfig", "ConsensusResult", "consensus_clustering", "ari_test", "hierarchical_order", "clusters",
           "report_section"]


@dataclass
class ConsensusResult:
    """Final labels (1..k) for the chosen k, its consensus matrix and, when k was scanned, the CDF table."""

    labels: np.ndarray
    k: int
    consensus: np.ndarray
    cdf: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass
class ClusterAnalysis:
    """What `clusters` found: the ARI table, cluster labels per sample and per gene, and notes."""

    ari: pd.DataFrame
    samples: pd.DataFrame
    genes: pd.DataFrame
    notes: dict


def _base_labels(sub: np.ndarray, ks: Sequence[int], method: Method, rng: np.random.Generator) -> list[np.ndarray]:
    if method == "hc":
        tree = linkage(pdist(sub, "correlation"), method="average")
        return [fcluster(tree, k, criterion="maxclust") for k in ks]
    from sklearn.cluster import KMeans

    return [KMeans(n_clusters=k, n_init=1, random_state=int(rng.integers(2**31))).fit_predict(sub) for k in ks]


def _cdf_area(consensus: np.ndarray) -> float:
    """Area under the empirical CDF of the off-diagonal consensus values (Monti et al., eq. 8)."""
    values = np.sort(consensus[np.triu_indices_from(consensus, k=1)])
    cdf = np.arange(1, len(values) + 1) / len(values)
    return float(np.sum(np.diff(values) * cdf[1:]))


def consensus_clustering(
    data: np.ndarray,
    k: int | Sequence[int] = 4,
    *,
    n_iter: int = 100,
    item_fraction: float = 0.8,
    feature_fraction: float = 1.0,
    method: Method = "hc",
    min_delta: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> ConsensusResult:
    """Consensus clustering of the rows of `data` [items × features]; `k` a number or the k to scan."""
    from emo.progress import track

    x = np.asarray(data, dtype=np.float64)
    ks = [int(k)] if np.isscalar(k) else sorted(int(v) for v in k)
    n, m = x.shape
    if n > 5000:
        raise EmoError(f"consensus clustering of {n} items needs {n}×{n} matrices per k; cluster a gene panel "
                       "(--genes) or fewer samples")
    if not np.isfinite(x).all():
        raise EmoError("consensus clustering: data contain NaN or infinite values; drop those items first")
    if ks[0] < 2 or ks[-1] >= n * item_fraction:
        raise EmoError(f"consensus clustering: k must be between 2 and {int(n * item_fraction) - 1} for {n} items")
    if method not in ("hc", "kmeans"):
        raise EmoError(f"unknown clustering method {method!r}; choose hc or kmeans")
    rng = np.random.default_rng(seed)
    n_items = max(int(round(item_fraction * n)), max(ks) + 1)
    n_feat = max(int(round(feature_fraction * m)), 2)
    together = np.zeros((len(ks), n, n))
    sampled = np.zeros((n, n))
    for _ in track(range(n_iter), f"consensus k={ks[0]}..{ks[-1]}", "resample", disable=not progress):
        items = np.sort(rng.choice(n, n_items, replace=False))
        feats = np.sort(rng.choice(m, n_feat, replace=False)) if n_feat < m else slice(None)
        sub = x[np.ix_(items, np.arange(m)[feats])]
        sampled[np.ix_(items, items)] += 1
        for j, labels in enumerate(_base_labels(sub, ks, method, rng)):
            together[j][np.ix_(items, items)] += labels[:, None] == labels[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        consensus = np.where(sampled > 0, together / np.maximum(sampled, 1), 0.0)
    for c in consensus:
        np.fill_diagonal(c, 1.0)
    areas = np.array([_cdf_area(c) for c in consensus])
    delta = np.r_[areas[0], np.diff(areas) / areas[:-1]] if len(ks) > 1 else areas.copy()
    chosen = len(ks) - 1
    for j in range(len(ks) - 1):
        if delta[j + 1] < min_delta:
            chosen = j
            break
    k_final = ks[chosen]
    tree = linkage(squareform(1.0 - consensus[chosen], checks=False), method="average")
    labels = fcluster(tree, k_final, criterion="maxclust")
    cdf = pd.DataFrame({"k": ks, "area": areas, "delta_area": delta, "chosen": [k == k_final for k in ks]})
    return ConsensusResult(labels=labels, k=k_final, consensus=consensus[chosen], cdf=cdf)


def ari_test(a: Sequence, b: Sequence, *, n_boot: int = 1000, n_perm: int = 1000, seed: int = 0) -> dict:
    """ARI of two labelings with a bootstrap 95 % CI (resampling items) and a one-sided permutation P."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise EmoError(f"ARI: labelings must be two vectors of equal length, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    ari = adjusted_rand_score(a, b)
    boot = np.array([adjusted_rand_score(a[i], b[i]) for i in rng.integers(0, len(a), (n_boot, len(a)))])
    perm = np.array([adjusted_rand_score(a, rng.permutation(b)) for _ in range(n_perm)])
    lo, hi = np.percentile(boot, [2.5, 97.5]) if n_boot else (np.nan, np.nan)
    p = (1 + np.sum(perm >= ari - 1e-12)) / (1 + n_perm)
    return {"ari": float(ari), "ci_low": float(lo), "ci_high": float(hi), "p_perm": float(p), "n": int(len(a)),
            "n_boot": n_boot, "n_perm": n_perm}


def hierarchical_order(data: np.ndarray) -> np.ndarray:
    """Leaf order of an average-linkage tree on 1 − Pearson between rows (optimal leaf ordering)."""
    if len(data) < 3:
        return np.arange(len(data))
    return leaves_list(linkage(pdist(data, "correlation"), method="average", optimal_ordering=True))


def _zscore(frame: pd.DataFrame) -> pd.DataFrame:
    return (frame - frame.mean()) / frame.std(ddof=1)


def clusters(
    measured: str | Path | pd.DataFrame,
    predicted: str | Path | pd.DataFrame | None = None,
    out_dir: str | Path | None = None,
    config: ClustersConfig | None = None,
    *,
    samples: str | Path | pd.DataFrame | None = None,
    sample_column: str | None = None,
    progress: bool = False,
    **options: Any,
) -> ClusterAnalysis:
    """Consensus clusters of patients and genes on measured (and predicted) data, and their ARIs.
    Keyword options override `ClustersConfig` fields.

    Writes `clusters_samples`, `clusters_genes`, `ari` (CSV + Parquet), `consensus_cdf.csv` (with
    `choose_k`), `clusters.json` and `heatmap.png` / `consensus.png` into `out_dir`.
    """
    cfg = ClustersConfig.build(config, what="clusters", **options)
    meas = attach_sheet(load_expression(measured, orientation=cfg.orientation, split=cfg.split, log_cpm=cfg.log_cpm),
                        samples, sample_column)
    frames = {"measured": meas.data}
    if predicted is not None:
        meas, pred = align(meas, load_expression(predicted, orientation=cfg.orientation))
        frames = {"measured": meas.data, "predicted": pred.data}
    common = [g for g in select_genes(meas.data, cfg.genes, source=meas.source).columns
              if all(g in f.columns for f in frames.values())]
    if len(common) < 3:
        raise EmoError(f"only {len(common)} panel genes present in all inputs; need at least 3")
    frames = {name: f[common] for name, f in frames.items()}
    complete = np.logical_and.reduce([f.notna().all(axis=1).to_numpy() for f in frames.values()])
    frames = {name: f.loc[complete] for name, f in frames.items()}
    varying = np.logical_and.reduce([(f.std() > 0).to_numpy() for f in frames.values()])
    notes = {"n_samples": int(complete.sum()), "dropped_samples_with_nan": int((~complete).sum()),
             "genes_requested": cfg.genes if isinstance(cfg.genes, str) or cfg.genes is None else list(cfg.genes),
             "dropped_constant_genes": [g for g, v in zip(common, varying) if not v]}
    frames = {name: _zscore(f.loc[:, varying]) for name, f in frames.items()}
    z_meas = frames["measured"]
    if len(z_meas) < 10:
        raise EmoError(f"{meas.source}: only {len(z_meas)} complete samples; clustering needs at least 10")
    ks = list(range(2, cfg.k_max + 1)) if cfg.choose_k else cfg.k
    opts = dict(n_iter=cfg.n_iter, item_fraction=cfg.item_fraction, method=cfg.method, seed=cfg.seed, progress=progress)
    sample_res = {name: consensus_clustering(f.to_numpy(), ks, **opts) for name, f in frames.items()}
    gene_res = {name: consensus_clustering(f.to_numpy().T, ks, **opts) for name, f in frames.items()}

    sample_table = pd.DataFrame({name: r.labels for name, r in sample_res.items()}, index=z_meas.index)
    sample_table.index.name = "sample_id"
    gene_table = pd.DataFrame({name: r.labels for name, r in gene_res.items()}, index=z_meas.columns)
    gene_table.index.name = "gene"
    rows = []
    test = dict(n_boot=cfg.n_boot, n_perm=cfg.n_perm, seed=cfg.seed)
    if "predicted" in frames:
        rows.append({"items": "samples", "a": "measured", "b": "predicted",
                     **ari_test(sample_table["measured"], sample_table["predicted"], **test)})
        rows.append({"items": "genes", "a": "measured", "b": "predicted",
                     **ari_test(gene_table["measured"], gene_table["predicted"], **test)})
    sub_col = subtype_column(meas.obs, cfg.subtype_column)
    if sub_col is not None:
        subtype = clean_labels(meas.obs.loc[z_meas.index, sub_col])
        sample_table["subtype"] = subtype
        known = subtype.notna().to_numpy()
        notes.update(subtype_column=sub_col, subtype_missing=int((~known).sum()))
        for name in frames:
            rows.append({"items": "samples", "a": name, "b": f"subtype:{sub_col}",
                         **ari_test(sample_table.loc[known, name], subtype[known].astype(str), **test)})
    ari = pd.DataFrame(rows, columns=["items", "a", "b", "ari", "ci_low", "ci_high", "p_perm", "n", "n_boot", "n_perm"])
    notes["k"] = {f"{items}_{name}": r.k for items, res in (("samples", sample_res), ("genes", gene_res))
                  for name, r in res.items()}
    if out_dir is not None:
        params = {"measured": meas.source, "predicted": None if predicted is None else str(predicted),
                  "genes": notes["genes_requested"], "k": cfg.k, "choose_k": cfg.choose_k, "k_max": cfg.k_max,
                  "n_iter": cfg.n_iter, "item_fraction": cfg.item_fraction, "method": cfg.method, "n_boot": cfg.n_boot,
                  "n_perm": cfg.n_perm, "seed": cfg.seed, "split": cfg.split, "log_cpm": cfg.log_cpm}
        cdf = pd.concat([r.cdf.assign(items=items, data=name)
                         for items, res in (("samples", sample_res), ("genes", gene_res))
                         for name, r in res.items()]) if cfg.choose_k else None
        _write(Path(out_dir), frames, sample_table, gene_table, ari, cdf, sample_res, notes, params)
    return ClusterAnalysis(ari=ari, samples=sample_table, genes=gene_table, notes=notes)


def _write(out: Path, frames, sample_table, gene_table, ari, cdf, sample_res, notes, params) -> None:
    from emo.io import provenance, write_json_atomic, write_table_atomic

    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("clusters_samples", sample_table.reset_index()), ("clusters_genes", gene_table.reset_index()),
                        ("ari", ari)):
        write_table_atomic(out / f"{name}.csv", table)
        write_table_atomic(out / f"{name}.parquet", table.astype({c: str for c in ("subtype",) if c in table}))
    if cdf is not None:
        write_table_atomic(out / "consensus_cdf.csv", cdf[["items", "data", "k", "area", "delta_area", "chosen"]])
        _plot_cdf(out / "consensus_cdf.png", cdf)
    write_json_atomic(out / "clusters.json", {**notes, "provenance": provenance(**params)})
    _plot_heatmaps(out / "heatmap.png", frames, sample_table)
    _plot_consensus(out / "consensus.png", sample_res)


def _label_colours(values: pd.Series) -> np.ndarray:
    import matplotlib

    levels = sorted(values.dropna().astype(str).unique())
    cmap = matplotlib.colormaps["tab10"]
    lookup = {lev: cmap(i % 10) for i, lev in enumerate(levels)}
    return np.array([[lookup.get(str(v), (1, 1, 1, 1)) if pd.notna(v) else (1, 1, 1, 1) for v in values]])


def _plot_heatmaps(png: Path, frames: dict[str, pd.DataFrame], sample_table: pd.DataFrame) -> None:
    import matplotlib.pyplot as plt

    from emo.io import save_figure

    z = frames["measured"]
    sample_order = hierarchical_order(z.to_numpy())
    gene_order = hierarchical_order(z.to_numpy().T)
    bars = [c for c in ("subtype", "measured", "predicted") if c in sample_table]
    ordered = sample_table.iloc[sample_order]
    fig, axes = plt.subplots(len(bars) + 1, len(frames), figsize=(6 * len(frames), 0.16 * z.shape[1] + 2.5),
                             squeeze=False, gridspec_kw={"height_ratios": [0.4] * len(bars) + [z.shape[1] / 5]})
    for col, (name, frame) in enumerate(frames.items()):
        for row, bar in enumerate(bars):
            ax = axes[row][col]
            ax.imshow(_label_colours(ordered[bar]), aspect="auto", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([0], [bar if bar == "subtype" else f"clusters ({bar})"] if col == 0 else [""], fontsize=7)
        ax = axes[-1][col]
        values = frame.to_numpy()[np.ix_(sample_order, gene_order)].T
        im = ax.imshow(np.clip(values, -3, 3), aspect="auto", cmap="RdBu_r", vmin=-3, vmax=3, interpolation="nearest")
        ax.set_yticks(range(len(gene_order)), z.columns[gene_order], fontsize=5 if len(gene_order) > 30 else 7)
        ax.set_xlabel(f"{len(sample_order)} patients (order: clustering of measured)")
        axes[0][col].set_title(f"{name} expression (z-score)")
    fig.colorbar(im, cax=axes[-1][-1].inset_axes([1.02, 0.3, 0.02, 0.4]), label="z")
    save_figure(fig, png, dpi=120)


def _plot_consensus(png: Path, results: dict[str, ConsensusResult]) -> None:
    import matplotlib.pyplot as plt

    from emo.io import save_figure

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        order = np.argsort(res.labels, kind="stable")
        ax.imshow(res.consensus[np.ix_(order, order)], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set(title=f"consensus, {name} (k={res.k})", xticks=[], yticks=[])
    save_figure(fig, png, dpi=110)


def _plot_cdf(png: Path, cdf: pd.DataFrame) -> None:
    import matplotlib.pyplot as plt

    from emo.io import save_figure

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (items, data), block in cdf.groupby(["items", "data"], sort=False):
        line, = ax.plot(block["k"], block["delta_area"], marker="o", label=f"{items}, {data}")
        chosen = block[block["chosen"]]
        ax.scatter(chosen["k"], chosen["delta_area"], s=120, facecolors="none", edgecolors=line.get_color())
    ax.set(xlabel="k", ylabel="relative increase of CDF area (Δ)", title="consensus CDF Δ-area (circle: chosen k)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png, dpi=110)


def report_section(directory: str | Path) -> str:
    """HTML for `emo report`: ARI table and the heatmaps ('' when clustering was not run)."""
    from emo.reports.html import figure, table

    d = Path(directory)
    if not (d / "ari.csv").exists():
        return ""
    return "\n".join(["<p>Clustering of the gene panel: adjusted Rand index between consensus clusterings of "
                      "measured and predicted expression (bootstrap 95 % CI, permutation P).</p>",
                      table(pd.read_csv(d / "ari.csv")), figure(d / "heatmap.png"), figure(d / "consensus.png"),
                      figure(d / "consensus_cdf.png")])
