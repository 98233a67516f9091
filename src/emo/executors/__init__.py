"""Fan-out of embarrassingly parallel loops (slides, genes) over a process pool, Ray or SLURM.

Every executor has the same `.map(fn, items, *, desc)`: results come back in item order, a failing
item is retried `retries` times and, if it still fails, reported in an `ExecutorError` that keeps the
other items' results — so a cluster run gives exactly what a local run gives.
"""

from __future__ import annotations

from typing import Any

from emo.errors import EmoError
from emo.executors.base import Executor, ExecutorError

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


__all__ = ["Executor", "ExecutorError", "executor_names", "get_executor"]
