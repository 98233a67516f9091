"""One network for all genes (`emo train --protocol finetune`): a backbone and a multi-output head
fine-tuned end to end with the paper's loop (`emo.training.loop`).

As in the paper protocol (`emo.training.paper`): every tile is labelled
with its sample's expression (slide level) or its own (tile level, e.g. spatial-transcriptomics
spots), tiles are drawn slide-balanced with random rotations/flips (optionally HED colour jitter),
Adam, early stopping on the tuning split and the lowest-tuning-loss checkpoint kept. Unlike it, one
backbone serves every gene: the head predicts standardised expression of all genes, or the scores
of their top principal components (`n_components`), so 800 genes cost one network, not 800.
The run is one executor job; it owns its randomness (init under `seed`, draws `[seed, epoch]`,
augmentation `[seed, epoch, 1]`, torch `[seed, epoch, 2]`) and runs with `cpu_threads` threads, so a
seed gives bitwise-identical weights on CPU. After every epoch `state/` holds the weights, the Adam
state and the history, so an interrupted run resumes at the next epoch with the same result.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emo.errors import EmoError
from emo.io import atomic_path, dense, provenance, write_json_atomic, write_table_atomic
from emo.models.finetune_cnn import KIND, finetune_net
from emo.models.model import write_manifest
from emo.training.config import FinetuneConfig

if TYPE_CHECKING:
    from emo.executors import Executor





def _scores(basis: np.ndarray, y_mean, y_std):
    """Labels → standardised target scores (applied in the loader thread)."""
    import torch

    def transform(y):
        return torch.from_numpy((((y.double().numpy() - y_mean) / y_std) @ basis).astype(np.float32))

    return transform


def _opt_tensors(opt) -> dict:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            out[f"opt.{idx}.{name}"] = value.detach().cpu().contiguous()
    return out


def _load_opt(opt, tensors: dict) -> None:
    sd = opt.state_dict()
    state: dict = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    sd["state"] = state
    opt.load_state_dict(sd)


def finetune_job(job: dict) -> dict:
    """Run (or resume) one fine-tuning job; a picklable top-level function for the executors."""
    import torch

    folder = Path(job["folder"])
    if (folder / "done.json").exists():
        return json.loads((folder / "done.json").read_text())
    config = FinetuneConfig(**job["config"])
    threads = torch.get_num_threads()
    torch.set_num_threads(config.cpu_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            return _finetune(job, config, folder)
    finally:
        torch.set_num_threads(threads)


def _finetune(job: dict, config: FinetuneConfig, folder: Path) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    from emo.training.datasets import SlideBalancedSampler, TileDataset
    from emo.training.loop import CheckpointKeeper, EarlyStopping, batches, run_epochs

    basis, y_mean, y_std = (np.asarray(job[k], np.float64) for k in ("basis", "y_mean", "y_std"))
    net = finetune_net(config.backbone, config.weights, config.input_size, config.seed, len(y_mean), basis.shape[1])
    for name, value in (("y_mean", y_mean), ("y_std", y_std), ("basis", basis)):
        getattr(net, name).copy_(torch.from_numpy(value.astype(np.float32)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net.to(device)
    backbone = net.backbone
    kw = dict(input_size=config.input_size, mean=backbone.mean, std=backbone.std, level=job["level"])
    train = TileDataset(job["train_stores"], job["train_labels"], augment=True, hed_sigma=config.hed_jitter, **kw)
    tune = TileDataset(job["tune_stores"], job["tune_labels"], augment=False, **kw)
    scores = _scores(basis, y_mean, y_std)
    n_draw = config.steps_per_epoch * config.batch_size
    if job["level"] == "slide":
        sampler = SlideBalancedSampler.for_dataset(train, n_draw, config.seed)
        tune_idx = list(SlideBalancedSampler.for_dataset(tune, config.tuning_batches * config.batch_size,
                                                         config.seed + 1))
    else:  # tiles with their own targets: uniform over the fitting split's rows
        pool, tune_pool = np.asarray(job["train_rows"]), np.asarray(job["tune_rows"])
        perm = np.random.default_rng([config.seed, 1]).permutation(len(tune_pool))
        tune_idx = tune_pool[np.sort(perm[: config.tuning_batches * config.batch_size])].tolist()

    def train_batches(epoch: int):
        torch.manual_seed(int(np.random.default_rng([config.seed, epoch, 2]).integers(2**31)))
        if job["level"] == "slide":
            sampler.set_epoch(epoch)
            draws = list(sampler)
        else:
            draws = np.random.default_rng([config.seed, epoch]).choice(pool, n_draw).tolist()
        return batches(train, draws, config.batch_size, scores, np.random.default_rng([config.seed, epoch, 1]))

    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    stopper = EarlyStopping(config.min_delta, config.patience)
    keeper = CheckpointKeeper(folder, keep_best=1, keep_random=0, seed=config.seed)
    state_dir = folder / "state"
    history, start = [], 0
    if (state_dir / "last.json").exists():  # resume after the last finished epoch
        saved = json.loads((state_dir / "last.json").read_text())
        tensors = load_file(str(state_dir / "last.safetensors"))
        net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")})
        _load_opt(opt, {k: v for k, v in tensors.items() if k.startswith("opt.")})
        history, start = saved["history"], saved["epoch"] + 1
        stopper.best, stopper.wait = saved["best"], saved["wait"]
        keeper.losses = {int(k): v for k, v in saved["losses"].items()}

    def save_state(epoch: int, history: list[dict]) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(state_dir / "last.safetensors") as tmp:
            save_file({**{f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                       **_opt_tensors(opt)}, str(tmp))
        write_json_atomic(state_dir / "last.json", {"epoch": epoch, "history": history, "best": stopper.best,
                                                    "wait": stopper.wait, "losses": keeper.losses})

    history = run_epochs(net, opt, range(start, config.max_epochs), train_batches,
                         lambda: batches(tune, tune_idx, config.batch_size, scores), stopper=stopper, keeper=keeper,
                         steps_per_epoch=config.steps_per_epoch, prefetch_batches=config.prefetch_batches,
                         device=device, history=history, after_epoch=save_state, name="fine-tuning")
    write_table_atomic(folder / "history.csv", __import__("pandas").DataFrame(history))
    best = keeper.best()[0]
    result = {"epochs": len(history), "best_epoch": best, "best_tune_loss": keeper.losses[best],
              "best_checkpoint": keeper.path(best).name, "stopped_early": len(history) < config.max_epochs}
    write_json_atomic(folder / "done.json", result)
    return result


def _tile_level_labels(adata, stores: dict[str, Path], genes: list[str], targets: Path):
    """Per-tile label arrays in tile-store row order, and each split's global dataset rows."""
    from emo.slides import TileStore
    from emo.training.train import _slide_of

    obs = adata.obs
    slides = _slide_of(obs).astype(str)
    tiles = obs["tile_id"].astype(str) if "tile_id" in obs else obs.index.astype(str).to_series(index=obs.index)
    split = obs["split"].astype(str)
    col = adata.var_names.get_indexer(genes)
    fit = split.isin(("train", "tune")).to_numpy()
    paths, labels, rows, offset = [], {}, {"train": [], "tune": []}, 0
    for slide_id in sorted(set(slides[fit])):
        if slide_id not in stores:
            raise EmoError(f"{targets}: slide {slide_id} has train/tune tiles but no tile store; run `emo tile` on it")
        store = TileStore(stores[slide_id])
        obs_rows = np.flatnonzero(fit & (slides == slide_id).to_numpy())
        row_of = {t: i for i, t in enumerate(store.tile_ids)}
        where = np.array([row_of.get(t, -1) for t in tiles.iloc[obs_rows]])
        if (where < 0).any():
            raise EmoError(f"{stores[slide_id]}: tile {tiles.iloc[obs_rows[where.argmin()]]!r} of the targets is not in "
                           "this store; targets must use the tile store's tile_id (spot ids for spot-centred stores)")
        y = np.zeros((len(store), len(genes)), np.float32)
        y[where] = dense(adata.X[obs_rows][:, col], np.float64)
        paths.append(str(stores[slide_id]))
        labels[slide_id] = y
        for name in rows:
            rows[name] += (offset + where[split.iloc[obs_rows].to_numpy() == name]).tolist()
        offset += len(store)
    return paths, labels, rows


