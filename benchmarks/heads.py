"""All-gene ridge head: 17,695 genes x 1,000 slides x 1,024-dim features on CPU.

Times `emo.models.fit_ridge_path` (standardisation, one eigendecomposition, 15 penalties evaluated on
the tuning split with the best penalty chosen per gene) and, in the same run, scikit-learn's
`Ridge` with a single penalty over all genes (multi-output solve) as the peer. Synthetic data: slide
features with a low-rank signal, genes mixing it with noise.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--genes", type=int, default=17_695)
    ap.add_argument("--slides", type=int, default=1_000)
    ap.add_argument("--dim", type=int, default=1_024)
    ap.add_argument("--tune-fraction", type=float, default=0.2)
    args = ap.parse_args()

    from sklearn.linear_model import Ridge

    from emo.models.heads import fit_ridge_path

    rng = np.random.default_rng(0)
    latent = rng.normal(size=(args.slides, 32))
    x = (latent @ rng.normal(size=(32, args.dim)) + rng.normal(size=(args.slides, args.dim))).astype(np.float32)
    y = (latent @ rng.normal(size=(32, args.genes)) * rng.uniform(0, 0.3, args.genes)
         + rng.normal(size=(args.slides, args.genes))).astype(np.float32)
    n_tune = int(args.slides * args.tune_fraction)
    x_tr, y_tr, x_tu, y_tu = x[n_tune:], y[n_tune:], x[:n_tune], y[:n_tune]
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cpus={os.cpu_count()}")
    print(f"data: {len(x_tr)} train + {n_tune} tune slides x {args.dim} features, {args.genes} genes")

    t0 = time.perf_counter()
    fit = fit_ridge_path(x_tr, y_tr, x_tu, y_tu)
    ours = time.perf_counter() - t0
    print(f"emo ridge path ({len(fit.alphas)} alphas, per-gene choice): {ours:.2f} s, "
          f"{args.genes / ours:.0f} genes/s; median alpha {np.median(fit.alpha):.3g}")

    t0 = time.perf_counter()
    Ridge(alpha=float(np.median(fit.alpha))).fit(x_tr, y_tr)
    peer = time.perf_counter() - t0
    print(f"sklearn Ridge (1 alpha, all genes): {peer:.2f} s; per alpha emo costs "
          f"{ours / len(fit.alphas) / peer:.2f}x sklearn")
    print(f"RESULT seconds={ours:.2f} genes_per_s={args.genes / ours:.0f} ratio_to_sklearn={ours / peer:.2f}")


if __name__ == "__main__":
    main()
