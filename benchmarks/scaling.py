"""Scale-out of emo's embarrassingly parallel loops, measured on the real stage functions:
`tile_slides` over real slides, `extract_features` over their tiles, and `train_paper_protocol` over
genes — each on the local executor with 1 and 2 workers and on a local Ray cluster (2 CPUs).

Slides are copies (symlinks) of the real H&E slide CMU-1-Small-Region; features come from the
default backbone (EfficientNet-Lite0, real weights); genes train the paper protocol's per-gene CNN
(a small backbone and few steps by default: `--backbone torchvision:inception_v3 --input-size 299`
for the paper's). Every call includes what a real stage pays (spawning workers or Ray tasks,
loading the model). Each executor's outputs are checked equal to local 1-worker's. Ends with the
projected cost of the paper's cohort (7.28 M tiles, 17,695 genes, protocol at its upper bound of
500 epochs × 150 steps + 313 tuning batches per epoch) from the per-unit costs measured here.

At the default (small) sizes a local pool pays its start-up (spawning processes that import torch,
seconds each) in every stage call, while Ray's workers stay warm across stages; grow --slides,
--genes and --steps to see the per-item scaling. Features "local1" is one process with in-process
tile reading (torch's own threads), "local2" adds 2 loader processes.

    python benchmarks/scaling.py [--slides 4] [--genes 4] [--steps 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

PAPER_TILES = 7.28e6
PAPER_GENES = 17_695
PAPER_EPOCHS, PAPER_STEPS, PAPER_BATCH, PAPER_TUNE_BATCHES = 500, 150, 32, 313
PAPER_GPU_HOURS = 300_000


def write_targets(path: Path, slide_ids: list[str], genes: list[str]) -> Path:
    import anndata
    import pandas as pd

    half = len(slide_ids) // 2
    obs = pd.DataFrame({"patient_id": slide_ids, "cohort": "bench", "slide_id": slide_ids,
                        "split": ["train"] * half + ["tune"] * (len(slide_ids) - half)},
                       index=pd.Index([f"P{s}" for s in slide_ids], name="sample_id"))
    y = np.random.default_rng(0).normal(size=(len(slide_ids), len(genes))).astype(np.float32)
    anndata.AnnData(X=y, obs=obs, var=pd.DataFrame(index=pd.Index(genes, name="gene"))).write_h5ad(path)
    return path


def store_arrays(folder: Path, key: str) -> dict[str, np.ndarray]:
    import h5py

    out = {}
    for p in sorted(folder.glob("*.h5")):
        with h5py.File(p, "r") as f:
            out[p.stem] = f[key][...]
    return out


def gene_losses(model_dir: Path) -> dict[str, list[float]]:
    import pandas as pd

    return {d.name: pd.read_csv(d / "history.csv")["tune_loss"].tolist() for d in sorted((model_dir / "genes").iterdir())}


def main() -> None:
    from emo.demo import find_source_slide
    from emo.executors import get_executor
    from emo.features import extract_features
    from emo.features.config import ExtractionConfig
    from emo.slides import TilingConfig, tile_slides
    from emo.training.paper import PaperProtocolConfig, train_paper_protocol

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--genes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="paper-protocol steps per epoch (2 epochs)")
    ap.add_argument("--backbone", default="timm:resnet10t", help="paper-protocol CNN")
    ap.add_argument("--input-size", type=int, default=128)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="emo-scaling-"))
    source = find_source_slide()
    slides = []
    for k in range(args.slides):
        slides.append(tmp / "slides" / f"S{k}.svs")
        slides[-1].parent.mkdir(exist_ok=True)
        slides[-1].symlink_to(source)
    tiling = TilingConfig(tile_size_um=100, target_mpp=1.0)
    genes = [f"G{g}" for g in range(args.genes)]
    targets = write_targets(tmp / "targets.h5ad", [s.stem for s in slides], genes)
    protocol = PaperProtocolConfig(backbone=args.backbone, weights="none", input_size=args.input_size, batch_size=8,
                                   steps_per_epoch=args.steps, tuning_batches=1, max_epochs=2, keep_best=1, keep_random=0)

    t0 = time.perf_counter()
    ray = get_executor("ray", cluster_cpus=2, progress=False)
    ray_start = time.perf_counter() - t0
    runs = {"local1": dict(workers=1), "local2": dict(workers=2), "ray": dict(executor=ray)}
    secs: dict[str, dict[str, float]] = {"tiling": {}, "features": {}, "genes": {}}
    outputs: dict[str, dict[str, object]] = {"tiling": {}, "features": {}, "genes": {}}
    for name, kw in runs.items():
        out = tmp / name
        start = time.perf_counter()
        summary = tile_slides(slides, out / "tiles", tiling, **kw)
        secs["tiling"][name] = time.perf_counter() - start
        assert (summary["status"] == "ok").all(), summary["error"].tolist()
        outputs["tiling"][name] = store_arrays(out / "tiles", "coords_px")

        # features: local = one process with 0 (1 worker) or 2 loader processes; ray = slide jobs
        fkw = {"workers": 0} if name == "local1" else {"workers": 2} if name == "local2" else \
            {"workers": 0, "slides_per_job": max(1, args.slides // 2)}
        start = time.perf_counter()
        folder = extract_features(out / "tiles", out / "features", ExtractionConfig(batch_size=32, **fkw), progress=False,
                                  executor=ray if name == "ray" else None)
        secs["features"][name] = time.perf_counter() - start
        outputs["features"][name] = store_arrays(folder, "features")

        start = time.perf_counter()
        train_paper_protocol(out / "tiles", targets, out / "model", None, protocol, **kw)
        secs["genes"][name] = time.perf_counter() - start
        outputs["genes"][name] = gene_losses(out / "model")
    ray.close()
    for stage, by_run in outputs.items():
        for name in ("local2", "ray"):
            ref, got = by_run["local1"], by_run[name]
            same = ref.keys() == got.keys() and all(np.array_equal(ref[k], got[k]) for k in ref)
            assert same, f"{stage} on {name} differs from local1"

    n_tiles = sum(len(v) for v in outputs["tiling"]["local1"].values())
    for stage, by_run in secs.items():
        unit = f"{args.slides} slides" if stage == "tiling" else f"{n_tiles} tiles" if stage == "features" else f"{args.genes} genes"
        print(f"{stage} ({unit}): " + ", ".join(f"{k} {v:.2f}s (x{by_run['local1'] / v:.2f})" for k, v in by_run.items()))
    print(f"ray cluster start {ray_start:.1f}s; outputs identical across executors")

    # per-unit costs on one local worker (start-up included, so these are upper bounds)
    tile_s = secs["tiling"]["local1"] / n_tiles
    feat_s = secs["features"]["local1"] / n_tiles
    step_s = secs["genes"]["local1"] / (args.genes * 2 * (args.steps + 1))  # 2 epochs of steps + 1 tuning batch
    paper_steps = PAPER_EPOCHS * (PAPER_STEPS + PAPER_TUNE_BATCHES) * PAPER_BATCH / protocol.batch_size
    core_h = {"tiling": tile_s * PAPER_TILES / 3600, "features": feat_s * PAPER_TILES / 3600,
              "paper_protocol": step_s * paper_steps * PAPER_GENES / 3600}
    print(f"paper cohort on this CPU, 1 core each ({args.backbone} at {args.input_size}px for the per-gene CNNs; "
          f"benchmarks/cost_model.py costs Inception V3): tiling {core_h['tiling']:,.0f} core-h, default-path features "
          f"{core_h['features']:,.0f} core-h, per-gene protocol {core_h['paper_protocol']:,.0f} core-h "
          f"(the paper: ~{PAPER_GPU_HOURS:,} GPU-h)")
    print(
        "RESULT "
        + " ".join(f"{stage}_{k}_s={v:.2f}" for stage, by_run in secs.items() for k, v in by_run.items())
        + " " + " ".join(f"{stage}_speedup_{k}={by_run['local1'] / by_run[k]:.2f}" for stage, by_run in secs.items() for k in ("local2", "ray"))
        + f" ray_start_s={ray_start:.1f}"
        + " " + " ".join(f"paper_{k}_core_h={v:.0f}" for k, v in core_h.items())
    )


if __name__ == "__main__":
    main()
