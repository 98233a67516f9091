"""One run per output folder (`emo.run.lock`), with real processes: refusal naming the holder, --wait,
stale-lock takeover after kill -9, stage commands refused inside a locked study folder, and the
temporaries of a dead run removed when the next one starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emo.errors import EmoError
from emo.run.lock import LOCK_NAME, folder_lock, held_by

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC)}


def hold(folder: Path, seconds: float) -> subprocess.Popen:
    """A process holding `folder`'s lock for `seconds`; returns once it holds it."""
    code = (f"import time; from emo.run.lock import folder_lock\n"
            f"with folder_lock({str(folder)!r}, 'emo run study.yaml'):\n"
            f"    print('held', flush=True); time.sleep({seconds})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


def emo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emo", *args], capture_output=True, text=True, env=ENV)


def test_second_run_refuses_naming_the_holder(tmp_path):
    holder = hold(tmp_path, 600)
    try:
        with pytest.raises(EmoError) as err:
            with folder_lock(tmp_path, "emo run"):
                pass
        message = str(err.value)
        assert f"pid {holder.pid} on " in message and "`emo run study.yaml`" in message and "--wait" in message
        assert held_by(tmp_path).startswith("`emo run study.yaml` (pid ")
    finally:
        holder.kill()
        holder.wait()


def test_wait_waits_for_the_holder_then_runs(tmp_path):
    holder = hold(tmp_path, 2)
    start, notes = time.monotonic(), []
    with folder_lock(tmp_path, "emo run", wait=True, log=notes.append) as lock:
        waited = time.monotonic() - start
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert holder.wait() == 0 and waited > 1
    assert len(notes) == 1 and "waiting for it to finish" in notes[0] and f"pid {holder.pid}" in notes[0]
    assert held_by(tmp_path) is None and lock.read_text() == ""  # released cleanly: nothing stale left


def test_stale_lock_of_a_killed_run_is_taken_over_with_a_note(tmp_path):
    holder = hold(tmp_path, 600)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # the dead holder's record stays
    notes: list[str] = []
    with folder_lock(tmp_path, "emo run", log=notes.append):
        pass
    assert len(notes) == 1 and "took over the stale lock" in notes[0] and f"pid {holder.pid}" in notes[0]


def test_temporaries_of_a_dead_run_are_removed_at_the_next_start(tmp_path):
    (tmp_path / "tiles" / ".demo_13.h5.x1y2.tmp").parent.mkdir(parents=True)
    (tmp_path / "tiles" / ".demo_13.h5.x1y2.tmp").write_bytes(b"half")
    (tmp_path / "tiles" / ".demo_13.k3j4.tmp").mkdir()  # a half-written tile-JPEG folder
    (tmp_path / "tiles" / "demo_12.h5").write_bytes(b"finished")
    with folder_lock(tmp_path, "emo run", log=lambda m: None):
        assert sorted(p.name for p in (tmp_path / "tiles").iterdir()) == ["demo_12.h5"]


def test_cli_stage_command_and_run_refuse_a_locked_folder_in_one_line(tmp_path, shared_data):
    slide = shared_data("slides/CMU-1-Small-Region.svs")
    study = tmp_path / "study.yaml"
    study.write_text(f"out: {tmp_path / 'out'}\nslides:\n  paths: [{slide}]\nexpression:\n  targets: {slide}\n")
    holder = hold(tmp_path / "out", 600)
    try:
        for args in (["run", str(study)], ["tile", str(slide), "--out", str(tmp_path / "out")],
                     ["predict", "--model", str(tmp_path), "--features", str(tmp_path), "--out", str(tmp_path / "out" / "predictions")]):
            result = emo(*args)
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and f"pid {holder.pid}" in lines[0] and "emo run study.yaml" in lines[0], lines
        assert not (tmp_path / "out" / "tiles").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_run_refuses_while_a_stage_command_writes_inside_its_folder(tmp_path):
    holder = hold(tmp_path / "predictions", 600)
    try:
        with pytest.raises(EmoError, match=rf"{tmp_path / 'predictions'} is in use by .*pid {holder.pid}"):
            with folder_lock(tmp_path, "emo run"):
                pass
    finally:
        holder.kill()
        holder.wait()
