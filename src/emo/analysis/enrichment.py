"""Pathway enrichment of prediction performance (paper: Fig. 3 and Supp. Tables S9–S10).

* Rank-based: all genes ranked by a score — by default −log10 of the BH-adjusted Spearman P from
  `emo evaluate`'s genes.csv (the paper ranked by adjusted P with SetRank), or ρ, or any column such
  as the ER t-statistic of `emo analyze de` — tested against each gene set with gseapy's preranked
  GSEA (permutation null, seeded). FDR per set is gseapy's q-value.
* Set-based: genes that were not predictable (adjusted P > alpha) but variable (variance above the
  median across all genes) tested for over-representation in each set with the hypergeometric
  distribution (scipy), universe = all ranked genes, BH across sets.

Gene sets come from user-supplied GMT files (MSigDB Hallmark, Reactome, …); emo ships none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emo.analysis.config import EnrichConfig
from emo.errors import EmoError

__all__ = ["EnrichConfig", "EnrichmentResult", "read_gmt", "ranking", "prerank", "over_representation",
           "unpredictable_variable_genes", "enrich", "report_section"]


def read_gmt(path: str | Path, universe: pd.Index | list[str] | None = None) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """Gene sets of a GMT file and a table of each set's size and overlap with `universe`.

    A GMT whose genes do not overlap the universe at all is an error (usually Entrez ids or mouse
    symbols against human symbols), not an empty result.
    """
    import gseapy

    path = Path(path)
    if not path.exists():
        raise EmoError(f"{path}: gene-set file not found; give a GMT file (e.g. MSigDB Hallmark symbols)")
    if path.suffix.lower() != ".gmt":
        raise EmoError(f"{path}: gene sets must be a .gmt file (name<TAB>description<TAB>gene…)")
    sets = {name: list(dict.fromkeys(g.strip() for g in genes if g.strip()))
            for name, genes in gseapy.read_gmt(str(path)).items()}
    sets = {name: genes for name, genes in sets.items() if genes}
    if not sets:
        raise EmoError(f"{path}: no gene set found; each line needs a name, a description and genes, tab-separated")
    overlap = pd.DataFrame({"set": list(sets), "set_size": [len(g) for g in sets.values()]})
    if universe is not None:
        uni = set(map(str, universe))
        overlap["n_in_universe"] = [len(uni.intersection(g)) for g in sets.values()]
        if overlap["n_in_universe"].sum() == 0:
            example = next(iter(sets.values()))[:3]
            raise EmoError(f"{path}: none of its genes (e.g. {', '.join(example)}) is among the {len(uni)} genes "
                           f"analysed (e.g. {', '.join(sorted(uni)[:3])}); use a GMT with the same gene identifiers")
    return sets, overlap


def ranking(table: pd.DataFrame, score: str = "padj") -> pd.Series:
    """Per-gene ranking score from a genes table: `padj` = −log10 fdr_bh, `rho` = spearman_rho, or a column."""
    if "gene" not in table.columns:
        raise EmoError("ranking table: needs a 'gene' column (genes.csv from emo evaluate or de_*.csv)")
    column = {"padj": "fdr_bh", "rho": "spearman_rho"}.get(score, score)
    if column not in table.columns:
        raise EmoError(f"ranking table: no column {column!r} for --score {score}; columns are {list(table.columns)}")
    values = pd.to_numeric(table[column], errors="coerce")
    if score == "padj":
        positive = values[values > 0]
        values = -np.log10(values.clip(lower=positive.min() if len(positive) else 1e-300))
    scores = pd.Series(values.to_numpy(), index=table["gene"].astype(str), name=score).dropna()
    if scores.index.duplicated().any():
        raise EmoError(f"ranking table: gene {scores.index[scores.index.duplicated()][0]!r} appears twice")
    if len(scores) < 2:
        raise EmoError(f"ranking table: fewer than 2 genes with a finite {column!r}")
    return scores.sort_values(ascending=False)


def prerank(
    scores: pd.Series,
    gene_sets: dict[str, list[str]],
    *,
    permutations: int = 1000,
    seed: int = 0,
    min_size: int = 15,
    max_size: int = 500,
    threads: int = 1,
) -> pd.DataFrame:
    """Preranked GSEA (gseapy) of `scores` (gene → score); one row per set that passes the size filter."""
    import gseapy

    in_rank = {name: len(set(genes).intersection(scores.index)) for name, genes in gene_sets.items()}
    usable = {n for n, size in in_rank.items() if min_size <= size <= max_size}
    if not usable:
        raise EmoError(f"no gene set has between {min_size} and {max_size} of the {len(scores)} ranked genes "
                       f"(largest overlap {max(in_rank.values())}); lower --min-size or check gene identifiers")
    res = gseapy.prerank(rnk=scores.astype(float), gene_sets={n: gene_sets[n] for n in usable},
                         permutation_num=permutations, seed=seed, min_size=min_size, max_size=max_size,
                         threads=threads, outdir=None, no_plot=True, verbose=False).res2d
    out = pd.DataFrame({
        "set": res["Term"].astype(str),
        "size": [in_rank[t] for t in res["Term"].astype(str)],
        "es": pd.to_numeric(res["ES"]), "nes": pd.to_numeric(res["NES"]),
        "p": pd.to_numeric(res["NOM p-val"]), "fdr": pd.to_numeric(res["FDR q-val"]),
        "fwer": pd.to_numeric(res["FWER p-val"]),
        "lead_genes": res["Lead_genes"].astype(str),
    })
    out["direction"] = np.where(out["nes"] >= 0, "up", "down")
    return out.sort_values(["fdr", "p", "nes"], ascending=[True, True, False], kind="stable").reset_index(drop=True)


def over_representation(
    query: list[str] | pd.Index, universe: list[str] | pd.Index, gene_sets: dict[str, list[str]], *, min_size: int = 5
) -> pd.DataFrame:
    """Hypergeometric over-representation of `query` in each set, within `universe`; BH across sets."""
    from scipy.stats import hypergeom
    from statsmodels.stats.multitest import multipletests

    uni = set(map(str, universe))
    hits = uni.intersection(map(str, query))
    if not hits:
        raise EmoError("over-representation: no query gene is in the universe of ranked genes")
    rows = []
    for name, genes in gene_sets.items():
        members = uni.intersection(genes)
        if len(members) < min_size:
            continue
        overlap = sorted(hits.intersection(members))
        rows.append({"set": name, "set_size": len(genes), "n_in_universe": len(members), "overlap": len(overlap),
                     "expected": len(members) * len(hits) / len(uni), "genes": ";".join(overlap)})
    if not rows:
        raise EmoError(f"over-representation: no gene set has {min_size} or more genes in the universe; "
                       "check the GMT's gene identifiers or lower --min-size")
    table = pd.DataFrame(rows)
    # P(X ≥ overlap), X ~ Hypergeom(N = universe, K = set ∩ universe, n = query ∩ universe)
    table["p"] = hypergeom.sf(table["overlap"] - 1, len(uni), table["n_in_universe"], len(hits))
    table["fdr_bh"] = multipletests(table["p"], method="fdr_bh")[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        table["fold_enrichment"] = table["overlap"] / table["expected"]
    table.attrs.update(universe=len(uni), query=len(hits), skipped_small_sets=len(gene_sets) - len(rows))
    cols = ["set", "set_size", "n_in_universe", "overlap", "expected", "fold_enrichment", "p", "fdr_bh", "genes"]
    return table[cols].sort_values("p", kind="stable").reset_index(drop=True)


def unpredictable_variable_genes(performance: pd.DataFrame, variance: pd.Series, alpha: float = 0.05) -> list[str]:
    """Genes with adjusted P > alpha (not predictable) and variance above the median of all genes."""
    perf = performance.assign(gene=performance["gene"].astype(str)).set_index("gene")
    if "fdr_bh" not in perf.columns:
        raise EmoError("performance table: needs an 'fdr_bh' column (genes.csv from emo evaluate)")
    var = variance.reindex(perf.index)
    if var.isna().all():
        raise EmoError("no ranked gene has a variance in the measured expression; check gene names match")
    variable = var > var.median()
    return perf.index[(perf["fdr_bh"] > alpha) & variable].tolist()


@dataclass
class EnrichmentResult:
    """Preranked GSEA per set, over-representation per set (when variance was available), GMT overlap."""

    prerank: pd.DataFrame
    ora: pd.DataFrame | None
    overlap: pd.DataFrame


def _variance(measured: str | Path | pd.DataFrame, split: str | None, log_cpm: bool) -> pd.Series:
    from emo.analysis.bulk import load_expression

    if not isinstance(measured, pd.DataFrame) and Path(measured).suffix == ".h5ad":
        import anndata

        var = anndata.read_h5ad(measured, backed="r").var
        if "variance" in var.columns and split is None:
            return var["variance"].astype(float)
    return load_expression(measured, split=split, log_cpm=log_cpm).data.var(ddof=1)


def enrich(
    table: str | Path | pd.DataFrame,
    gene_sets: str | Path | list[str | Path],
    out_dir: str | Path | None = None,
    config: EnrichConfig | None = None,
    *,
    measured: str | Path | pd.DataFrame | None = None,
    **options: Any,
) -> EnrichmentResult:
    """Rank-based enrichment of `table` (genes.csv or a DE table) per GMT; ORA when `measured` is given.

    Writes `enrich_prerank`, `enrich_ora`, `gmt_overlap` (CSV + Parquet), `enrich_<gmt>.png` (bars of
    −log10 FDR with per-set boxplots of gene ρ, or of the score) and `enrich.json` into `out_dir`.
    """
    from emo.expression.readers import read_table

    cfg = EnrichConfig.build(config, what="enrich", **options)
    frame = table.copy() if isinstance(table, pd.DataFrame) else read_table(Path(table))
    scores = ranking(frame, cfg.score)
    paths = [gene_sets] if isinstance(gene_sets, (str, Path)) else list(gene_sets)
    if not paths:
        raise EmoError("no gene-set file given; pass --gene-sets FILE.gmt")
    variance = _variance(measured, cfg.split, cfg.log_cpm) if measured is not None else None
    query = unpredictable_variable_genes(frame, variance, cfg.alpha) if variance is not None else None
    pre, ora, overlaps, collections = [], [], [], {}
    notes: dict = {"n_ranked": int(len(scores)), "score": cfg.score}
    for path in paths:
        name = Path(path).stem
        sets, overlap = read_gmt(path, scores.index)
        collections[name] = sets
        overlaps.append(overlap.assign(collection=name))
        pre.append(prerank(scores, sets, permutations=cfg.permutations, seed=cfg.seed, min_size=cfg.min_size,
                           max_size=cfg.max_size, threads=cfg.threads).assign(collection=name))
        if query is not None:
            o = over_representation(query, scores.index, sets, min_size=cfg.min_size)
            notes[f"ora_{name}"] = dict(o.attrs)
            ora.append(o.assign(collection=name))
    result = EnrichmentResult(prerank=pd.concat(pre, ignore_index=True),
                              ora=pd.concat(ora, ignore_index=True) if ora else None,
                              overlap=pd.concat(overlaps, ignore_index=True))
    if query is not None:
        notes["n_unpredictable_variable"] = len(query)
    if out_dir is not None:
        values = (frame.assign(gene=frame["gene"].astype(str)).set_index("gene")["spearman_rho"]
                  if "spearman_rho" in frame.columns else scores)
        params = {"table": "<table>" if isinstance(table, pd.DataFrame) else str(table), "gene_sets": list(map(str, paths)),
                  "score": cfg.score, "permutations": cfg.permutations, "seed": cfg.seed, "min_size": cfg.min_size,
                  "max_size": cfg.max_size, "alpha": cfg.alpha}
        _write(Path(out_dir), result, collections, values, cfg.alpha, notes, params)
    return result


def _write(out: Path, result: EnrichmentResult, collections: dict[str, dict[str, list[str]]], values: pd.Series,
           alpha: float, notes: dict, params: dict) -> None:
    from emo.io import provenance, write_json_atomic, write_table_atomic

    out.mkdir(parents=True, exist_ok=True)
    tables = {"enrich_prerank": result.prerank, "gmt_overlap": result.overlap}
    if result.ora is not None:
        tables["enrich_ora"] = result.ora
    for name, t in tables.items():
        write_table_atomic(out / f"{name}.csv", t)
        write_table_atomic(out / f"{name}.parquet", t)
    for name, block in result.prerank.groupby("collection", sort=False):
        notes[f"significant_{name}"] = int((block["fdr"] < alpha).sum())
        _plot(out / f"enrich_{name}.png", block, collections[name], values, alpha, params["permutations"], name)
    write_json_atomic(out / "enrich.json", {**notes, "provenance": provenance(**params)})


def _plot(png: Path, block: pd.DataFrame, sets: dict[str, list[str]], values: pd.Series, alpha: float,
          permutations: int, title: str, top: int = 20) -> None:
    import matplotlib.pyplot as plt

    from emo.io import save_figure

    shown = block[block["fdr"] < alpha].head(top)
    if shown.empty:
        shown = block.head(min(top, 10))
    log_fdr = -np.log10(shown["fdr"].clip(lower=1.0 / max(permutations, 1)))  # FDR 0 = below 1/permutations
    members = [values.reindex(sets[name]).dropna().to_numpy() for name in shown["set"]]
    fig, (ax_bar, ax_box) = plt.subplots(1, 2, figsize=(11, 0.35 * len(shown) + 1.6), sharey=True,
                                         gridspec_kw={"width_ratios": [1, 1.3]})
    y = np.arange(len(shown))
    ax_bar.barh(y, log_fdr, color=np.where(shown["nes"] >= 0, "#c0392b", "#2e86c1"))
    ax_bar.axvline(-np.log10(alpha), color="k", ls="--", lw=0.8)
    ax_bar.set_yticks(y, [s.replace("HALLMARK_", "").replace("REACTOME_", "")[:45] for s in shown["set"]], fontsize=7)
    ax_bar.invert_yaxis()
    ax_bar.set(xlabel="−log10 FDR (red: NES > 0)", title=f"{title}: {int((block['fdr'] < alpha).sum())} sets FDR < {alpha}")
    ax_box.boxplot(members, positions=y, orientation="horizontal", widths=0.6, showfliers=False, manage_ticks=False)
    ax_box.set(xlabel=f"{values.name or 'score'} of the set's genes")
    fig.tight_layout()
    save_figure(fig, png, dpi=120)


def report_section(directory: str | Path) -> str:
    """HTML for `emo report`: enriched sets and Fig. 3-style plots ('' when enrichment was not run)."""
    from emo.reports.html import figure, table

    d = Path(directory)
    if not (d / "enrich_prerank.csv").exists():
        return ""
    pre = pd.read_csv(d / "enrich_prerank.csv")
    parts = ["<p>Pathways enriched among the genes ranked by how well they are predicted (pre-ranked GSEA).</p>",
             table(pre.drop(columns=["lead_genes"]).head(20))]
    parts += [figure(png) for png in sorted(d.glob("enrich_*.png"))]
    if (d / "enrich_ora.csv").exists():
        parts += ["<h4>Over-representation among unpredictable, variable genes</h4>",
                  table(pd.read_csv(d / "enrich_ora.csv").drop(columns=["genes"]).head(15))]
    return "\n".join(parts)
