"""Compute for the paper's cohort: the default path (one backbone pass + all-gene head) vs the paper protocol.

Throughputs are measured in this run: EfficientNet-Lite0 inference (default path), Inception V3
inference and one Inception V3 training step at batch 32, 299 px (paper protocol), and a closed-form
ridge over all genes. The paper protocol is costed at its upper bound per gene: 500 epochs × 150
steps × 32 tiles of training plus 500 tuning passes of 313 batches × 32 tiles. On CPU, GPU-hours are
V100-equivalents: every CPU throughput is scaled by one factor that maps the measured Inception V3
training throughput onto an assumed V100 figure (`--v100-train-tiles-per-s`, default 250 tiles/s:
fp32, batch 32, 299 px), so a busy or slow CPU changes neither the speedup nor the GPU-hours much.
With `--device cuda` the lent GPU is measured directly (factor 1). Rates measured elsewhere on a GPU
replace the assumption: `--measured-train-tiles-per-s` (Inception V3 training, batch 32, 299 px, e.g.
from this script's own `--device cuda` run) sets the factor, and `--measured-extract-tiles-per-s`
(end-to-end `emo features` tiles/s with the loader, `tiles_per_s` of `benchmarks/features.py
--device cuda`) costs the default path directly; `--gpu-name` labels them.

    python benchmarks/cost_model.py [--device cpu|cuda] [--v100-train-tiles-per-s 250]
        [--measured-train-tiles-per-s R --measured-extract-tiles-per-s E --gpu-name H200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from emo.models import create_backbone

N_TILES = 7_280_000  # tiles in the paper's cohort
N_GENES = 17_695
PAPER_GPU_HOURS = 300_000  # the paper's own estimate
EPOCHS, STEPS, BATCH, TUNE_BATCHES = 500, 150, 32, 313
N_SLIDES, RIDGE_DIM = 1_000, 1280


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def inference_tiles_per_s(name: str, device: str, batch: int, repeats: int) -> float:
    model = create_backbone(name, "none").to(device)
    x = torch.randn(batch, 3, model.input_size, model.input_size, device=device)
    amp = torch.autocast("cuda", dtype=torch.float16, enabled=device == "cuda")
    with torch.inference_mode(), amp:
        model(x[: 4 if device == "cpu" else batch])  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
        _sync(device)
    return batch * repeats / (time.perf_counter() - start)


def train_step_seconds(device: str, repeats: int) -> float:
    """One paper-protocol step: Inception V3 + 1 linear output, MSE, Adam, batch 32 at 299 px."""
    backbone = create_backbone("inception_v3", "none").to(device).train()
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.dim, 1)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    x, y = torch.randn(BATCH, 3, 299, 299, device=device), torch.randn(BATCH, 1, device=device)

    def step(n: int = BATCH) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=device == "cuda"):
            loss = torch.nn.functional.mse_loss(model(x[:n]).float(), y[:n])
        loss.backward()
        opt.step()

    step(4 if device == "cpu" else BATCH)  # warm-up (allocations, autotuning)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def ridge_all_genes_seconds() -> float:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_SLIDES, RIDGE_DIM), dtype=np.float32)
    y = rng.standard_normal((N_SLIDES, N_GENES), dtype=np.float32)
    start = time.perf_counter()
    gram = x.T @ x
    np.linalg.solve(gram + 10.0 * np.eye(RIDGE_DIM, dtype=np.float32), x.T @ y)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--v100-train-tiles-per-s", type=float, default=250.0,
                        help="assumed V100 Inception V3 training throughput that CPU numbers are scaled to")
    parser.add_argument("--measured-train-tiles-per-s", type=float, default=None,
                        help="Inception V3 training tiles/s measured on a GPU; replaces the assumed V100 figure")
    parser.add_argument("--measured-extract-tiles-per-s", type=float, default=None,
                        help="end-to-end feature extraction tiles/s measured on a GPU (loader included)")
    parser.add_argument("--gpu-name", default="the measured GPU", help="label of the GPU the measured rates come from")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    reps = args.repeats or (20 if cuda else 1)

    lite0 = inference_tiles_per_s("efficientnet_lite0", args.device, 64 if cuda else 32, reps)
    incv3_inf = inference_tiles_per_s("inception_v3", args.device, 64 if cuda else 16, reps)
    step_s = train_step_seconds(args.device, reps)
    ridge_s = ridge_all_genes_seconds()
    measured = args.measured_train_tiles_per_s is not None
    train_rate = args.measured_train_tiles_per_s if measured else args.v100_train_tiles_per_s
    factor = 1.0 if cuda else train_rate / (BATCH / step_s)
    gpu = (torch.cuda.get_device_name(0) if cuda else
           f"{args.gpu_name if measured else 'V100'} = {factor:.0f}× this CPU ({torch.get_num_threads()} threads), "
           f"from {'a measured' if measured else 'an assumed'} {train_rate:g} tiles/s Inception V3 training")

    if args.measured_extract_tiles_per_s:  # measured end to end on the GPU: no scaling
        default_h = (N_TILES / args.measured_extract_tiles_per_s + ridge_s) / 3600
    else:
        default_h = (N_TILES / lite0 / factor + ridge_s) / 3600  # ridge: CPU seconds, counted unscaled
    per_gene_train = EPOCHS * STEPS * step_s
    per_gene_tune = EPOCHS * TUNE_BATCHES * BATCH / incv3_inf
    paper_h = N_GENES * (per_gene_train + per_gene_tune) / factor / 3600

    print(f"measured on {args.device}; GPU-hours assume {gpu}")
    print(f"  EfficientNet-Lite0 inference   {lite0:10.1f} tiles/s")
    print(f"  Inception V3 inference         {incv3_inf:10.1f} tiles/s")
    print(f"  Inception V3 train step (b=32) {step_s:10.3f} s  ({BATCH / step_s:.1f} tiles/s)")
    print(f"  ridge, {N_GENES} genes at once    {ridge_s:10.2f} s  ({N_SLIDES} slides × {RIDGE_DIM} features)")
    print(f"{'':34}{'default path':>16}{'paper protocol':>18}")
    print(f"{'backbone passes over the cohort':34}{1:>16}{f'{N_GENES} × ≤{EPOCHS}':>18}")
    print(f"{'tiles through a CNN (training)':34}{0:>16.3g}{N_GENES * EPOCHS * STEPS * BATCH:>18.3g}")
    print(f"{'tiles through a CNN (inference)':34}{N_TILES:>16.3g}{N_GENES * EPOCHS * TUNE_BATCHES * BATCH:>18.3g}")
    print(f"{'GPU-hours (modelled, upper bound)':34}{default_h:>16.1f}{paper_h:>18.0f}")
    print(f"{'GPU-hours (paper reported)':34}{'':>16}{PAPER_GPU_HOURS:>18,}")
    print(f"speedup: {paper_h / default_h:,.0f}× vs the modelled protocol, "
          f"{PAPER_GPU_HOURS / default_h:,.0f}× vs the paper's reported {PAPER_GPU_HOURS:,} GPU-h")
    print(f"RESULT speedup_vs_paper={paper_h / default_h:.0f} default_gpu_hours={default_h:.2f} "
          f"paper_gpu_hours={paper_h:.0f} rate={'measured' if measured or cuda else 'assumed'}")


if __name__ == "__main__":
    main()
