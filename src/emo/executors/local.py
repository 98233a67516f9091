"""Local executor: a process pool on this machine (`workers=1` runs in-process, for debugging)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from emo.errors import EmoError
from emo.executors.base import CRASHED, Executor, Outcome, call_item, describe_exception


class LocalExecutor(Executor):
    """Process pool of `workers` processes (spawned, so torch/CUDA state is never forked).

    The pool starts on the first `map` and is reused by later ones (retries included), so workers
    pay their start-up (importing torch, loading a model they cache) once; `close()` ends it.
    """

    name = "local"

    def __init__(self, workers: int = 1, retries: int = 1, start_method: str = "spawn", progress: bool | None = None):
        super().__init__(retries=retries, progress=progress)
        if workers < 1:
            raise EmoError(f"executor local: workers={workers} must be >= 1")
        self.workers = workers
        self.start_method = start_method
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context(self.start_method)
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        return self._pool

    def _run(self, fn: Callable[[Any], Any], indexed: list[tuple[int, Any]], done: Callable[[bool], Any]) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        if self.workers == 1:
            for i, item in indexed:
                outcomes[i] = call_item(fn, item)
                done(outcomes[i][0])
            return outcomes
        pool = self._get_pool()
        futures = {pool.submit(call_item, fn, item): i for i, item in indexed}
        for future in as_completed(futures):
            try:
                outcomes[futures[future]] = future.result()
            except Exception as exc:  # worker died (BrokenProcessPool) or result not picklable
                outcomes[futures[future]] = (False, CRASHED + describe_exception(exc))
            done(outcomes[futures[future]][0])
        if any(isinstance(f.exception(), BrokenProcessPool) for f in futures):
            self.close()  # a dead worker breaks the pool: the retry round starts a fresh one
        return outcomes

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
