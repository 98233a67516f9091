"""Spatial validation of EMO-spatial against ROI-level spatial transcriptomics (paper: "ST analysis", Fig. 4).

Two steps, each its own command:
1. `build_rois`: mean of tile predictions inside each ROI (GeoJSON polygons in level-0 px, or a
   spot → ROI mapping), GeoMx-style normalisation of the measured probe counts, composite probes as
   sums of their genes' predictions → a long table `slide_id, roi_id, gene, measured, predicted`.
2. `spatial_validation`: per gene the linear mixed model `measured ~ predicted + (1 | slide_id)`
   fitted by maximum likelihood, likelihood-ratio test against the model without the fixed effect,
   BH-FDR; per slide and gene Spearman ρ across ROIs; figures.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emo.analysis import stats
from emo.errors import EmoError
from emo.io import dense, provenance, write_json_atomic, write_table_atomic
from emo.panels import composite_probes

__all__ = [
    "ROI_COLUMNS",
    "GENE_COLUMNS",
    "SPEARMAN_COLUMNS",
    "geomx_normalise",
    "add_composite_probes",
    "roi_means",
    "build_rois",
    "drop_low_variance",
    "fit_lme",
    "per_slide_spearman",
    "spatial_validation",
]

ROI_COLUMNS = ["slide_id", "roi_id", "gene", "measured", "predicted"]
GENE_COLUMNS = ["gene", "coef", "ci_low", "ci_high", "lrt_stat", "lrt_p", "fdr_bh", "n_slides", "n_rois"]
SPEARMAN_COLUMNS = ["slide_id", "gene", "rho", "p"]
ID_COLUMNS = ("slide_id", "roi_id")


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# ----------------------------------------------------------------------------------------- step 1
def geomx_normalise(counts: pd.DataFrame, negative_controls: Sequence[str] | None = None) -> pd.DataFrame:
    """log2(count / mean of the ROI's negative-control probes); the control columns are removed.

    `counts` is ROIs × probes. Without `negative_controls`, probes whose name starts with "neg"
    (GeoMx: NegProbe-…, Neg1…Neg6) are the controls.
    """
    controls = list(negative_controls) if negative_controls else [c for c in counts.columns if _key(str(c)).startswith("neg")]
    missing = [c for c in controls if c not in counts.columns]
    if missing or not controls:
        raise EmoError(
            f"measured table: negative-control probes {missing or '(none named Neg*)'} not found; "
            "name them with --negative-controls or pass already normalised values without --normalise-geomx"
        )
    background = counts[controls].astype(np.float64).mean(axis=1)
    if (background <= 0).any():
        roi = background.index[background <= 0][0]
        raise EmoError(f"measured table: ROI {roi!r} has negative-control mean ≤ 0; cannot normalise by it")
    values = counts.drop(columns=controls).astype(np.float64)
    if (values <= 0).any().any():
        raise EmoError("measured table: zero or negative probe counts cannot be log2-normalised; pass raw positive counts")
    return np.log2(values.div(background, axis=0))


def add_composite_probes(pred: pd.DataFrame, composites: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Add one column per composite probe (sum of its member genes' predictions) where all members are present."""
    composites = composite_probes() if composites is None else composites
    out = pred.copy()
    for probe, members in composites.items():
        if all(g in pred.columns for g in members):
            out[probe] = pred[list(dict.fromkeys(members))].sum(axis=1)
    return out


def _read_spatial(path: Path) -> tuple[str, Any]:
    import anndata

    ad = anndata.read_h5ad(path)
    if "spatial" not in ad.obsm:
        raise EmoError(f"{path}: no obsm['spatial'] tile centres; pass EMO-spatial .h5ad files from `emo predict`")
    return path.name.removesuffix(".h5ad"), ad


def _polygons(rois: Path, slide_ids: list[str]) -> dict[str, list[tuple[str, Any]]]:
    """slide_id → [(roi_id, polygon)] from one GeoJSON (features carry slide_id) or a folder of <slide_id>.geojson."""
    from shapely.geometry import shape

    files = {s: rois / f"{s}.geojson" for s in slide_ids} if rois.is_dir() else {None: rois}
    out: dict[str, list[tuple[str, Any]]] = {}
    for slide, path in files.items():
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        features = data["features"] if data.get("type") == "FeatureCollection" else data if isinstance(data, list) else [data]
        for i, feat in enumerate(features):
            props = feat.get("properties") or {}
            sid = str(props.get("slide_id", slide if slide is not None else (slide_ids[0] if len(slide_ids) == 1 else "")))
            if not sid:
                raise EmoError(f"{path}: feature {i} has no properties.slide_id and several slides were given; add it")
            rid = props.get("roi_id", props.get("name", feat.get("id", f"roi{i}")))
            out.setdefault(sid, []).append((str(rid), shape(feat["geometry"])))
    if not out:
        raise EmoError(f"{rois}: no ROI polygons found for slides {slide_ids[:3]}; give a GeoJSON FeatureCollection")
    return out


def roi_means(
    spatial: Iterable[Path],
    *,
    rois: Path | None = None,
    spot_map: pd.DataFrame | Path | None = None,
) -> pd.DataFrame:
    """Mean tile prediction per ROI: rows (slide_id, roi_id), columns genes, plus `n_tiles`.

    A tile belongs to an ROI when its centre (obsm['spatial'], level-0 px) lies inside the polygon,
    or when the spot → ROI map (columns slide_id, tile_id or spot_id, roi_id) says so.
    """
    import shapely

    if (rois is None) == (spot_map is None):
        raise EmoError("build-rois: give exactly one of --rois (GeoJSON polygons) or --spot-map (CSV spot → ROI)")
    loaded = [_read_spatial(Path(p)) for p in spatial]
    if not loaded:
        raise EmoError("build-rois: no EMO-spatial .h5ad files given")
    if spot_map is not None:
        mapping = pd.read_csv(spot_map) if not isinstance(spot_map, pd.DataFrame) else spot_map
        mapping = mapping.rename(columns={"spot_id": "tile_id"})
        need = {"slide_id", "tile_id", "roi_id"} - set(mapping.columns)
        if need:
            raise EmoError(f"{spot_map}: spot map lacks columns {sorted(need)}; expected slide_id, tile_id (or spot_id), roi_id")
        mapping = mapping.astype({"slide_id": str, "tile_id": str, "roi_id": str})
    else:
        polygons = _polygons(Path(rois), [s for s, _ in loaded])
    frames = []
    for slide_id, ad in loaded:
        x = dense(ad.X)
        if spot_map is not None:
            m = mapping[mapping["slide_id"] == slide_id]
            pos = pd.Series(np.arange(ad.n_obs), index=ad.obs_names.astype(str))
            m = m[m["tile_id"].isin(pos.index)]
            members = [(rid, pos[g["tile_id"]].to_numpy()) for rid, g in m.groupby("roi_id", sort=False)]
        else:
            centres = np.asarray(ad.obsm["spatial"], dtype=np.float64)
            members = [
                (rid, np.flatnonzero(shapely.contains_xy(poly, centres[:, 0], centres[:, 1])))
                for rid, poly in polygons.get(slide_id, [])
            ]
        for rid, idx in members:
            if len(idx) == 0:
                continue
            row = pd.DataFrame(x[idx].astype(np.float64).mean(axis=0, keepdims=True), columns=ad.var_names.astype(str))
            row.insert(0, "n_tiles", len(idx))
            row.insert(0, "roi_id", rid)
            row.insert(0, "slide_id", slide_id)
            frames.append(row)
    if not frames:
        raise EmoError("build-rois: no tile falls inside any ROI; check that ROI polygons are in level-0 pixels of these slides")
    return pd.concat(frames, ignore_index=True).set_index(list(ID_COLUMNS))


def _measured_wide(measured: pd.DataFrame | Path) -> pd.DataFrame:
    frame = pd.read_csv(measured) if not isinstance(measured, pd.DataFrame) else measured.copy()
    if not set(ID_COLUMNS) <= set(frame.columns):
        raise EmoError(f"{measured if isinstance(measured, Path) else 'measured table'}: needs columns slide_id and roi_id")
    frame = frame.astype({"slide_id": str, "roi_id": str})
    if {"gene", "measured"} <= set(frame.columns):
        frame = frame.pivot_table(index=list(ID_COLUMNS), columns="gene", values="measured", aggfunc="mean")
    else:
        frame = frame.set_index(list(ID_COLUMNS))
    return frame.select_dtypes("number")


def build_rois(
    spatial: Iterable[Path],
    measured: pd.DataFrame | Path,
    *,
    rois: Path | None = None,
    spot_map: pd.DataFrame | Path | None = None,
    normalise_geomx: bool = False,
    negative_controls: Sequence[str] | None = None,
    out: Path | None = None,
) -> pd.DataFrame:
    """ROI-level long table `slide_id, roi_id, gene, measured, predicted` (written to `out` when given).

    `measured` is wide (slide_id, roi_id, one column per probe) or long (slide_id, roi_id, gene, measured).
    """
    pred = roi_means(spatial, rois=rois, spot_map=spot_map).drop(columns="n_tiles")
    meas = _measured_wide(measured)
    if normalise_geomx:
        meas = geomx_normalise(meas, negative_controls)
    pred = add_composite_probes(pred)
    by_key = {_key(c): c for c in pred.columns}
    pairs = {probe: by_key[_key(str(probe))] for probe in meas.columns if _key(str(probe)) in by_key}
    if not pairs:
        raise EmoError("build-rois: no measured probe matches a predicted gene or composite probe; check gene symbols")
    common = meas.index.intersection(pred.index)
    if len(common) == 0:
        raise EmoError("build-rois: no (slide_id, roi_id) of the measured table has tiles; check ROI ids and slide names")
    m = meas.loc[common, list(pairs)].stack().rename("measured")
    p = pred.loc[common, list(pairs.values())].rename(columns={v: k for k, v in pairs.items()}).stack().rename("predicted")
    long = pd.concat([m, p], axis=1, join="inner").reset_index()
    long.columns = ROI_COLUMNS
    long.attrs["unmatched_probes"] = sorted(str(c) for c in meas.columns if c not in pairs)
    long.attrs["rois_without_tiles"] = int(len(meas.index.difference(pred.index)))
    if out is not None:
        write_table_atomic(out, long)
    return long


# ----------------------------------------------------------------------------------------- step 2
def _check_table(table: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ROI_COLUMNS if c not in table.columns]
    if missing:
        raise EmoError(f"ROI table: missing columns {missing}; expected {', '.join(ROI_COLUMNS)} (one row per ROI and gene)")
    t = table[ROI_COLUMNS].copy()
    t[["slide_id", "roi_id", "gene"]] = t[["slide_id", "roi_id", "gene"]].astype(str)
    for c in ("measured", "predicted"):
        t[c] = pd.to_numeric(t[c], errors="coerce")
    dup = t.duplicated(["slide_id", "roi_id", "gene"])
    if dup.any():
        r = t[dup].iloc[0]
        raise EmoError(f"ROI table: gene {r.gene} appears twice for slide {r.slide_id} ROI {r.roi_id}; one row per ROI and gene")
    return t.dropna(subset=["measured", "predicted"])


def drop_low_variance(table: pd.DataFrame, min_variance: float = 0.001) -> tuple[pd.DataFrame, list[str]]:
    """Drop probes whose measured expression varies less than `min_variance` across all ROIs (paper: CCL5, PECAM1)."""
    var = table.groupby("gene")["measured"].var()
    low = sorted(var.index[~(var >= min_variance)])
    return table[~table["gene"].isin(low)], low


def fit_lme(measured: np.ndarray, predicted: np.ndarray, slide: np.ndarray) -> dict[str, Any]:
    """ML fits of `measured ~ predicted + (1 | slide)` and `measured ~ 1 + (1 | slide)`, LRT of the fixed effect.

    Failures and non-convergence are recorded in the result (`converged`, `note`), never raised.
    """
    from scipy.stats import chi2
    from statsmodels.regression.mixed_linear_model import MixedLM

    y = np.asarray(measured, dtype=np.float64)
    x = np.asarray(predicted, dtype=np.float64)
    groups = np.asarray(slide)
    ones = np.ones_like(y)
    out: dict[str, Any] = dict(coef=np.nan, ci_low=np.nan, ci_high=np.nan, lrt_stat=np.nan, lrt_p=np.nan,
                               converged=False, note="")
    if np.ptp(x) == 0:
        out["note"] = "constant prediction"
        return out
    if len(np.unique(groups)) < 2:
        out["note"] = "one slide: the slide random effect is not identifiable"
        return out
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            full = MixedLM(y, np.column_stack([ones, x]), groups).fit(reml=False)
            null = MixedLM(y, ones[:, None], groups).fit(reml=False)
    except Exception as exc:  # noqa: BLE001 — one gene's failed fit is recorded, the others go on
        out["note"] = f"fit failed: {type(exc).__name__}: {exc}"
        return out
    ci = np.asarray(full.conf_int(alpha=0.05))[1]
    stat = max(2.0 * (full.llf - null.llf), 0.0)
    notes = sorted({str(w.message).split("\n")[0] for w in caught if "converge" in str(w.message).lower() or
                    "boundary" in str(w.message).lower()})
    out.update(coef=float(np.asarray(full.fe_params)[1]), ci_low=float(ci[0]), ci_high=float(ci[1]),
               lrt_stat=float(stat), lrt_p=float(chi2.sf(stat, df=1)),
               converged=bool(full.converged and null.converged), note="; ".join(notes))
    return out


def per_slide_spearman(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ between measured and predicted across the ROIs of each slide, per gene."""
    rows = []
    for slide_id, g in table.groupby("slide_id", sort=True):
        m = g.pivot(index="roi_id", columns="gene", values="measured")
        p = g.pivot(index="roi_id", columns="gene", values="predicted").reindex_like(m)
        rho, pv = stats.spearman(m.to_numpy(), p.to_numpy())
        rows.append(pd.DataFrame({"slide_id": slide_id, "gene": m.columns.astype(str), "rho": rho, "p": pv}))
    return pd.concat(rows, ignore_index=True)[SPEARMAN_COLUMNS]


def spatial_validation(
    table: pd.DataFrame | Path,
    out_dir: Path,
    *,
    min_variance: float = 0.001,
    fdr: float = 0.05,
    figures: bool = True,
) -> pd.DataFrame:
    """Per-gene LME + LRT and per-slide Spearman of EMO-spatial vs measured ROI expression.

    Writes `genes.csv` (GENE_COLUMNS), `per_slide_spearman.csv`, `summary.json` and two PNGs; returns
    the gene table (with `converged`/`note` columns that genes.csv leaves out).
    """
    from rich.progress import track

    source = str(table) if not isinstance(table, pd.DataFrame) else "DataFrame"
    if not isinstance(table, pd.DataFrame):
        path = Path(table)
        if not path.exists():
            raise EmoError(f"{path}: ROI table not found; build it with `emo analyze build-rois`")
        table = pd.read_csv(path)
    t, dropped = drop_low_variance(_check_table(table), min_variance)
    if t.empty:
        raise EmoError(f"{source}: no gene left after dropping probes with variance < {min_variance}")
    rows = []
    for gene, g in track(t.groupby("gene", sort=True), description="mixed models", transient=True):
        res = fit_lme(g["measured"].to_numpy(), g["predicted"].to_numpy(), g["slide_id"].to_numpy())
        rows.append({"gene": gene, **res, "n_slides": g["slide_id"].nunique(), "n_rois": len(g)})
    genes = pd.DataFrame(rows)
    genes["fdr_bh"] = stats.adjust_pvalues(genes["lrt_p"], "fdr_bh")
    genes = genes.sort_values(["lrt_p", "gene"], na_position="last").reset_index(drop=True)
    genes = genes[GENE_COLUMNS + ["converged", "note"]]
    spear = per_slide_spearman(t)

    out_dir = Path(out_dir)
    write_table_atomic(out_dir / "genes.csv", genes[GENE_COLUMNS])
    write_table_atomic(out_dir / "per_slide_spearman.csv", spear)
    problems = genes[~genes["converged"] | (genes["note"] != "")]
    summary = {
        "n_genes": int(len(genes)),
        "n_slides": int(t["slide_id"].nunique()),
        "n_rois": int(t.groupby(["slide_id", "roi_id"]).ngroups),
        f"fdr_lt_{fdr:g}": int((genes["fdr_bh"] < fdr).sum()),
        "dropped_low_variance": dropped,
        "fit_notes": {r.gene: (r.note or "did not converge") for r in problems.itertuples()},
        "median_within_slide_rho": spear.groupby("gene")["rho"].median().dropna().round(4).to_dict(),
        "provenance": provenance(table=source, min_variance=min_variance, fdr=fdr),
    }
    if figures:
        from emo.analysis import plots

        plots.save(plots.lme_bars(genes, fdr), out_dir / "lme_fdr.png")
        order = genes.dropna(subset=["lrt_p"])["gene"].tolist()
        plots.save(plots.within_slide_rho(spear, order or None), out_dir / "within_slide_rho.png")
        summary["figures"] = ["lme_fdr.png", "within_slide_rho.png"]
    write_json_atomic(out_dir / "summary.json", summary)
    return genes
