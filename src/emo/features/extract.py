"""Run a backbone once over every kept tile of each tile store and cache one embedding per tile.

Loader worker processes read tiles from the slide while the model runs (on a GPU they only decode,
and stain normalisation + resizing run batched there: `model_inputs`); slides are written one HDF5
each, atomically, so an interrupted run resumes at the first unfinished slide. A file is reused only
when its backbone identity and tile-store hash match; anything else is recomputed.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from emo.errors import EmoError
from emo.features.config import ExtractionConfig
from emo.features.preprocess import normalize_stains
from emo.models.inputs import to_model_input
from emo.features.store import FeatureStore, tile_store_params_hash, write_feature_store
from emo.io import provenance

if TYPE_CHECKING:
    from emo.executors import Executor

log = logging.getLogger(__name__)

PREPROCESS = "rgb/255;resize=bilinear-antialias;normalize=mean-std"


def find_tile_stores(tile_dir: Path) -> list[Path]:
    """Tile stores in `tile_dir` (or its `tiles/` folder, or a single .h5 file), sorted."""
    tile_dir = Path(tile_dir)
    if tile_dir.is_file() and tile_dir.suffix == ".h5":
        return [tile_dir]
    for folder in (tile_dir, tile_dir / "tiles"):
        paths = sorted(folder.glob("*.h5")) if folder.is_dir() else []
        if paths:
            return paths
    raise EmoError(f"{tile_dir}: no tile stores (*.h5) here or in {tile_dir / 'tiles'}; run `emo tile` first")


def backbone_dir_name(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


@dataclass(frozen=True)
class _SlideJob:
    slide_id: str
    tile_store: Path
    out_path: Path
    n_tiles: int
    store_hash: str


class _TileBatches(Dataset):
    """Item i = one batch of one slide's tiles, read in a worker process: `(job, x, matrix)`.

    With `decode_only` the worker returns the raw uint8 tiles [k, S, S, 3] and the slide's stain
    matrix, to be normalised and resized batched on the accelerator (`model_inputs`); otherwise it
    returns the model input itself (matrix None), prepared vectorised on the worker's CPU.
    """

    def __init__(self, chunks: Sequence[tuple[int, Path, np.ndarray]], input_size: int,
                 mean: Sequence[float], std: Sequence[float], decode_only: bool = False) -> None:
        self.chunks = list(chunks)
        self.input_size, self.mean, self.std = input_size, tuple(mean), tuple(std)
        self.decode_only = decode_only
        self._stores: dict[Path, Any] = {}

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor | None]:
        job, path, indices = self.chunks[i]
        store = path if not isinstance(path, (str, Path)) else self._stores.get(path)
        if store is None:
            from emo.slides import TileStore

            self._stores.clear()  # one slide open per worker at a time
            store = self._stores[path] = TileStore(path)
        if self.decode_only:
            matrix = store.normalization_matrix
            return (job, torch.from_numpy(store.read_tiles(indices, normalize=False)),
                    None if matrix is None else torch.from_numpy(matrix))
        return job, to_model_input(store.read_tiles(indices), self.input_size, self.mean, self.std), None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stores": {}}


def model_inputs(chunks: Sequence[tuple[int, Path, np.ndarray]], input_size: int, mean: Sequence[float],
                 std: Sequence[float], device: str, workers: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(job, float [k, 3, s, s] on `device`) for each chunk (job, tile store path or TileStore, row
    indices), in order.

    Workers decode; on CUDA they send raw uint8 tiles (a third of the float bytes) and Macenko +
    resize + normalisation run batched on the GPU; on CPU the workers do it all, vectorised.
    """
    cuda = device.startswith("cuda")
    loader = DataLoader(_TileBatches(chunks, input_size, mean, std, decode_only=cuda), batch_size=None,
                        shuffle=False, num_workers=workers, pin_memory=cuda,
                        worker_init_fn=_worker_init if workers else None, multiprocessing_context=loader_context(workers),
                        prefetch_factor=2 if workers else None, persistent_workers=False)
    for j, x, matrix in loader:
        if cuda:
            x = x.to(device, non_blocking=True)
            if matrix is not None:
                x = normalize_stains(x, matrix)
            x = to_model_input(x, input_size, mean, std)
        yield j, x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def loader_context(workers: int):
    """Workers come from a fork server that has imported torch once: cheap to start, and safe even
    when this process already runs slide-reader or BLAS threads (a plain fork can deadlock then)."""
    if workers == 0:
        return None
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["emo.features.extract"])
    return ctx


