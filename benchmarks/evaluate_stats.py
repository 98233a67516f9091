"""Vectorised per-gene statistics of `emo evaluate` vs the per-gene scipy/sklearn loop they replace.

Measures both on the same synthetic samples × genes matrices (ties included) and checks they agree.
Usage: python benchmarks/evaluate_stats.py [--samples 400] [--genes 2000] [--full-genes 17695]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats as sps
from sklearn.metrics import r2_score

from emo.analysis import stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--genes", type=int, default=2000, help="genes for the head-to-head comparison")
    ap.add_argument("--full-genes", type=int, default=17695, help="genes for the full-size timing (paper: 17,695)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    measured = np.round(rng.normal(size=(args.samples, args.full_genes)), 1)
    predicted = np.round(0.5 * measured + rng.normal(size=measured.shape), 1)
    m, p = measured[:, : args.genes], predicted[:, : args.genes]

    t0 = time.perf_counter()
    rho, pv = stats.spearman(m, p)
    r2 = stats.r2_score(m, p)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = [sps.spearmanr(m[:, j], p[:, j]) for j in range(args.genes)]
    ref_r2 = [r2_score(m[:, j], p[:, j]) for j in range(args.genes)]
    loop = time.perf_counter() - t0
    err = max(np.max(np.abs(rho - [r.statistic for r in ref])), np.max(np.abs(r2 - ref_r2)))
    assert err < 1e-10, err

    t0 = time.perf_counter()
    stats.spearman(measured, predicted)
    stats.r2_score(measured, predicted)
    full = time.perf_counter() - t0
    print(f"{args.genes} genes × {args.samples} samples: vectorised {ours:.3f}s, per-gene scipy/sklearn {loop:.3f}s")
    print(f"{args.full_genes} genes: vectorised {full:.3f}s")
    print(f"RESULT speedup={loop / ours:.1f} vectorised_s={ours:.4f} loop_s={loop:.4f} full_genes_s={full:.3f} max_abs_diff={err:.2e}")


if __name__ == "__main__":
    main()
