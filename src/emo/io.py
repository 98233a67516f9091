"""Atomic writes, content hashes and provenance shared by every stage.

Every artifact is written to a uniquely named temporary file beside its destination and renamed
into place, so a killed run never leaves a half-written file that a re-run would mistake for a
finished one; a full, read-only or forbidden folder surfaces as one `StorageError` line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from emo.errors import EmoError

#: errnos that are the storage's fault, not the input's
STORAGE_CAUSES = {
    errno.ENOSPC: "no space left on the device; free space",
    errno.EDQUOT: "disk quota exceeded; free space or raise the quota",
    errno.EROFS: "read-only file system; choose a writable output folder",
    errno.EACCES: "permission denied; make it writable or choose another output folder",
    errno.EPERM: "operation not permitted; make it writable or choose another output folder",
}
#: what a temporary file or folder of `atomic_path`/`atomic_dir` is named: `.<target name>.<random>.tmp`
TEMP_SUFFIX = ".tmp"


class StorageError(EmoError):
    """The output folder cannot be written (full, read-only, no permission): the run stops, the input is fine."""

    def __init__(self, folder: Path, exc: OSError):
        self.folder, self.errno = folder, exc.errno
        super().__init__(f"{folder}: cannot write ({STORAGE_CAUSES[exc.errno]}), then re-run: finished outputs are kept")


def storage_error(exc: BaseException, folder: str | os.PathLike[str] | None = None) -> StorageError | None:
    """`exc` as a `StorageError` naming `folder` (else the file the OS names) when the storage is at fault."""
    if isinstance(exc, StorageError):
        return exc
    if not isinstance(exc, OSError) or exc.errno not in STORAGE_CAUSES:
        return None
    if folder is not None and exc.filename and not Path(exc.filename).absolute().is_relative_to(Path(folder).absolute()):
        return None  # e.g. an input that may not be read: not the output folder's fault
    if folder is None:
        name = exc.filename or next(iter(re.findall(r"name = '([^']+)'", str(exc))), None)
        folder = Path(name).parent if name else Path.cwd()
    return StorageError(Path(folder), exc)


@contextlib.contextmanager
def storage_errors(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a storage failure while writing into `folder` into a one-line `StorageError`."""
    try:
        yield
    except OSError as exc:
        error = storage_error(exc, folder)
        if error is None:
            raise
        raise error from None


def remove_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files and folders a killed run left under `folder` (call while holding its lock)."""
    import shutil

    left = [Path(root) / name for root, dirs, files in os.walk(folder) for name in (*dirs, *files)
            if name.startswith(".") and name.endswith(TEMP_SUFFIX)]
    for path in sorted(left, key=lambda p: len(p.parts)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    return left


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no read-only call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file's (or folder's) data to disk: a renamed file is then complete after a power cut."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. folders cannot be opened on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders; the rename is still atomic
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success rename it onto `dest`, else delete it.

    The finished file gets the mode a plain `open()` would give (0666 less the umask, not mkstemp's
    0600) so colleagues sharing the folder can read it; file and folder are fsynced around the rename.
    """
    dest = Path(dest)
    with storage_errors(dest.parent):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, dir=dest.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with storage_errors(dest.parent):
            yield tmp_path
            if tmp_path.is_file():
                os.chmod(tmp_path, 0o666 & ~_umask())
                _fsync(tmp_path)
            os.replace(tmp_path, dest)
        _fsync(dest.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """`atomic_path` for a folder: fill the yielded temporary folder; on success it replaces `dest`."""
    import shutil

    dest = Path(dest)
    with storage_errors(dest.parent):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, dir=dest.parent))
    try:
        with storage_errors(dest.parent):
            yield tmp
            os.chmod(tmp, 0o777 & ~_umask())
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(dest: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)


def write_json_atomic(dest: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_table_atomic(dest: str | os.PathLike[str], frame: Any, index: bool = False) -> Path:
    """Write a pandas DataFrame as CSV or Parquet (by suffix), atomically."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        if dest.suffix == ".parquet":
            frame.to_parquet(tmp, index=index)
        else:
            frame.to_csv(tmp, index=index)
    return dest


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """Cheap identity of a (possibly huge) input file: size + mtime + hash of its first and last MiB."""
    p = Path(path)
    st = p.stat()
    h = hashlib.sha256(f"{st.st_size}:{int(st.st_mtime)}".encode())
    with open(p, "rb") as fh:
        h.update(fh.read(1 << 20))
        if st.st_size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read())
    return h.hexdigest()


#: keys that say when an artifact was written, not what it holds (left out of `content_hash`)
TIME_KEYS = frozenset({"created", "finished"})


def without_times(value: Any) -> Any:
    """A JSON-like value less its `TIME_KEYS` at every depth (what it says, not when)."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in TIME_KEYS}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def content_hash(path: str | os.PathLike[str]) -> str:
    """Identity of what a file holds, not of when it was written: an HDF5 file's datasets and
    attributes and a JSON file's values, both less their `TIME_KEYS`; any other file's bytes.
    Two identical runs therefore give their artifacts equal hashes (size + mtime would not)."""
    path = Path(path)
    if path.suffix == ".json":
        return params_hash(without_times(json.loads(path.read_text())))
    if path.suffix not in {".h5", ".h5ad", ".hdf5"}:
        return file_sha256(path)
    import h5py
    import numpy as np

    h = hashlib.sha256()

    def add(name: str, obj: Any) -> None:
        if name.rsplit("/", 1)[-1] in TIME_KEYS:
            return
        h.update(f"{name}\0".encode())
        for key in sorted(set(obj.attrs) - TIME_KEYS):
            h.update(f"@{key}={plain_attr(obj.attrs[key], arrays_as_lists=True)!r}\0".encode())
        if isinstance(obj, h5py.Dataset):
            data = np.asarray(obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) else obj[()])
            h.update(f"{obj.dtype}{obj.shape}".encode())
            h.update(data.tobytes() if data.dtype != object else repr(data.tolist()).encode())

    with h5py.File(path, "r") as f:
        add("/", f)
        f.visititems(add)
    return h.hexdigest()


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def provenance(**params: Any) -> dict[str, Any]:
    """Attributes every artifact carries: emo version, time, host and the parameters that made it."""
    from emo import __version__

    return {
        "emo_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "params": params,
        "params_hash": params_hash(params),
    }


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 120, **savefig_kw: Any) -> Path:
    """Save a matplotlib figure as PNG atomically and close it (figures are artifacts too)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **savefig_kw)
    plt.close(fig)
    return Path(path)


def plain_attr(value: Any, arrays_as_lists: bool = False) -> Any:
    """An HDF5 attribute as plain Python: bytes → str, numpy scalars → numbers (arrays kept, or lists)."""
    import numpy as np

    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if arrays_as_lists and isinstance(value, np.ndarray):
        return value.tolist()
    return value


def dense(x: Any, dtype: Any = None) -> Any:
    """An AnnData matrix (sparse or dense) as a numpy array, e.g. `dense(adata[:, genes].X)`."""
    import numpy as np

    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=dtype)
