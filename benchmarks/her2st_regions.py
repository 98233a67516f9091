"""The paper's slide-level study on real tissue: her2st regions as pseudo-bulk samples.

    python benchmarks/her2st_regions.py --data DIR --train B4,C2,C3,C4 --test C5,C6 --genes FILE --out OUT

A spot at array position (x, y) belongs to region f"{section}_{x // 3}_{y // 3}" (a 600 µm square,
the size of the paper's GeoMx ROIs); regions with ≥ 5 spots are kept and their measured expression is
log2(CPM + 1) of the spots' summed raw counts (`emo.expression.region_pseudobulk`). A region's tiles
are the spot-centred tiles of its spots: with 224 µm tiles on the 200 µm spot grid they cover the
square edge to edge; each tile's features are those of the 224, 100 and 448 µm tiles around its spot
concatenated (the spot model's scales; chosen over 224 µm alone by leave-one-section-out, mean ρ
0.127 vs 0.117), and they reuse the spot-level feature cache (`emo.spot_models.section_features`).
Each region is one "slide" of a feature folder and one sample of a targets.h5ad, so the model is
fitted by `emo.training.train_model` (slide level: the region prediction is the mean of its tiles),
predicted by `emo.prediction.predict` (EMO-average per region), scored by `emo.analysis.evaluate`
on the pooled test regions and by `emo.analysis.roi_validation.spatial_validation` (regions = ROIs,
sections = slides). Beside it, the calibration: the spot-level model (`benchmarks/her2st.py`)
averaged into the same test regions.

Writes OUT/regions.csv (test regions × genes of FILE + the 11 PAM50 proliferation genes, predicted
log2(CPM + 1)), OUT/evaluate/, OUT/spatial_validation/, OUT/work/ (targets, features, model,
predictions) and ends with `RESULT mean_rho=... n_fdr05=... prolif_rho=... seconds=...`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from emo.errors import EmoError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="her2st-layout folder (images/, counts/, spots/)")
    ap.add_argument("--train", required=True, help="comma-separated training sections (need images)")
    ap.add_argument("--test", required=True, help="comma-separated test sections (need images)")
    ap.add_argument("--genes", type=Path, required=True, help="gene list, one symbol per line")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--cache", type=Path, default=None, help="spot feature cache folder (default: the shared emo cache, $EMO_CACHE_DIR or ~/.cache/emo)")
    ap.add_argument("--head", default="ridge", help="slide-level head from emo.models.HEADS")
    ap.add_argument("--tile-sizes-um", default="224,100,448", help="spot-centred tile sizes, µm (several: features concatenated)")
    ap.add_argument("--backbone", default="efficientnet_lite0_ms", help="frozen feature backbone")
    ap.add_argument("--no-section-standardize", action="store_true", help="keep raw feature scales per section")
    ap.add_argument("--tune-fraction", type=float, default=0.2, help="training regions held for the tuning split")
    ap.add_argument("--min-spots", type=int, default=5, help="smallest region kept")
    ap.add_argument("--shifted-grids", action="store_true",
                    help="also train on the regions of the 8 shifted 3×3 grids (those sharing a spot with a tuning "
                         "region are left out); test regions are always the standard grid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-spot-baseline", action="store_true", help="skip the spot-level model averaged into regions")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        return run(args, t0)
    except EmoError as exc:
        print(f"her2st_regions: error: {exc}", file=sys.stderr)
        return 2


def _sections(value: str) -> list[str]:
    return [s for s in value.split(",") if s]


def check_images(data: Path, sections: list[str], role: str) -> None:
    from emo.expression.her2st import Her2stLayout

    for s in sections:
        if not Her2stLayout(data).has_image(s):
            raise EmoError(f"{role} section {s}: no image {data / 'images' / f'{s}.jpg'} (nor {s}_lowres.png); its "
                           "regions have counts only and no tiles — choose sections with images (e.g. --train B4,C2 "
                           "--test C3,C4)")


def run(args: argparse.Namespace, t0: float) -> int:
    import torch

    from emo.panels import get_panel, read_gene_file

    torch.set_num_threads(min(2, torch.get_num_threads()))
    train, test = _sections(args.train), _sections(args.test)
    if overlap := set(train) & set(test):
        raise EmoError(f"sections {sorted(overlap)} are in both --train and --test; hold test sections out")
    check_images(args.data, train, "train")
    check_images(args.data, test, "test")
    eval_genes = read_gene_file(args.genes)
    prolif = get_panel("pam50_proliferation")
    genes = eval_genes + [g for g in prolif if g not in eval_genes]
    work = args.out / "work"

    targets, feature_dirs, spot_regions = build_region_study(args, train, test, genes, work, t0)
    result = fit_and_score(args, targets, feature_dirs, genes, eval_genes, work, t0)
    print(f"region model ({args.head}): test regions={result['n']} mean_rho={result['mean_rho']:.4f} "
          f"n_fdr05={result['n_fdr05']} prolif_rho={result['prolif_rho']:.3f} "
          f"lme_fdr05={result['lme_fdr05']} ({time.perf_counter() - t0:.0f}s)", flush=True)
    spot = ""
    if not args.no_spot_baseline:
        base = spot_baseline(args, train, test, genes, eval_genes, spot_regions, targets)
        print(f"spot model averaged into regions: mean_rho={base['mean_rho']:.4f} n_fdr05={base['n_fdr05']} "
              f"prolif_rho={base['prolif_rho']:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
        spot = f" spot_mean_rho={base['mean_rho']:.4f} spot_n_fdr05={base['n_fdr05']} spot_prolif_rho={base['prolif_rho']:.3f}"
    seconds = time.perf_counter() - t0
    print(f"wall time {seconds:.1f}s for {len(train)} train / {len(test)} test sections")
    print(f"RESULT mean_rho={result['mean_rho']:.4f} n_fdr05={result['n_fdr05']} "
          f"prolif_rho={result['prolif_rho']:.3f} seconds={seconds:.1f}{spot}")
    return 0


def build_region_study(args, train, test, genes, work: Path, t0: float):
    """targets.h5ad (regions × genes, split train/tune/test) and one feature store per region."""
    import anndata

    from emo.expression import read_her2st, region_pseudobulk
    from emo.io import atomic_path
    from emo.spot_models import SpotModelConfig, section_features

    sizes = tuple(float(v) for v in args.tile_sizes_um.split(","))
    config = SpotModelConfig(tile_sizes_um=sizes, backbone=args.backbone)
    name = f"{args.backbone}@{'+'.join(f'{s:g}' for s in sizes)}um" + ("" if args.no_section_standardize else "_sectionz")
    feature_dir, test_dir = work / "features" / name, work / "features_test" / name
    for folder in (feature_dir, test_dir):  # regions of an earlier run with other options must not mix in
        shutil.rmtree(folder, ignore_errors=True)
    identity = {"backbone": name, "weights": "default", "input_size": config.tile_px, "tile_sizes_um": list(sizes),
                "section_standardize": not args.no_section_standardize}
    rng = np.random.default_rng(args.seed)
    frames, obs, spot_regions = [], [], {}
    for section in train + test:
        adata = read_her2st(args.data, section)
        feats = section_features(adata, config, args.cache)
        if not args.no_section_standardize:
            feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
        expr, spot_region = region_pseudobulk(adata, genes, min_spots=args.min_spots)
        spot_regions[section] = spot_region
        if section in test:
            split = np.full(len(expr), "test", dtype=object)
        else:
            split = np.where(rng.random(len(expr)) < args.tune_fraction, "tune", "train").astype(object)
        grids = [(expr, spot_region, split)]
        if args.shifted_grids and section not in test:
            tune_spots = set(spot_region.index[spot_region.isin(expr.index[split == "tune"])])
            for offset in [(dx, dy) for dx in range(3) for dy in range(3) if (dx, dy) != (0, 0)]:
                e, r = region_pseudobulk(adata, genes, min_spots=args.min_spots, offset=offset)
                e = e.drop(index=r[r.index.isin(tune_spots)].unique())
                grids.append((e, r[r.isin(e.index)], np.full(len(e), "train", dtype=object)))
        for expr_g, spot_region_g, split_g in grids:
            folder = test_dir if section in test else feature_dir
            _write_region_stores(folder, adata, feats, expr_g, spot_region_g, sizes[0], {
                "backbone": name, "weights": "default", "input_size": config.tile_px, "dim": feats.shape[1],
                "backbone_json": json.dumps(identity, sort_keys=True)}, section)
            frames.append(expr_g)
            obs.append(pd.DataFrame({"slide_id": expr_g.index, "patient_id": section, "section": section,
                                     "cohort": "her2st", "split": split_g,
                                     "n_spots": spot_region_g.value_counts().reindex(expr_g.index).to_numpy()},
                                    index=expr_g.index))
        print(f"  {section}: {len(expr)} regions, {len(spot_region)} spots"
              f"{f', {sum(len(g[0]) for g in grids[1:])} shifted-grid regions' if len(grids) > 1 else ''} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    x = pd.concat(frames)
    o = pd.concat(obs)
    o.index.name = "sample_id"
    o["split"] = pd.Categorical(o["split"], categories=["train", "tune", "validation", "test"])
    targets = work / "targets.h5ad"
    with atomic_path(targets) as tmp:
        anndata.AnnData(x.to_numpy(np.float32), obs=o, var=pd.DataFrame(index=x.columns)).write_h5ad(tmp)
    return targets, (feature_dir, test_dir), spot_regions


def _write_region_stores(feature_dir: Path, adata, feats: np.ndarray, expr: pd.DataFrame, spot_region: pd.Series,
                         tile_um: float, attrs: dict, section: str) -> None:
    """One feature store per region: the rows of its spots' tiles (corners in image px and µm)."""
    from emo.expression.st_readers import SPATIAL_KEY
    from emo.features import write_feature_store

    mpp = adata.uns[SPATIAL_KEY]["mpp"]
    row = adata.obs_names.get_indexer(spot_region.index)
    corners = adata.obsm["spatial"][row] - tile_um / mpp / 2
    for region in expr.index:
        m = (spot_region == region).to_numpy()
        write_feature_store(feature_dir / f"{region}.h5", feats[row[m]], np.round(corners[m]), corners[m] * mpp,
                            list(spot_region.index[m]), {**attrs, "slide_id": region, "mpp": mpp,
                            "params_json": json.dumps({"tile_size_um": tile_um, "section": section})})


