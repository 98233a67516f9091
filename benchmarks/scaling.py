"""Scale-out of emo's two embarrassingly parallel loops: feature extraction (slides) and per-gene
training (genes), on the local executor with 1 and 2 workers and on a local Ray cluster.

Real work only: tiles are cut from real H&E (CMU-1-Small-Region), features come from the default
backbone (`emo.models.create_backbone`), and each gene trains a small torch head with Adam on those
features. Each worker runs torch single-threaded, so the ratios show process-level scaling. Every
executor maps the work twice: the first (cold) call pays worker start-up (spawning, importing torch,
loading the backbone), the second (warm) is the throughput the ratios are computed from. Ends with
the projected cost of the paper's cohort (7.28 M tiles, 17,695 genes; the paper: ~300,000 GPU hours).

    python benchmarks/scaling.py [--items 8] [--tiles-per-item 16] [--genes 16] [--steps 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

PAPER_TILES = 7.28e6
PAPER_GENES = 17_695
PAPER_GPU_HOURS = 300_000

_BACKBONE = {}


def extract(batch: np.ndarray) -> np.ndarray:
    """uint8 tiles [k, s, s, 3] → features [k, dim] with the default backbone (cached per process)."""
    import torch

    from emo.models import create_backbone

    torch.set_num_threads(1)
    if "model" not in _BACKBONE:
        _BACKBONE["model"] = create_backbone()
    model = _BACKBONE["model"]
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(model.mean)[:, None, None]) / torch.tensor(model.std)[:, None, None]
    with torch.inference_mode():
        return model(x).numpy()


def train_gene(job: tuple[np.ndarray, np.ndarray, int]) -> float:
    """One gene: a 2-layer head trained with Adam on real features; returns the final training MSE."""
    import torch

    features, target, steps = job
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.from_numpy(features), torch.from_numpy(target)
    head = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(head(x).squeeze(1), y)
        loss.backward()
        opt.step()
    return float(loss.detach())


def real_tiles(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n tissue tiles of size px from the real H&E slide, at random tissue positions."""
    import openslide

    from emo.demo import find_source_slide

    slide = openslide.OpenSlide(str(find_source_slide()))
    image = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    rng = np.random.default_rng(seed)
    tiles = []
    while len(tiles) < n:
        y, x = rng.integers(0, image.shape[0] - size), rng.integers(0, image.shape[1] - size)
        tile = image[y : y + size, x : x + size]
        if (tile.mean(axis=2) < 215).mean() > 0.5:
            tiles.append(tile)
    return np.stack(tiles)


def timed(executor, fn, items, desc):
    """(cold seconds, warm seconds, warm results): the same map twice on the same executor."""
    times, out = [], None
    for _ in range(2):
        start = time.perf_counter()
        out = executor.map(fn, items, desc=desc)
        times.append(time.perf_counter() - start)
    return times[0], times[1], out


def main() -> None:
    from emo.executors import get_executor
    from emo.models import create_backbone

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=8, help="feature batches (stand-in for slides)")
    ap.add_argument("--tiles-per-item", type=int, default=16)
    ap.add_argument("--genes", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300, help="Adam steps per gene")
    args = ap.parse_args()

    size = create_backbone().input_size
    tiles = real_tiles(args.items * args.tiles_per_item, size)
    batches = list(tiles.reshape(args.items, args.tiles_per_item, size, size, 3))

    runs = {"local1": get_executor("local", workers=1, progress=False), "local2": get_executor("local", workers=2, progress=False)}
    t0 = time.perf_counter()
    runs["ray"] = get_executor("ray", cluster_cpus=2, progress=False)
    ray_start = time.perf_counter() - t0

    feat_s, feats, cold = {}, {}, {}
    for name, ex in runs.items():
        cold[name], feat_s[name], out = timed(ex, extract, batches, f"features ({name})")
        feats[name] = np.concatenate(out)
    for name in ("local2", "ray"):
        assert np.allclose(feats[name], feats["local1"], atol=1e-5), f"{name} features differ from local"
    features = feats["local1"]

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((features.shape[1], args.genes)).astype(np.float32) / np.sqrt(features.shape[1])
    targets = (features @ weights + 0.1 * rng.standard_normal((len(features), args.genes))).astype(np.float32)
    jobs = [(features, targets[:, g].copy(), args.steps) for g in range(args.genes)]
    train_s, losses = {}, {}
    for name, ex in runs.items():
        _, train_s[name], losses[name] = timed(ex, train_gene, jobs, f"genes ({name})")
    for name in ("local2", "ray"):
        assert np.allclose(losses[name], losses["local1"], rtol=1e-4), f"{name} training differs from local"
    for ex in runs.values():
        ex.close()

    n_tiles = len(tiles)
    tile_s = feat_s["local1"] / n_tiles  # one core, in-process: the per-tile cost
    gene_s = train_s["local1"] / args.genes
    for label, secs, unit in (("features", feat_s, f"{n_tiles} tiles"), ("training", train_s, f"{args.genes} genes")):
        print(f"{label} ({unit}): " + ", ".join(f"{k} {v:.2f}s (x{secs['local1'] / v:.2f})" for k, v in secs.items()))
    print("first (cold) feature call: " + ", ".join(f"{k} {v:.2f}s" for k, v in cold.items()))
    print(f"ray cluster start: {ray_start:.1f}s; per tile {tile_s * 1e3:.1f} ms, per gene {gene_s:.2f} s ({args.steps} steps, 1 core)")
    paper_feat_h = tile_s * PAPER_TILES / 3600
    paper_gene_h = gene_s * PAPER_GENES / 3600
    print(
        f"paper cohort ({PAPER_TILES / 1e6:.2f} M tiles, {PAPER_GENES} genes): features {paper_feat_h:,.0f} core-h "
        f"+ per-gene heads {paper_gene_h:,.0f} core-h on this CPU, vs ~{PAPER_GPU_HOURS:,} GPU-h for per-gene CNNs"
    )
    print(
        "RESULT "
        + " ".join(f"features_{k}_s={v:.2f}" for k, v in feat_s.items())
        + " " + " ".join(f"train_{k}_s={v:.2f}" for k, v in train_s.items())
        + f" features_speedup_local2={feat_s['local1'] / feat_s['local2']:.2f} features_speedup_ray={feat_s['local1'] / feat_s['ray']:.2f}"
        + f" train_speedup_local2={train_s['local1'] / train_s['local2']:.2f} train_speedup_ray={train_s['local1'] / train_s['ray']:.2f}"
        + " " + " ".join(f"features_cold_{k}_s={v:.2f}" for k, v in cold.items())
        + f" ray_start_s={ray_start:.1f} paper_features_core_h={paper_feat_h:.0f} paper_train_core_h={paper_gene_h:.0f}"
        + f" paper_gpu_h={PAPER_GPU_HOURS}"
    )


if __name__ == "__main__":
    main()
