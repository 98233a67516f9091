"""Executors: the same function over the same items gives identical, order-preserving results through
the local process pool, a local Ray cluster and a real single-node SLURM (brought up by
.ci/slurm-up.sh); a flaky item is retried, a broken one is reported while the others' results are kept.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import missing

from emo.errors import EmoError
from emo.executors import ExecutorError, get_executor


pytestmark = pytest.mark.slow  # starts Ray and SLURM workers


def work(seed: int) -> tuple[float, int]:
    """Deterministic numeric work per item, plus the pid that ran it."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((64, 64))
    return float(np.abs(np.linalg.eigvalsh(a @ a.T)).sum()), os.getpid()


def flaky(item: tuple[int, str]) -> int:
    """Fails the first time it sees an item (leaving a marker file), succeeds on the retry; 13 always fails."""
    x, marker_dir = item
    if x == 13:
        raise ValueError(f"item {x} is broken")
    marker = Path(marker_dir) / f"{x}.seen"
    if not marker.exists():
        marker.touch()
        raise RuntimeError(f"transient failure on {x}")
    return x * 10


def die_once(item: tuple[int, str]) -> int:
    """Kills its worker process the first time it sees item 1 (a segfault or OOM kill, say)."""
    x, marker_dir = item
    marker = Path(marker_dir) / f"{x}.died"
    if x == 1 and not marker.exists():
        marker.touch()
        os._exit(1)
    return x + 100


def killed_once(item: tuple[int, str]) -> int:
    """On its first run the SLURM job running item 0 is cancelled by the scheduler (scancel)."""
    x, marker_dir = item
    marker = Path(marker_dir) / f"{x}.killed"
    if x == 0 and not marker.exists():
        marker.touch()
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
        subprocess.run(["scancel", job], check=True)
        time.sleep(60)
    return x - 1


def read_staged(path: str) -> tuple[str, str]:
    return Path(path).read_text(), str(Path(path).parent.parent)


ITEMS = list(range(7))
EXPECTED = [work(i)[0] for i in ITEMS]


def check_identical(executor) -> None:
    out = executor.map(work, ITEMS, desc="work")
    assert [v for v, _ in out] == EXPECTED  # bit-identical, item order kept
    return {pid for _, pid in out}


def check_retry_and_report(executor, tmp_path: Path) -> None:
    items = [(x, str(tmp_path)) for x in (1, 2, 13, 4)]
    with pytest.raises(ExecutorError) as info:
        executor.map(flaky, items, desc="flaky")
    err = info.value
    assert set(err.failures) == {2}
    assert "item 2" in str(err) and "item 13 is broken" in str(err)
    assert err.results == [10, 20, None, 40]  # transient failures were retried, others kept
    assert len(str(err).splitlines()) == 1


# ---------------------------------------------------------------- local


def test_local_in_process_and_pool_identical():
    assert check_identical(get_executor("local", workers=1, progress=False)) == {os.getpid()}
    with get_executor("local", workers=2, progress=False) as executor:
        pids = check_identical(executor)
        assert len(pids | check_identical(executor)) <= 2  # the next map reuses the 2 workers
    assert os.getpid() not in pids


def test_local_retries_and_reports(tmp_path):
    with get_executor("local", workers=2, retries=1, progress=False) as executor:
        check_retry_and_report(executor, tmp_path)


def test_local_worker_killed_mid_item_is_retried_on_a_fresh_pool(tmp_path):
    with get_executor("local", workers=2, retries=1, progress=False) as executor:
        assert executor.map(die_once, [(x, str(tmp_path)) for x in range(4)], desc="dies") == [100, 101, 102, 103]


def test_without_retries_a_transient_failure_is_reported(tmp_path):
    with pytest.raises(ExecutorError) as info:
        get_executor("local", retries=0, progress=False).map(flaky, [(5, str(tmp_path))], desc="once")
    assert "transient failure on 5" in str(info.value)


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(EmoError, match="unknown; choose one of local, ray, slurm"):
        get_executor("dask")
    with pytest.raises(EmoError, match="bad option"):
        get_executor("local", nodes=3)
    with pytest.raises(EmoError, match="workers=0"):
        get_executor("local", workers=0)
    executor = get_executor("local")
    assert get_executor(executor) is executor