def _summary(table: pd.DataFrame, eval_genes: list[str], prolif_rho: float) -> dict:
    t = table.set_index("gene").reindex(eval_genes)
    return {"mean_rho": float(t["spearman_rho"].mean()), "n_fdr05": int((t["fdr_bh"] < 0.05).sum()),
            "prolif_rho": prolif_rho}


def fit_and_score(args, targets: Path, feature_dirs: tuple[Path, Path], genes, eval_genes, work: Path, t0: float) -> dict:
    """`emo train` → `emo predict` → regions.csv → `emo evaluate` and `emo analyze spatial-validation`."""
    import anndata

    from emo.analysis import evaluate
    from emo.analysis.roi_validation import spatial_validation
    from emo.io import write_table_atomic
    from emo.prediction import predict
    from emo.training import train_model

    feature_dir, test_dir = feature_dirs
    model = train_model(feature_dir, targets, work / f"model_{args.head}", head=args.head, genes=genes, seed=args.seed)
    print(f"  trained {args.head} ({time.perf_counter() - t0:.0f}s)", flush=True)
    average = predict(model, test_dir, work / f"predictions_{args.head}") / "average.h5ad"
    pred = anndata.read_h5ad(average).to_df()
    meas = anndata.read_h5ad(targets)
    test = meas.obs_names[meas.obs["split"] == "test"]
    regions = pred.loc[test, genes]
    regions.index.name = "region_id"
    write_table_atomic(args.out / "regions.csv", regions, index=True)
    table = evaluate(average, targets, "test", args.out / "evaluate", figures=False)
    summary = json.loads((args.out / "evaluate" / "summary.json").read_text())
    result = _summary(table, eval_genes, float(summary["proliferation"]["spearman_rho"]))
    measured = meas[test, genes].to_df()
    long = _roi_table(measured, regions, meas.obs.loc[test, "section"])
    lme = spatial_validation(long[long.gene.isin(eval_genes)], args.out / "spatial_validation", figures=False)
    return {**result, "n": len(test), "lme_fdr05": int((lme["fdr_bh"] < 0.05).sum())}


