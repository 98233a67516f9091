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

`--soak` is the scale soak instead: demo cohorts (`emo.demo`, real H&E mosaics of 2 × 3 regions,
≈ 20 tiles each) of N = 10, 100 and 1,000 pseudo-slides through the demo study's tile → features →
expression → train → predict → evaluate stages, each stage in a fresh process (`--soak-stage`) so its
peak RSS (VmHWM) is its own. Features use EfficientNet-Lite0 with seeded random weights at
96 px (memory and time scale as with real ones; no download). Per stage it prints seconds per slide
(stage call only, imports excluded; wall and CPU) and peak RSS; the RESULT line gives the worst
stage's N=1000/N=100 ratios (goal ≤ 1.2: flat), time in CPU seconds (wall time on a shared machine
measures its load too).

    python benchmarks/scaling.py --soak [--sizes 10,100,1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
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


SOAK_STAGES = ("tile", "features", "expression", "train", "predict", "evaluate")


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (Linux's ru_maxrss survives fork + exec, so a child would report its parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def soak_stage(stage: str, study: Path) -> None:
    """Run one stage of the study in this process; print its seconds and peak RSS as JSON."""
    from emo.run import load_study, pipeline
    from emo.run.runner import StudyContext

    config = load_study(study)
    before = _peak_rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    getattr(pipeline, f"run_{stage}")(StudyContext(config=config, out_dir=config.out_dir))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _peak_rss_mb()
    print("SOAK " + json.dumps({"stage": stage, "seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak, "import_mb": before}),
          flush=True)


def soak(sizes: list[int]) -> None:

    import yaml

    from emo.demo import make_demo_cohort

    root = Path(tempfile.mkdtemp(prefix="emo-soak-"))
    rows: dict[int, dict[str, dict]] = {}
    for n in sizes:
        t0 = time.perf_counter()
        paths = make_demo_cohort(root / str(n), n_slides=n, grid=(2, 3), n_noise_genes=40)
        study = yaml.safe_load(paths["study"].read_text())
        study["features"].update({"weights": "none", "input_size": 96})
        study["evaluation"]["null_baseline"] = False
        paths["study"].write_text(yaml.safe_dump(study, sort_keys=False))
        print(f"N={n}: cohort made in {time.perf_counter() - t0:.0f}s", flush=True)
        rows[n] = {}
        for stage in SOAK_STAGES:
            done = subprocess.run([sys.executable, __file__, "--soak-stage", stage, "--study", str(paths["study"])],
                                  capture_output=True, text=True)
            line = next((x for x in done.stdout.splitlines() if x.startswith("SOAK ")), None)
            if done.returncode or line is None:
                raise SystemExit(f"N={n} stage {stage} failed:\n{done.stderr[-3000:]}")
            r = json.loads(line[5:])
            rows[n][stage] = r
            print(f"N={n} {stage:10s} {r['seconds'] / n * 1000:8.1f} ms/slide ({r['cpu_seconds'] / n * 1000:8.1f} CPU) "
                  f"peak RSS {r['peak_mb']:7.0f} MB "
                  f"(+{r['peak_mb'] - r['import_mb']:.0f} MB over imports)", flush=True)
    big, small = (sizes[-1], sizes[-2]) if len(sizes) > 1 else (sizes[0], sizes[0])
    rss = {s: rows[big][s]["peak_mb"] / rows[small][s]["peak_mb"] for s in SOAK_STAGES}
    def ratio(key: str) -> dict[str, float]:
        return {s: (rows[big][s][key] / big) / (rows[small][s][key] / small) for s in SOAK_STAGES}

    # CPU seconds (all threads of the stage's process) are the time ratio: wall time on a shared, loaded
    # machine measures the neighbours as much as emo; the wall ratio is printed beside it
    per_slide, wall = ratio("cpu_seconds"), ratio("seconds")
    print(f"ratios N={big} vs N={small}: "
          + ", ".join(f"{s} rss {rss[s]:.2f} cpu/slide {per_slide[s]:.2f} wall/slide {wall[s]:.2f}" for s in SOAK_STAGES))
    worst_rss, worst_s = max(rss, key=rss.get), max(per_slide, key=per_slide.get)
    print(f"RESULT rss_ratio_{big}_vs_{small}={rss[worst_rss]:.2f} s_per_slide_ratio_{big}_vs_{small}={per_slide[worst_s]:.2f} "
          f"wall_s_per_slide_ratio_{big}_vs_{small}={max(wall.values()):.2f} worst_rss_stage={worst_rss} worst_time_stage={worst_s} "
          + " ".join(f"{s}_cpu_s_per_slide_{n}={rows[n][s]['cpu_seconds'] / n:.4f}" for n in sizes for s in SOAK_STAGES)
          + " " + " ".join(f"{s}_peak_mb_{n}={rows[n][s]['peak_mb']:.0f}" for n in sizes for s in SOAK_STAGES))
    shutil.rmtree(root)  # 2 GB at N = 1,000


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
    ap.add_argument("--soak", action="store_true", help="the scale soak instead (see the module docstring)")
    ap.add_argument("--sizes", default="10,100,1000", help="--soak: cohort sizes, smallest first")
    ap.add_argument("--soak-stage", help=argparse.SUPPRESS)
    ap.add_argument("--study", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.soak_stage:
        return soak_stage(args.soak_stage, args.study)
    if args.soak:
        return soak([int(n) for n in args.sizes.split(",")])

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