def extract_features(tile_dir: Path | Sequence[Path], out_dir: Path, config: ExtractionConfig | None = None, *,
                     executor: str | Executor | None = None, progress: bool = True,
                     on_slide_done: Callable[[str, Path, str], None] | None = None,
                     on_tiles: Callable[[int], None] | None = None,
                     executor_options: dict[str, Any] | None = None) -> Path:
    """Write `<out_dir>/<backbone>/<slide_id>.h5` for every tile store; return that folder. `out_dir` is
    the stage's folder (`<run>/features`), so backbones sit side by side.

    `tile_dir` is a folder of tile stores (or its parent, or one store, or a list of stores).
    `on_slide_done(slide_id, path, status)` is called after each slide with status `computed` or
    `cached` (finished earlier with the same backbone and tile store); `on_tiles(n)` after each batch
    of n tiles (a caller's own progress bar). One process with a loader
    feeding one device is the fastest on a machine; for a cluster, `executor` = `ray` or `slurm`
    (or such an Executor) splits the unfinished slides into jobs of `config.slides_per_job` slides,
    each running this function on its slides where it lands (a local executor keeps the single loader).
    """
    from emo.models import create_backbone

    c = config or ExtractionConfig()
    fan_out = _fans_out(executor)
    device = c.device
    if not fan_out:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EmoError("--device cuda asked for but no CUDA GPU is visible; use --device cpu")
    if isinstance(tile_dir, (str, Path)):
        tile_paths = find_tile_stores(Path(tile_dir))
    else:
        tile_paths = [Path(p) for p in tile_dir]
    model = create_backbone(c.backbone, c.weights, pooling=c.pooling, input_size=c.input_size)
    identity = model.identity() | {"preprocess": PREPROCESS}
    out_folder = Path(out_dir) / backbone_dir_name(model.name)
    jobs = _pending_slides(tile_paths, out_folder, identity, on_slide_done)
    if not jobs:
        return out_folder
    if fan_out:
        _fan_out(jobs, out_dir, c, executor, executor_options, on_slide_done)
    else:
        _embed_slides(jobs, model, identity, device, c.batch_size, c.workers, progress, on_slide_done, on_tiles)
    return out_folder


def _pending_slides(tile_paths: Sequence[Path], out_folder: Path, identity: dict[str, Any],
                    on_slide_done: Callable[[str, Path, str], None] | None) -> list[_SlideJob]:
    """The slides whose feature file is missing or was made by another backbone or tile store."""
    from emo.slides import TileStore

    jobs: list[_SlideJob] = []
    for path in tile_paths:
        store = TileStore(path)
        out_path = out_folder / f"{store.slide_id}.h5"
        job = _SlideJob(store.slide_id, path, out_path, len(store), tile_store_params_hash(store))
        if _is_current(out_path, identity, job.store_hash):
            log.debug("%s: features up to date, skipped", job.slide_id)
            if on_slide_done:
                on_slide_done(job.slide_id, out_path, "cached")
            continue
        jobs.append(job)
    return jobs


