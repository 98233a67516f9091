"""Fan-out of embarrassingly parallel loops (slides, genes) over a process pool, Ray or SLURM.

Every executor has the same `.map(fn, items, *, desc)`: results come back in item order, a failing
item is retried `retries` times and, if it still fails, reported in an `ExecutorError` that keeps the
other items' results — so a cluster run gives exactly what a local run gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emo.errors import EmoError
from emo.executors.base import CRASHED, Executor, ExecutorError

_EXECUTORS = {
    "local": ("emo.executors.local", "LocalExecutor"),
    "ray": ("emo.executors.ray", "RayExecutor"),
    "slurm": ("emo.executors.slurm", "SlurmExecutor"),
}


def executor_names() -> list[str]:
    return list(_EXECUTORS)


def get_executor(name: str | Executor = "local", **opts: Any) -> Executor:
    """Build the executor registered as `name` (`local`, `ray`, `slurm`) with its options; an
    Executor passed in is returned as is (so stage APIs can take either)."""
    import importlib

    if isinstance(name, Executor):
        return name
    if name not in _EXECUTORS:
        raise EmoError(f"executor {name!r}: unknown; choose one of {', '.join(_EXECUTORS)}")
    module, cls = _EXECUTORS[name]
    executor_cls = getattr(importlib.import_module(module), cls)
    try:
        return executor_cls(**opts)
    except TypeError as exc:
        raise EmoError(f"executor {name!r}: bad option ({exc}); see help({cls})") from None


@contextmanager
def stage_executor(
    executor: str | Executor = "local",
    *,
    workers: int = 1,
    folder: str | Path | None = None,
    options: dict[str, Any] | None = None,
) -> Iterator[Executor]:
    """The executor a stage API fans out through: an Executor passed in is used as is (its owner
    closes it); a name is built here (local with `workers`, slurm with its job files in `folder`
    unless `options` say otherwise) and closed when the stage ends."""
    if isinstance(executor, Executor):
        yield executor
        return
    opts = dict(options or {})
    if executor == "local":
        opts.setdefault("workers", workers)
    elif executor == "slurm" and folder is not None:
        opts.setdefault("folder", str(folder))
    built = get_executor(executor, **opts)
    try:
        yield built
    finally:
        built.close()


def map_isolated(executor: Executor, fn: Callable[[Any], Any], items: Sequence[Any], *, desc: str) -> tuple[list[Any], dict[int, str]]:
    """`executor.map` that never raises for failed items: returns (results, {index: error}).

    A crashing worker (or SLURM chunk) takes the items in flight beside it down too, so items whose
    worker crashed, when several did, are tried once more each on its own (one item per map) before
    they are reported; an exception raised by `fn` is reported as it is.
    """
    items = list(items)
    try:
        return executor.map(fn, items, desc=desc), {}
    except ExecutorError as exc:
        results, failures = list(exc.results), dict(exc.failures)
    crashed = [i for i in sorted(failures) if failures[i].startswith(CRASHED)]
    if len(crashed) > 1:
        for i in crashed:
            try:
                results[i] = executor.map(fn, [items[i]], desc=desc)[0]
                del failures[i]
            except ExecutorError as exc:
                failures[i] = exc.failures[0]
    return results, failures


__all__ = ["Executor", "ExecutorError", "executor_names", "get_executor", "map_isolated", "stage_executor"]
