"""One writer per output folder: `<folder>/.emo/run.lock`, held with `fcntl.flock`, names its holder.

The lock file holds the holder's pid, host, command and start time as JSON. The lock itself is the
OS's `flock` on that file, which the OS releases when the holder dies, even by kill -9 — so a lock
file with a holder but no `flock` on it is a stale lock of a dead run: it is taken over, with a
note. (`filelock` truncates the file on every attempt, which would erase the holder a refusal must
name; `flock` is what it uses underneath.) Not for NFS folders whose server lacks lock support.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from emo.errors import EmoError
from emo.io import remove_temporaries, storage_errors

LOCK_NAME = Path(".emo") / "run.lock"


def _holder(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode(errors="replace").strip()
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    return f"`{holder.get('command', 'emo')}` (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')})"


def _mine(holder: dict[str, Any] | None) -> bool:
    return bool(holder) and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def held_by(folder: str | os.PathLike[str]) -> str | None:
    """Who else holds `folder`'s lock now (one phrase), or None when it is free or this process holds it."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            return None if _mine(holder) else _describe(holder)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _held_inside(folder: Path) -> str | None:
    """A live lock of a stage command writing into a subfolder of `folder` (the caller holds `folder`'s)."""
    for path in folder.glob(f"**/{LOCK_NAME}"):
        if path.parent.parent != folder and (holder := held_by(path.parent.parent)):
            return f"{path.parent.parent} is in use by {holder}"
    return None


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], command: str, wait: bool = False,
                log: Callable[[str], Any] | None = None) -> Iterator[Path]:
    """Hold `folder` for one run: refuse (or, with `wait`, wait) while another process holds it or a
    folder above it; take over a dead holder's stale lock with a note; remove a dead run's temporary
    files. Yields the lock file."""
    folder = Path(folder)
    if log is None:
        from emo.log import warn as log  # the library's one output channel
    for above in folder.resolve().parents:  # a run of the whole study covers the stage folders in it
        if holder := held_by(above):
            raise EmoError(f"{folder}: inside {above}, which is in use by {holder}; wait for it to finish")
    path = folder / LOCK_NAME
    with storage_errors(folder):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_holder(fd))
            if not wait:
                raise EmoError(f"{folder}: in use by {holder}; wait for it to finish, or pass --wait") from None
            log(f"{folder}: in use by {holder}; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            if stale := _holder(fd):
                log(f"{folder}: took over the stale lock of {_describe(stale)}, which is no longer running")
        if inside := _held_inside(folder):
            raise EmoError(f"{folder}: {inside}; wait for it to finish")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        remove_temporaries(folder)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released cleanly: no stale holder left behind
    finally:
        os.close(fd)  # releases the flock


_HELD: dict[Path, contextlib.ExitStack] = {}


def hold_folder(folder: str | os.PathLike[str], command: str) -> None:
    """`folder_lock` until the command ends (`release_folders`, which the CLI calls when any command
    closes; again in the same command it is held already)."""
    key = Path(folder).resolve()
    if key in _HELD:
        return
    stack = contextlib.ExitStack()
    stack.enter_context(folder_lock(folder, command))
    _HELD[key] = stack


def release_folders() -> None:
    """Release every folder `hold_folder` holds (a command in the same process, e.g. in-process tests,
    may then take them again)."""
    while _HELD:
        _HELD.popitem()[1].close()