def _embed_slides(jobs: list[_SlideJob], model: Any, identity: dict[str, Any], device: str, batch_size: int,
                  workers: int, progress: bool, on_slide_done: Callable[[str, Path, str], None] | None,
                  on_tiles: Callable[[int], None] | None = None) -> None:
    """One loader feeding one device: every slide's tiles in batches, each slide written when complete."""
    chunks = [(j, job.tile_store, np.arange(s, min(s + batch_size, job.n_tiles)))
              for j, job in enumerate(jobs) for s in range(0, job.n_tiles, batch_size)]
    cuda = device.startswith("cuda")
    done: dict[int, list[np.ndarray]] = {j: [] for j in range(len(jobs))}
    run_params = {"device": device, "amp": cuda, "batch_size": batch_size}

    from emo.progress import progress_bar

    n_total = sum(job.n_tiles for job in jobs)
    start = time.perf_counter()
    with progress_bar(f"features {model.name}", n_total, "tile", disable=not progress) as (advance, _):
        for j, y in _forward(model, chunks, device, workers):
            done[j].append(y)
            advance(len(y))
            if on_tiles:
                on_tiles(len(y))
            job = jobs[j]
            if sum(len(a) for a in done[j]) == job.n_tiles:
                features = np.concatenate(done.pop(j)) if job.n_tiles else np.zeros((0, model.dim), np.float32)
                _write(job, features, identity, run_params)
                if on_slide_done:
                    on_slide_done(job.slide_id, job.out_path, "computed")
    for j in list(done):  # slides without kept tiles never appear in the loader
        _write(jobs[j], np.zeros((0, model.dim), np.float32), identity, run_params)
        if on_slide_done:
            on_slide_done(jobs[j].slide_id, jobs[j].out_path, "computed")
    seconds = time.perf_counter() - start
    msg = f"{n_total} tiles from {len(jobs)} slides in {seconds:.1f} s: {n_total / max(seconds, 1e-9):.1f} tiles/s on {device}"
    log.info(msg)


def _forward(model: Any, chunks: Sequence[tuple[int, Any, np.ndarray]], device: str,
             workers: int) -> Iterator[tuple[int, np.ndarray]]:
    """(job, float32 [k, dim]) for each chunk: the backbone over the loader's batches (AMP on CUDA)."""
    cuda = device.startswith("cuda")
    loader = model_inputs(chunks, model.input_size, model.mean, model.std, device, workers)
    model = model.to(device, memory_format=torch.channels_last) if cuda else model.to(device)
    with torch.inference_mode():
        for j, x in loader:
            if cuda:
                with torch.autocast("cuda", dtype=torch.float16):
                    y = model(x.contiguous(memory_format=torch.channels_last))
            else:
                y = model(x)
            yield j, y.float().cpu().numpy()


@functools.lru_cache(maxsize=4)
def _backbone(name: str, weights: str, pooling: str | None, input_size: int | None) -> Any:
    from emo.models import create_backbone

    return create_backbone(name, weights, pooling=pooling, input_size=input_size).eval()


def _weights_argument(identity: str | None) -> str:
    """`create_backbone`'s `weights` argument that reproduces a recorded weights identity."""
    from emo.models.backbones import WHEEL_WEIGHTS

    identity = str(identity or "default")
    for prefix, argument in (("none:", "none"), (f"{WHEEL_WEIGHTS}:", WHEEL_WEIGHTS), ("imagenet:", "imagenet")):
        if identity.startswith(prefix):
            return argument
    return identity  # default, hf-hub:<id>; file identities cannot be rebuilt (checked in `embed`)


def embed(store: Any, backbone: str | dict[str, Any] = "efficientnet_lite0", *, batch_size: int = 64,
          device: str | None = None, workers: int = 0) -> np.ndarray:
    """float32 [tiles, dim]: `backbone` over every tile of `store` (a TileStore or its `centred_view`),
    in memory: `extract_features` without the writing, for prediction.

    `backbone` is a name or a recorded identity (a model's `backbone`: name, weights, pooling,
    input_size); the network is built once per identity and the weights it gives must match."""
    wanted = {"name": backbone} if isinstance(backbone, str) else dict(backbone)
    try:
        model = _backbone(wanted["name"], _weights_argument(wanted.get("weights")), wanted.get("pooling"),
                          wanted.get("input_size"))
    except EmoError as exc:
        raise EmoError(f"{getattr(store, 'path', 'tiles')}: cannot embed tiles with backbone {wanted['name']} ({exc}); "
                       "run `emo features` and pass --features") from None
    got = model.identity().get("weights")
    if wanted.get("weights") is not None and str(got) != str(wanted["weights"]):
        raise EmoError(f"{getattr(store, 'path', 'tiles')}: backbone {wanted['name']} gives weights {got}, the model "
                       f"was trained on {wanted['weights']}; run `emo features` with those weights and pass --features")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    chunks = [(0, store, np.arange(s, min(s + batch_size, len(store)))) for s in range(0, len(store), batch_size)]
    parts = [y for _, y in _forward(model, chunks, device, workers)]
    return np.concatenate(parts) if parts else np.zeros((0, model.dim), np.float32)


