"""SLURM executor through submitit: one job-array task per item (or per chunk of items).

As in the paper's cluster runs, inputs can be staged to node-local scratch before the work starts
(`stage=True`): each item that is a path is copied to `$SLURM_TMPDIR`/`$TMPDIR`/`/scratch` and `fn`
receives the local copy, which is removed afterwards.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emo.errors import EmoError
from emo.executors.base import CRASHED, Executor, Outcome, call_item, describe_exception
from emo.executors.ray import driver_pythonpath

SCRATCH_ENV = ("SLURM_TMPDIR", "TMPDIR")


def scratch_root(scratch_dir: str | None = None) -> Path:
    """Node-local scratch: the option, else $SLURM_TMPDIR/$TMPDIR, else /scratch, else the system tmp."""
    if scratch_dir:
        return Path(os.path.expandvars(scratch_dir))
    for var in SCRATCH_ENV:
        if os.environ.get(var) and os.path.isdir(os.environ[var]):
            return Path(os.environ[var])
    if os.path.isdir("/scratch") and os.access("/scratch", os.W_OK):
        return Path("/scratch")
    return Path(tempfile.gettempdir())


def stage_call(fn: Callable[[Any], Any], item: Any, scratch_dir: str | None = None) -> Any:
    """Copy a path item (file or folder) to node-local scratch, run fn on the copy, clean up."""
    if not isinstance(item, (str, os.PathLike)) or not os.path.exists(item):
        return fn(item)
    source = Path(item)
    root = scratch_root(scratch_dir)
    root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="emo-stage-", dir=root))
    try:
        local = workdir / source.name
        if source.is_dir():
            shutil.copytree(source, local)
        else:
            shutil.copy2(source, local)
        return fn(type(item)(local) if isinstance(item, Path) else str(local))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _Staged:
    """Picklable fn wrapper that stages each item first."""

    def __init__(self, fn: Callable[[Any], Any], scratch_dir: str | None):
        self.fn, self.scratch_dir = fn, scratch_dir

    def __call__(self, item: Any) -> Any:
        return stage_call(self.fn, item, self.scratch_dir)


def run_chunk(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Outcome]:
    """Body of one array task: every item's outcome, so one bad item never hides its chunk-mates."""
    return [call_item(fn, item) for item in chunk]


class SlurmExecutor(Executor):
    """Submit `fn` over items as a SLURM job array with submitit.

    `folder` holds submitit's job files and must be visible from the compute nodes (a shared file
    system); `chunk_size` items run per array task; `gpus_per_node`, `partition`, `time_min`, `mem_gb`,
    `cpus_per_task` become the sbatch request; `setup` adds shell lines before the job (module loads).
    """

    name = "slurm"

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        partition: str | None = None,
        time_min: int = 60,
        mem_gb: float | None = None,
        cpus_per_task: int = 1,
        gpus_per_node: int = 0,
        chunk_size: int = 1,
        array_parallelism: int = 256,
        stage: bool = False,
        scratch_dir: str | None = None,
        setup: list[str] | tuple[str, ...] = (),
        additional_parameters: dict[str, Any] | None = None,
        poll_s: float = 1.0,
        queue_check_s: float = 10.0,
        retries: int = 1,
        progress: bool | None = None,
    ):
        super().__init__(retries=retries, progress=progress)
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise EmoError("executor slurm: the 'submitit' package is not installed; pip install 'emo[cluster]'") from None
        if shutil.which("sbatch") is None:
            raise EmoError("executor slurm: `sbatch` not found on PATH; run on a SLURM login node or use --executor local")
        if chunk_size < 1:
            raise EmoError(f"executor slurm: chunk_size={chunk_size} must be >= 1")
        self.folder = Path(folder or os.environ.get("EMO_SLURM_FOLDER", Path.cwd() / ".emo-slurm")).absolute()
        self.chunk_size = chunk_size
        self.stage = stage
        self.scratch_dir = scratch_dir
        self.poll_s = poll_s
        self.queue_check_s = queue_check_s
        self.parameters: dict[str, Any] = {
            "time": int(time_min),
            "cpus_per_task": int(cpus_per_task),
            "array_parallelism": int(array_parallelism),
            "job_name": "emo",
            # workers import the same code as the driver (source checkouts, test modules)
            "setup": [f"export PYTHONPATH={shlex.quote(driver_pythonpath())}", *setup],
        }
        if partition:
            self.parameters["partition"] = partition
        if mem_gb:
            self.parameters["mem"] = f"{int(mem_gb * 1024)}MB"
        if gpus_per_node:
            self.parameters["gpus_per_node"] = int(gpus_per_node)
        if additional_parameters:
            self.parameters["additional_parameters"] = dict(additional_parameters)

    def _run(self, fn: Callable[[Any], Any], indexed: list[tuple[int, Any]], done: Callable[[bool], Any]) -> dict[int, Outcome]:
        import submitit

        executor = submitit.SlurmExecutor(folder=self.folder)
        executor.update_parameters(**self.parameters)
        work = _Staged(fn, self.scratch_dir) if self.stage else fn
        chunks = [indexed[k : k + self.chunk_size] for k in range(0, len(indexed), self.chunk_size)]
        jobs = executor.map_array(run_chunk, [work] * len(chunks), [[item for _, item in c] for c in chunks])
        outcomes: dict[int, Outcome] = {}
        waiting = dict(zip(range(len(jobs)), jobs))
        missing: dict[int, int] = {}  # job → consecutive queue checks it was absent from
        last_check = time.monotonic()
        try:
            while waiting:
                gone: set[int] = set()
                if time.monotonic() - last_check >= self.queue_check_s:
                    last_check = time.monotonic()
                    gone = self._left_queue(waiting, missing)
                for k, job in list(waiting.items()):
                    if job.done():
                        try:
                            chunk_outcomes = job.result()
                        except Exception as exc:  # the job itself failed: timeout, OOM, node failure
                            chunk_outcomes = [(False, f"{CRASHED}SLURM job {job.job_id} failed: {describe_exception(exc)}")] * len(chunks[k])
                    elif k in gone:
                        reason = f"{CRASHED}SLURM job {job.job_id} left the queue without a result (cancelled, or out of time/memory; log: {job.paths.stderr})"
                        chunk_outcomes = [(False, reason)] * len(chunks[k])
                    else:
                        continue
                    del waiting[k]
                    for (i, _), outcome in zip(chunks[k], chunk_outcomes):
                        outcomes[i] = outcome
                        done(outcome[0])
                if waiting:
                    time.sleep(self.poll_s)
        except BaseException:  # Ctrl-C or an error here: leave nothing running on the cluster
            for job in waiting.values():
                job.cancel(check=False)
            raise
        return outcomes

    @staticmethod
    def _left_queue(waiting: dict[int, Any], missing: dict[int, int]) -> set[int]:
        """Jobs absent from `squeue` twice in a row with no result file: killed, where accounting
        (sacct, which submitit asks) is not there to say so."""
        run = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True)
        if run.returncode:
            return set()
        queued = set(run.stdout.split())
        for k, job in waiting.items():
            missing[k] = 0 if job.job_id in queued or job.paths.result_pickle.exists() else missing.get(k, 0) + 1
        return {k for k in waiting if missing[k] >= 2}
