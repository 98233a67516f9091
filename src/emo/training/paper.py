"""The paper's protocol (Wang, Kartasalo et al. 2021, "Model optimization"): one Inception V3 per gene.

Every number of the protocol is a field of `PaperProtocolConfig` with the paper's value as default.
Each gene is an independent job writing `<out>/genes/<gene>/`; its `done.json` is written last
(atomically), so a re-run skips finished genes and restarts unfinished ones. Genes fan out through
`emo.executors` (local processes, Ray, a SLURM job array). A job owns all its randomness (seeded
tile sampling, augmentation and initialisation; fixed CPU threads), so the same seed gives
bitwise-identical checkpoints on CPU whichever executor runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emo.errors import EmoError
from emo.io import provenance, write_json_atomic, write_table_atomic
from emo.models.paper_cnn import paper_cnn
from emo.models.model import write_manifest
from emo.training.config import PaperProtocolConfig

if TYPE_CHECKING:
    from emo.executors import Executor




def _labelled(gene: str, stores: list[str], labels: dict[str, float], split: str) -> tuple[list[str], dict[str, float]]:
    """Slides whose label for this gene is a number (a missing measurement leaves its slide out);
    `stores` and `labels` are in the same slide order."""
    keep = [np.isfinite(v) for v in labels.values()]
    if not any(keep):
        raise EmoError(f"gene {gene}: no {split} slide has a finite target (all NaN); "
                       "fix its expression values or leave the gene out of --genes")
    return ([p for p, k in zip(stores, keep) if k],
            {s: v for (s, v), k in zip(labels.items(), keep) if k})


def train_gene(job: dict) -> dict:
    """Train one gene's CNN (a picklable top-level function for the executors)."""
    import torch

    folder = Path(job["folder"])
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    config = PaperProtocolConfig(**job["config"])
    threads = torch.get_num_threads()
    torch.set_num_threads(config.cpu_threads)
    try:
        with torch.random.fork_rng(devices=[]):  # the job's seed, without touching the caller's RNG
            return _train_gene(job, config, folder, done)
    finally:
        torch.set_num_threads(threads)


def _train_gene(job: dict, config: PaperProtocolConfig, folder: Path, done: Path) -> dict:
    import torch

    from emo.training.datasets import SlideBalancedSampler, TileDataset
    from emo.training.loop import CheckpointKeeper, EarlyStopping, batches, run_epochs

    gene = job["gene"]
    train_stores, train_labels = _labelled(gene, job["train_stores"], job["train_labels"], "train")
    tune_stores, tune_labels = _labelled(gene, job["tune_stores"], job["tune_labels"], "tune")
    folder.mkdir(parents=True, exist_ok=True)
    model, backbone = paper_cnn(config.backbone, config.weights, config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    kw = dict(input_size=config.input_size, mean=backbone.mean, std=backbone.std)
    train = TileDataset(train_stores, train_labels, augment=True, **kw)
    tune = TileDataset(tune_stores, tune_labels, augment=False, **kw)
    sampler = SlideBalancedSampler.for_dataset(train, config.steps_per_epoch * config.batch_size, config.seed)
    tune_idx = list(SlideBalancedSampler.for_dataset(tune, config.tuning_batches * config.batch_size, config.seed + 1))

    def column(y):
        return y.float().view(-1, 1)

    def train_batches(epoch: int):
        sampler.set_epoch(epoch)
        augment = np.random.default_rng([config.seed, epoch, 1])  # owned by this epoch's loader thread
        return batches(train, list(sampler), config.batch_size, column, augment)

    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                           weight_decay=config.weight_decay)
    keeper = CheckpointKeeper(folder, config.keep_best, config.keep_random, config.seed)
    history = run_epochs(model, opt, range(config.max_epochs), train_batches,
                         lambda: batches(tune, tune_idx, config.batch_size, column),
                         stopper=EarlyStopping(config.min_delta, config.patience), keeper=keeper,
                         steps_per_epoch=config.steps_per_epoch, prefetch_batches=config.prefetch_batches,
                         device=device, name=gene)
    write_table_atomic(folder / "history.csv", __import__("pandas").DataFrame(history))
    best = keeper.best()
    result = {
        "gene": gene,
        "epochs": len(history),
        "best_epoch": best[0],
        "best_tune_loss": keeper.losses[best[0]],
        "best_checkpoint": keeper.path(best[0]).name,
        "kept_best": best,
        "kept_random": sorted(keeper.random),
        "stopped_early": len(history) < config.max_epochs,
    }
    write_json_atomic(done, result)
    return result