def test_failures_of_big_items_are_reported_in_one_short_line():
    items = [np.zeros((50, 50)), 4 * np.eye(50)]
    with pytest.raises(ExecutorError) as info:
        get_executor("local", retries=0, progress=False).map(np.linalg.cholesky, items, desc="cholesky")
    message = str(info.value)
    assert "\n" not in message and len(message) < 400 and set(info.value.failures) == {0}
    assert "LinAlgError" in message and np.array_equal(info.value.results[1], 2 * np.eye(50))


# ---------------------------------------------------------------- ray


@pytest.fixture(scope="module")
def ray_executor():
    pytest.importorskip("ray")
    executor = get_executor("ray", cluster_cpus=2, progress=False)
    yield executor
    executor.close()


def test_ray_identical_to_local(ray_executor):
    import ray

    assert ray.cluster_resources().get("CPU") == 2
    assert os.getpid() not in check_identical(ray_executor)


def test_ray_retries_and_reports(ray_executor, tmp_path):
    check_retry_and_report(ray_executor, tmp_path)


# ---------------------------------------------------------------- slurm


def slurm_up() -> str | None:
    """None when a SLURM node is idle, else why not."""
    if os.environ.get("EMO_SLURM_UNAVAILABLE"):
        return f".ci/slurm-up.sh failed: {os.environ['EMO_SLURM_UNAVAILABLE']}"
    if shutil.which("sinfo") is None:
        return "sinfo not on PATH; run .ci/slurm-up.sh (as root) to start a single-node SLURM"
    run = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    states = run.stdout.split()
    if run.returncode or not any(s in ("idle", "mix", "alloc", "plnd", "comp") for s in states):
        return f"no usable SLURM node (sinfo: {run.stdout.strip() or run.stderr.strip()}); run .ci/slurm-up.sh"
    return None


@pytest.fixture
def slurm_folder(tmp_path):
    why = slurm_up()
    if why:
        missing(f"SLURM must be up under CI: {why}")
    return tmp_path / "submitit"


def test_slurm_identical_to_local_in_chunks(slurm_folder):
    partition = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()[0].rstrip("*")
    executor = get_executor(
        "slurm", folder=slurm_folder, chunk_size=3, partition=partition, time_min=5, mem_gb=0.5, poll_s=0.3, progress=False
    )
    pids = check_identical(executor)
    assert os.getpid() not in pids and len(pids) == 3  # 7 items in 3 array tasks
    (script,) = slurm_folder.glob("*_submission.sh")  # one job array, with the requested resources
    text = script.read_text()
    assert f"--partition={partition}" in text and "--time=5" in text and "--mem=512MB" in text and "--array=0-2" in text


def test_slurm_retries_and_reports(slurm_folder, tmp_path):
    check_retry_and_report(get_executor("slurm", folder=slurm_folder, poll_s=0.3, progress=False), tmp_path)


def test_slurm_job_killed_by_the_scheduler_is_retried(slurm_folder, tmp_path):
    executor = get_executor("slurm", folder=slurm_folder, poll_s=0.3, queue_check_s=1, progress=False)
    assert executor.map(killed_once, [(x, str(tmp_path)) for x in range(3)], desc="killed") == [-1, 0, 1]
    assert (tmp_path / "0.killed").exists()


def test_slurm_stages_inputs_to_node_local_scratch(slurm_folder, tmp_path):
    inputs = []
    for k in range(2):
        inputs.append(tmp_path / f"slide{k}.txt")
        inputs[-1].write_text(f"pixels {k}")
    scratch = tmp_path / "scratch"
    executor = get_executor("slurm", folder=slurm_folder, stage=True, scratch_dir=str(scratch), poll_s=0.3, progress=False)
    out = executor.map(read_staged, [str(p) for p in inputs], desc="staged")
    assert [text for text, _ in out] == ["pixels 0", "pixels 1"]
    assert all(root == str(scratch) for _, root in out)  # fn saw the copy on scratch
    assert list(scratch.iterdir()) == []  # and the copy was removed
