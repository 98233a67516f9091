"""Ray executor: one Ray task per item on an existing cluster (`address`) or a local one it starts."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from emo.errors import EmoError
from emo.executors.base import CRASHED, Executor, Outcome, call_item, describe_exception


def driver_pythonpath() -> str:
    """The driver's import path, so workers import the same code (tests, source checkouts)."""
    return os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))


class RayExecutor(Executor):
    """Items become Ray tasks asking for `num_cpus`/`num_gpus` each.

    Uses the Ray runtime already initialised in this process, else connects to `address`
    (e.g. "auto" or "ray://head:10001"), else starts a local cluster of `num_cpus` CPUs that
    `close()` shuts down again.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        cluster_cpus: int | None = None,
        retries: int = 1,
        progress: bool | None = None,
    ):
        super().__init__(retries=retries, progress=progress)
        try:
            import ray
        except ImportError:
            raise EmoError("executor ray: the 'ray' package is not installed; pip install 'emo[cluster]'") from None
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self._started = False
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(
                        num_cpus=cluster_cpus,
                        include_dashboard=False,
                        log_to_driver=False,
                        runtime_env={"env_vars": {"PYTHONPATH": driver_pythonpath()}},
                    )
            except ConnectionError as exc:
                raise EmoError(f"executor ray: cannot connect to {address!r} ({exc}); start the cluster or drop --address") from None
            self._started = True

    def _run(self, fn: Callable[[Any], Any], indexed: list[tuple[int, Any]], done: Callable[[bool], Any]) -> dict[int, Outcome]:
        import ray

        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(call_item)
        fn_ref = ray.put(fn)
        refs = {task.remote(fn_ref, item): i for i, item in indexed}
        outcomes: dict[int, Outcome] = {}
        remaining = list(refs)
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=1)
            for ref in ready:
                try:
                    outcomes[refs[ref]] = ray.get(ref)
                except Exception as exc:  # worker crashed or task could not run
                    outcomes[refs[ref]] = (False, CRASHED + describe_exception(exc))
                done(outcomes[refs[ref]][0])
        return outcomes

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