def train_finetune(
    tile_dir: Path | Sequence[Path],
    targets: Path,
    out_dir: Path,
    genes=None,
    config: FinetuneConfig | None = None,
    executor: str | Executor = "local",
    *,
    level: str = "slide",
    gpus: float = 0,
    executor_options: dict | None = None,
) -> Path:
    """Fine-tune one network for all genes on tiles (a folder of tile stores, or a list of stores).

    `level="slide"`: every tile carries its slide's expression (targets obs = samples with
    `slide_id`); `level="tile"`: targets obs are tiles (`slide_id` + `tile_id`), each its own label.
    The job runs through `executor` (`gpus` per job for ray/slurm); a finished model
    (`done.json`) is returned as is, an unfinished one resumes.
    """
    from emo.executors import map_isolated, stage_executor
    from emo.expression.targets import read_targets
    from emo.slides import TileStore
    from emo.training.data import select_genes, tile_geometry
    from emo.training.train import _slide_of

    config = config or FinetuneConfig()
    if level not in ("slide", "tile"):
        raise EmoError(f"unknown level {level!r}; choose slide or tile")
    targets, out_dir = Path(targets), Path(out_dir)
    paths = sorted(Path(tile_dir).glob("*.h5")) if isinstance(tile_dir, (str, Path)) else [Path(p) for p in tile_dir]
    if not paths:
        raise EmoError(f"{tile_dir}: no tile stores (*.h5); run `emo tile` first")
    stores = {p.stem: p for p in paths}
    adata = read_targets(targets)
    genes = select_genes(adata, genes, targets)
    job = {"folder": str(out_dir), "config": config.model_dump(), "level": level}
    if level == "slide":
        slides, split = _slide_of(adata.obs), adata.obs["split"].astype(str)
        col = adata.var_names.get_indexer(genes)
        fit_y = {}
        for name in ("train", "tune"):
            mask = (split == name).to_numpy() & slides.notna().to_numpy()
            ids = list(slides[mask])
            if not ids:
                raise EmoError(f"{targets}: no samples with split == {name!r}")
            missing = [s for s in ids if s not in stores]
            if missing:
                raise EmoError(f"{targets}: {len(missing)} {name} slide(s) have no tile store (e.g. "
                               f"{', '.join(missing[:3])}); run `emo tile` on them")
            y = dense(adata.X[np.flatnonzero(mask)][:, col], np.float64)
            job[f"{name}_stores"] = [str(stores[s]) for s in ids]
            job[f"{name}_labels"] = {s: y[i].astype(np.float32) for i, s in enumerate(ids)}
            fit_y[name] = y
        y_train = fit_y["train"]
    else:
        store_paths, labels, rows = _tile_level_labels(adata, stores, genes, targets)
        if not rows["train"] or not rows["tune"]:
            raise EmoError(f"{targets}: need train and tune tiles (have {len(rows['train'])} / {len(rows['tune'])})")
        job.update(train_stores=store_paths, tune_stores=store_paths, train_labels=labels, tune_labels=labels,
                   train_rows=rows["train"], tune_rows=rows["tune"])
        y_train = np.concatenate(list(labels.values()))[rows["train"]]
    if not np.isfinite(y_train).all():
        raise EmoError(f"{targets}: training targets contain NaN/inf; fix or drop those genes before fine-tuning")
    y_mean, y_std = y_train.mean(0), y_train.std(0)
    y_std[y_std < 1e-12] = 1.0
    k = config.n_components
    if k:
        if k > min(y_train.shape):
            raise EmoError(f"n_components={k}: at most {min(y_train.shape)} components from {len(y_train)} training rows")
        basis = np.linalg.svd((y_train - y_mean) / y_std, full_matrices=False)[2][:k].T
    else:
        basis = np.eye(len(genes))
    job.update(basis=basis, y_mean=y_mean, y_std=y_std)
    options = dict(executor_options or {})
    if gpus and executor == "ray":
        options.setdefault("num_gpus", gpus)
    elif gpus and executor == "slurm":
        options.setdefault("gpus_per_node", int(np.ceil(gpus)))
    with stage_executor(executor, workers=1, folder=out_dir / ".slurm", options=options) as ex:
        (result,), failures = map_isolated(ex, finetune_job, [job], desc="fine-tuning")
    if failures:
        raise EmoError(f"{out_dir}: fine-tuning failed: {failures[0]}; fix it and re-run (finished epochs are kept)")
    geometry, stain_reference = tile_geometry({}, TileStore(next(iter(stores.values()))).attrs)
    prov = provenance(**config.model_dump(), level=level)
    write_manifest(out_dir, {
        "emo_version": prov["emo_version"], "created": prov["created"], "kind": KIND, "level": level,
        "backbone": {"name": config.backbone, "weights": config.weights, "input_size": config.input_size},
        "tile_geometry": geometry, "stain_reference": stain_reference, "genes": genes, "protocol": config.model_dump(),
        "target_normalisation": "per gene (y − y_mean)/y_std on the train split (buffers of the network); "
                                "predictions are on the targets' scale",
        "targets": str(targets.resolve()), "tuning": result, "provenance": prov})
    return out_dir
