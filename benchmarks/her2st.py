"""Spot-level expression prediction on her2st: train on some sections, predict held-out sections.

    python benchmarks/her2st.py --data DIR --train B4,C2,C3 --test C4 --genes hist2st_785_genes.txt --out OUT

Writes OUT/<S>.csv (spots × genes of FILE + the 11 PAM50 proliferation genes, predicted normalised
log1p expression) and OUT/her2st_r.png, prints per test section mean/median Pearson r over the genes
of FILE, genes with r > 0, genes at BH-FDR < 0.05 and the Spearman ρ of the proliferation score
(mean of the 11 genes), and ends with one `RESULT` line (means over the test sections that have an
image). The peer for scale is the count-noise ceiling of r ≈ 0.40 (split-UMI halves) on these genes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

from emo.errors import EmoError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="her2st-layout folder (images/, counts/, spots/)")
    ap.add_argument("--train", required=True, help="comma-separated training sections (need images)")
    ap.add_argument("--test", required=True, help="comma-separated test sections")
    ap.add_argument("--genes", type=Path, required=True, help="gene list, one symbol per line")
    ap.add_argument("--out", type=Path, required=True, help="output folder for <S>.csv")
    ap.add_argument("--cache", type=Path, default=None, help="spot feature cache folder (default: the shared emo cache, $EMO_CACHE_DIR or ~/.cache/emo)")
    ap.add_argument("--tile-sizes-um", default="224,100,448", help="tile sizes around each spot, µm")
    ap.add_argument("--backbone", default="efficientnet_lite0_ms", help="frozen feature backbone")
    ap.add_argument("--alpha", type=float, default=3.0, help="ridge penalty per feature")
    ap.add_argument("--components", type=int, default=10, help="target principal components (0 = every gene)")
    ap.add_argument("--context-radius", type=float, default=1.5, help="neighbour radius in spot pitches (0 = off)")
    ap.add_argument("--no-section-standardize", action="store_true", help="keep raw feature scales per section")
    ap.add_argument("--finetune", action="store_true",
                    help="fine-tune one network for all genes end to end (emo.spot_models.finetune) instead")
    ap.add_argument("--finetune-options", default="",
                    help="FinetuneConfig overrides, e.g. 'max_epochs=4,steps_per_epoch=40,input_size=160,hed_jitter=0.05'")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        return run(args, t0)
    except EmoError as exc:
        print(f"her2st: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, t0: float) -> int:
    import torch

    from emo.io import write_table_atomic
    from emo.panels import get_panel, read_gene_file
    from emo.spot_models import SpotModelConfig, gene_correlations, predict_section, score_spearman, train_spot_model
    from emo.expression.her2st import Her2stLayout
    from emo.spot_models.targets import spot_targets

    torch.set_num_threads(min(2, torch.get_num_threads()))
    eval_genes = read_gene_file(args.genes)
    prolif = get_panel("pam50_proliferation")
    genes = eval_genes + [g for g in prolif if g not in eval_genes]
    train = [s for s in args.train.split(",") if s]
    test = [s for s in args.test.split(",") if s]
    if overlap := set(train) & set(test):
        raise EmoError(f"sections {sorted(overlap)} are in both --train and --test; hold test sections out")
    runnable = []
    for s in test:
        if not Her2stLayout(args.data).has_image(s):
            print(f"{s}: SKIPPED — no image in {args.data / 'images'} (counts only), cannot predict its spots")
        else:
            runnable.append(s)
    if not runnable:
        raise EmoError(f"none of the test sections {test} has an image in {args.data / 'images'}")
    if args.finetune:
        return run_finetune(args, t0, train, runnable, genes, eval_genes, prolif)
    config = SpotModelConfig.build(
        tile_sizes_um=tuple(float(v) for v in args.tile_sizes_um.split(",")), backbone=args.backbone, alpha=args.alpha,
        n_components=args.components or None, context_radius=args.context_radius,
        section_standardize=not args.no_section_standardize)
    print(f"config: {config}")
    model = train_spot_model(args.data, train, genes, config, exclude_from_basis=test, cache=args.cache)
    print(f"trained on {','.join(train)}; target basis from {len(model.meta['basis_sections'])} count sections "
          f"({time.perf_counter() - t0:.0f}s)")
    rows = []
    for s in runnable:
        pred, adata = predict_section(model, args.data, s, args.cache)
        write_table_atomic(args.out / f"{s}.csv", pred, index=True)
        measured = spot_targets(adata, genes)
        table = gene_correlations(pred[eval_genes].to_numpy(), measured[:, : len(eval_genes)], eval_genes)
        rho, _ = score_spearman(pred, _frame(measured, adata.obs_names, genes), prolif)
        rows.append((s, table, rho))
        print(f"{s}: spots={len(pred)} mean_r={table.r.mean():.4f} median_r={table.r.median():.4f} "
              f"genes_r>0={(table.r > 0).sum()}/{len(table)} genes_fdr<0.05={(table.fdr_bh < 0.05).sum()} "
              f"prolif_spearman={rho:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    _plot(rows, args.out / "her2st_r.png")
    seconds = time.perf_counter() - t0
    mean_r = np.mean([t.r.mean() for _, t, _ in rows])
    median_r = np.mean([t.r.median() for _, t, _ in rows])
    n_fdr = np.mean([(t.fdr_bh < 0.05).sum() for _, t, _ in rows])
    print(f"wall time {seconds:.1f}s for {len(train)} train / {len(rows)} test sections (ceiling: count noise r≈0.40)")
    print(f"RESULT mean_r={mean_r:.4f} median_r={median_r:.4f} n_fdr05={n_fdr:.1f} seconds={seconds:.1f}")
    return 0


def run_finetune(args, t0, train, test, genes, eval_genes, prolif) -> int:
    """The same evaluation for the end-to-end network: 224 µm spot tiles, spot targets, tuning spots."""
    from emo.expression import read_her2st
    from emo.io import write_table_atomic
    from emo.spot_models import gene_correlations, score_spearman
    from emo.models import load
    from emo.spot_models import predict_section
    from emo.spot_models.finetune import train_spot_finetune
    from emo.spot_models.targets import spot_targets
    from emo.training.finetune import FinetuneConfig

    import json

    overrides = {k: json.loads(v) for k, v in (kv.split("=") for kv in args.finetune_options.split(",") if kv)}
    config = FinetuneConfig(**overrides)
    print(f"finetune: {config}")
    model = load(train_spot_finetune(args.data, train, genes, args.out / "finetune_model", config, cache=args.cache))
    print(f"trained on {','.join(train)} ({time.perf_counter() - t0:.0f}s)", flush=True)
    rows = []
    for s in test:
        pred, _ = predict_section(model, args.data, s, args.cache)
        write_table_atomic(args.out / f"{s}.csv", pred, index=True)
        measured = spot_targets(read_her2st(args.data, s), genes)
        table = gene_correlations(pred[eval_genes].to_numpy(), measured[:, : len(eval_genes)], eval_genes)
        rho, _ = score_spearman(pred, _frame(measured, pred.index, genes), prolif)
        rows.append((s, table, rho))
        print(f"{s}: spots={len(pred)} mean_r={table.r.mean():.4f} median_r={table.r.median():.4f} "
              f"genes_fdr<0.05={(table.fdr_bh < 0.05).sum()} prolif_spearman={rho:.3f} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    _plot(rows, args.out / "her2st_r.png")
    seconds = time.perf_counter() - t0
    print(f"RESULT mean_r={np.mean([t.r.mean() for _, t, _ in rows]):.4f} "
          f"median_r={np.mean([t.r.median() for _, t, _ in rows]):.4f} "
          f"n_fdr05={np.mean([(t.fdr_bh < 0.05).sum() for _, t, _ in rows]):.1f} seconds={seconds:.1f}")
    return 0


def _frame(values, index, columns):
    import pandas as pd

    return pd.DataFrame(values, index=index, columns=columns)


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for s, table, _ in rows:
        ax.hist(table.r, bins=40, histtype="step", label=f"{s} (mean {table.r.mean():.3f})")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("Pearson r per gene (held-out section)")
    ax.set_ylabel("genes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
