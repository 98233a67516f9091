"""Atomic writes, content hashes and provenance shared by every stage.

Every artifact is written to a temporary file beside its destination and renamed into place, so a
killed run never leaves a half-written file that a re-run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


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
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~_umask())
            _fsync(tmp_path)
        os.replace(tmp_path, dest)
        _fsync(dest.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