def _fans_out(executor: str | Executor | None) -> bool:
    from emo.executors import Executor
    from emo.executors.local import LocalExecutor

    if isinstance(executor, Executor):
        return not isinstance(executor, LocalExecutor)
    return executor not in (None, "local")


def _extract_job(job: dict[str, Any]) -> list[tuple[str, str]]:
    """One cluster job: features for its slides (a picklable top-level function for the executors)."""
    done: list[tuple[str, str]] = []
    extract_features([Path(p) for p in job["tile_stores"]], Path(job["out_dir"]), ExtractionConfig(**job["config"]),
                     progress=False, on_slide_done=lambda sid, path, status: done.append((sid, status)))
    return done


def _fan_out(jobs: list[_SlideJob], out_dir: Path, config: ExtractionConfig, executor: str | Executor,
             executor_options: dict[str, Any] | None, on_slide_done: Callable[[str, Path, str], None] | None) -> None:
    from emo.executors import stage_executor

    slides_per_job = config.slides_per_job
    chunks = [jobs[k : k + slides_per_job] for k in range(0, len(jobs), slides_per_job)]
    items = [{"tile_stores": [str(j.tile_store.resolve()) for j in chunk], "out_dir": str(Path(out_dir).resolve()),
              "config": config.model_dump()} for chunk in chunks]
    folder = Path(out_dir) / ".slurm"
    with stage_executor(executor, folder=folder, options=executor_options) as ex:
        results = ex.map(_extract_job, items, desc="feature jobs")
    if on_slide_done:
        paths = {j.slide_id: j.out_path for j in jobs}
        for sid, status in (pair for chunk in results for pair in chunk):
            on_slide_done(sid, paths[sid], status)


def _is_current(path: Path, identity: dict[str, Any], store_hash: str) -> bool:
    if not path.is_file():
        return False
    try:
        attrs = FeatureStore(path).attrs
    except EmoError:
        return False
    return attrs.get("tile_store_params_hash") == store_hash and json.loads(attrs.get("backbone_json", "{}")) == identity


def clam_coords_attrs(store) -> dict[str, Any]:
    """The attrs of `coords` as CLAM and TRIDENT read them (level-0 top-left px of each patch).

    `patch_size` is CLAM's: pixels read at `patch_level`; `patch_size_level0` is TRIDENT's footprint.
    """
    level0 = float(store.attrs["tile_size_level0"])
    return {
        "patch_size": round(level0 / float(store.attrs.get("level_downsample", 1.0))),
        "patch_size_level0": round(level0),
        "patch_level": int(store.attrs.get("level", 0)),
        "mpp": float(store.attrs["mpp"]),
        "target_mpp": float(store.attrs["target_mpp"]),
        "target_patch_size": int(store.attrs["tile_size_px"]),
    }


def _write(job: _SlideJob, features: np.ndarray, identity: dict[str, Any], run_params: dict[str, Any]) -> None:
    from emo.slides import TileStore

    store = TileStore(job.tile_store)
    prov = provenance(tile_store=str(job.tile_store.resolve()), **identity, **run_params)
    write_feature_store(job.out_path, features, store.coords_px, store.coords_um, list(store.tile_ids), {
        "slide_id": job.slide_id,
        "backbone": identity["backbone"],
        "weights": identity["weights"],
        "input_size": identity["input_size"],
        "dim": identity["dim"],
        "tile_store_params_hash": job.store_hash,
        "backbone_json": json.dumps(identity, sort_keys=True),
        "emo_version": prov["emo_version"],
        "created": prov["created"],
        "params_json": json.dumps(prov["params"], sort_keys=True),
    }, coords_attrs=clam_coords_attrs(store))
