"""The CNN epoch loop shared by the paper protocol and fine-tuning.

One epoch: seeded training batches prepared in a background thread (`prefetch`), Adam steps on the
MSE, then the summed MSE over the fixed tuning draws; the `CheckpointKeeper` writes the epoch's
weights if it keeps them and `EarlyStopping` (Keras semantics) ends the run. The protocols differ
only in what they pass in: how an epoch's batches are drawn (`train_batches(epoch)`, called in this
thread so its seeding happens in order), the labels' transform and what is saved after each epoch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from emo.io import atomic_path

log = logging.getLogger(__name__)


class EarlyStopping:
    """Keras `EarlyStopping(monitor="val_loss", min_delta, patience)` semantics.

    An epoch improves only if loss < best − min_delta (then `best` becomes that loss and the wait
    resets); otherwise the wait grows and training stops once it reaches `patience`.
    """

    def __init__(self, min_delta: float, patience: int):
        self.min_delta, self.patience = float(min_delta), int(patience)
        self.best, self.wait = np.inf, 0

    def step(self, loss: float) -> bool:
        """Record an epoch's tuning loss; True means stop now."""
        if loss < self.best - self.min_delta:
            self.best, self.wait = loss, 0
            return False
        self.wait += 1
        return self.wait >= self.patience


class CheckpointKeeper:
    """Keeps the `keep_best` lowest-loss epochs and a uniform random sample of `keep_random` epochs.

    The random sample is a seeded reservoir sample over all epochs run (so it is uniform without
    knowing when early stopping will end the run); checkpoints in neither set are deleted.
    """

    def __init__(self, folder: Path, keep_best: int, keep_random: int, seed: int):
        self.folder, self.keep_best, self.keep_random = folder, keep_best, keep_random
        self.rng = np.random.default_rng(seed)
        self.losses: dict[int, float] = {}
        self.random: list[int] = []

    def path(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch:04d}.safetensors"

    def best(self) -> list[int]:
        return sorted(self.losses, key=lambda e: (self.losses[e], e))[: self.keep_best]

    def add(self, epoch: int, loss: float, state: dict) -> None:
        from safetensors.torch import save_file

        self.losses[epoch] = loss
        if len(self.random) < self.keep_random:
            self.random.append(epoch)
        elif self.keep_random:
            j = int(self.rng.integers(0, epoch + 1))
            if j < self.keep_random:
                self.random[j] = epoch
        keep = set(self.best()) | set(self.random)
        if epoch in keep:
            with atomic_path(self.path(epoch)) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
        for old in self.folder.glob("epoch_*.safetensors"):
            if int(old.stem.split("_")[1]) not in keep:
                old.unlink()


def prefetch(batches: Iterator, size: int) -> Iterator:
    """Produce batches in a background thread, keeping a buffer of `size` ready batches."""
    buf: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in batches:
                if stop.is_set():
                    return
                buf.put(item)
        except BaseException as exc:  # surfaced in the consumer
            buf.put(exc)
        buf.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (item := buf.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def batches(dataset, indices: Sequence[int], batch_size: int, target: Callable, rng: np.random.Generator | None = None
            ) -> Iterator:
    """(tiles, target(stacked labels)) batches of `dataset` items; `rng` augments (owned by the loader thread)."""
    import torch

    for s in range(0, len(indices), batch_size):
        items = [dataset.load(int(i), rng) for i in indices[s : s + batch_size]]
        yield torch.stack([x for x, _ in items]), target(torch.stack([y for _, y in items]))


def run_epochs(model, opt, epochs: Iterable[int], train_batches: Callable[[int], Iterator], tune_batches: Callable[[], Iterator],
               *, stopper: EarlyStopping, keeper: CheckpointKeeper, steps_per_epoch: int, prefetch_batches: int,
               device: str, history: list[dict] | None = None, after_epoch: Callable[[int, list[dict]], None] | None = None,
               name: str = "") -> list[dict]:
    """Train `model` for `epochs` (or until `stopper` says stop); returns the history of epoch losses.

    `history` continues a resumed run (a run whose stopper already stopped does nothing more);
    `after_epoch(epoch, history)` runs after the checkpoint and stopper of every epoch (e.g. to
    save resumable state)."""
    import torch
    from torch.nn.functional import mse_loss

    history = list(history or [])
    if history and stopper.wait >= stopper.patience:
        return history
    for epoch in epochs:
        draws = train_batches(epoch)
        model.train()
        train_loss = 0.0
        for x, y in prefetch(draws, prefetch_batches):
            loss = mse_loss(model(x.to(device)), y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            train_loss += float(loss.detach()) / steps_per_epoch
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for x, y in prefetch(tune_batches(), prefetch_batches):
                total += float(mse_loss(model(x.to(device)), y.to(device), reduction="sum"))
                n += y.numel()
        tune_loss = total / n
        history.append({"epoch": epoch, "train_loss": train_loss, "tune_loss": tune_loss})
        keeper.add(epoch, tune_loss, model.state_dict())
        log.debug("%s epoch %d: train %.4f tune %.4f", name, epoch, train_loss, tune_loss)
        stop = stopper.step(tune_loss)
        if after_epoch is not None:
            after_epoch(epoch, history)
        if stop:
            break
    return history