def _roi_table(measured: pd.DataFrame, predicted: pd.DataFrame, section: pd.Series) -> pd.DataFrame:
    """Long `slide_id, roi_id, gene, measured, predicted` table: sections are slides, regions are ROIs."""
    m = measured.stack().rename("measured")
    p = predicted.reindex_like(measured).stack().rename("predicted")
    long = pd.concat([m, p], axis=1).reset_index()
    long.columns = ["roi_id", "gene", "measured", "predicted"]
    long.insert(0, "slide_id", section.reindex(long["roi_id"]).to_numpy())
    return long


def spot_baseline(args, train, test, genes, eval_genes, spot_regions, targets: Path) -> dict:
    """Calibration: the spot-level model of benchmarks/her2st.py, its spot predictions averaged per region."""
    import anndata

    from emo.panels import get_panel
    from emo.analysis.evaluate import gene_table
    from emo.spot_models import SpotModelConfig, predict_section, score_spearman, train_spot_model

    config = SpotModelConfig(alpha=3.0, n_components=10, context_radius=1.5)
    model = train_spot_model(args.data, train, genes, config, exclude_from_basis=test, cache=args.cache)
    preds = []
    for s in test:
        pred, _ = predict_section(model, args.data, s, args.cache)
        region = spot_regions[s]
        preds.append(pred.loc[region.index].groupby(region.to_numpy()).mean())
    pred = pd.concat(preds)
    meas = anndata.read_h5ad(targets)
    measured = meas[pred.index, genes].to_df()
    table = gene_table(measured, pred[genes])
    prolif_rho, _ = score_spearman(pred, measured, get_panel("pam50_proliferation"))
    return _summary(table, eval_genes, prolif_rho)


if __name__ == "__main__":
    sys.exit(main())