def train_paper_protocol(
    tile_dir: Path,
    targets: Path,
    out_dir: Path,
    genes,
    config: PaperProtocolConfig | None = None,
    executor: str | Executor = "local",
    *,
    workers: int = 1,
    gpus: float = 0,
    executor_options: dict | None = None,
) -> Path:
    """Train one CNN per gene on tiles labelled with their slide's expression; returns `out_dir`.

    Genes are jobs for `executor` (local: `workers` processes; ray; slurm: a job array with its job
    files in `<out_dir>/.slurm`, `chunk_size` genes per task via `executor_options`); `gpus` per
    job becomes Ray's `num_gpus` or SLURM's `gpus_per_node`. Finished genes (done.json) are not
    run again. A gene that still fails after the executor's retries is reported in an `EmoError`
    after the others finished; the manifest then lists the finished genes and `failed_genes`.
    """
    from emo.executors import map_isolated, stage_executor
    from emo.slides import TileStore
    from emo.expression.targets import read_targets
    from emo.training.data import select_genes, tile_geometry
    from emo.training.train import _slide_of

    config = config or PaperProtocolConfig()
    tile_dir, targets, out_dir = Path(tile_dir), Path(targets), Path(out_dir)
    adata = read_targets(targets)
    genes = select_genes(adata, genes, targets)
    slides = _slide_of(adata.obs)
    split = adata.obs["split"].astype(str)
    stores = {p.stem: p for p in sorted(tile_dir.glob("*.h5"))}
    if not stores:
        raise EmoError(f"{tile_dir}: no tile stores (*.h5); run `emo tile` first")
    parts = {}
    for name in ("train", "tune"):
        mask = (split == name).to_numpy() & slides.notna().to_numpy()
        ids = list(slides[mask])
        missing = [s for s in ids if s not in stores]
        if missing:
            raise EmoError(f"{targets}: {len(missing)} {name} slide(s) have no tile store in {tile_dir} "
                           f"(e.g. {', '.join(missing[:3])}); run `emo tile` on them")
        if not ids:
            raise EmoError(f"{targets}: no samples with split == {name!r}")
        parts[name] = (ids, np.asarray(adata[mask, genes].X, dtype=np.float32))
    jobs = []
    for j, gene in enumerate(genes):
        job = {"gene": gene, "folder": str(out_dir / "genes" / gene), "config": config.model_dump()}
        for name, (ids, y) in parts.items():
            job[f"{name}_stores"] = [str(stores[s]) for s in ids]
            job[f"{name}_labels"] = {s: float(y[i, j]) for i, s in enumerate(ids)}
        jobs.append(job)
    results: list[dict | None] = [json.loads(Path(j["folder"], "done.json").read_text())
                                  if Path(j["folder"], "done.json").exists() else None for j in jobs]
    todo = [k for k, r in enumerate(results) if r is None]
    failed: dict[str, str] = {}
    if todo:
        options = dict(executor_options or {})
        if gpus and executor == "ray":
            options.setdefault("num_gpus", gpus)
        elif gpus and executor == "slurm":
            options.setdefault("gpus_per_node", int(np.ceil(gpus)))
        with stage_executor(executor, workers=min(workers, len(todo)), folder=out_dir / ".slurm", options=options) as ex:
            trained, failures = map_isolated(ex, train_gene, [jobs[k] for k in todo], desc="genes")
        for k, result in zip(todo, trained):
            results[k] = result
        failed = {jobs[todo[i]]["gene"]: message for i, message in failures.items()}
    results = [r for r in results if r is not None]
    geometry, stain_reference = tile_geometry({}, TileStore(next(iter(stores.values()))).attrs)
    prov = provenance(**config.model_dump())
    write_manifest(out_dir, {
        "emo_version": prov["emo_version"],
        "created": prov["created"],
        "kind": "paper_cnn",
        "backbone": {"name": config.backbone, "weights": config.weights, "input_size": config.input_size},
        "tile_geometry": geometry,
        "stain_reference": stain_reference,
        "genes": [r["gene"] for r in results],
        "failed_genes": failed,
        "target_normalisation": "none (the paper's normalised log expression as given in targets)",
        "protocol": config.model_dump(),
        "targets": str(targets.resolve()),
        "tuning": {r["gene"]: {k: r[k] for k in ("best_epoch", "best_tune_loss", "epochs")} for r in results},
        "provenance": prov,
    })
    if failed:
        shown = "; ".join(f"{g}: {m}" for g, m in list(failed.items())[:5])
        raise EmoError(f"{out_dir}: {len(failed)} of {len(genes)} gene(s) failed ({shown}); the other genes are "
                       "trained and kept: fix the input named and re-run (finished genes are skipped)")
    return out_dir
