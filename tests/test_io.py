"""emo.io atomic writes: finished files honour the umask, are fsynced with their folder, and a failed
write leaves nothing behind."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from emo import io


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_mode_of_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    paths = [
        io.write_text_atomic(tmp_path / "a.txt", "x"),
        io.write_json_atomic(tmp_path / "sub" / "b.json", {"k": 1}),
        io.write_table_atomic(tmp_path / "c.csv", pd.DataFrame({"v": np.arange(3)})),
    ]
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == mode, p


def test_file_and_folder_are_fsynced_before_the_write_returns(tmp_path, monkeypatch):
    synced: list[tuple[str, bool]] = []
    real = os.fsync

    def spy(fd):  # the real fsync runs; only which inodes it flushed is recorded
        st = os.fstat(fd)
        synced.append((st.st_ino, stat.S_ISDIR(st.st_mode)))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    dest = io.write_text_atomic(tmp_path / "r.txt", "done")
    assert (dest.stat().st_ino, False) in synced  # the file (same inode after the rename)
    assert (tmp_path.stat().st_ino, True) in synced  # and the folder holding the new name


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError), io.atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_content_hash_is_what_a_file_holds_not_when_it_was_written(tmp_path):
    import json
    import time

    import anndata

    def write(path, x):
        adata = anndata.AnnData(X=np.asarray(x, np.float32), obs=pd.DataFrame(index=["s1", "s2"]))
        adata.uns["emo"] = io.provenance(seed=0)
        adata.write_h5ad(path)
        return path

    a = write(tmp_path / "a.h5ad", [[1.0], [2.0]])
    time.sleep(1.1)  # a later `created` and mtime
    b = write(tmp_path / "b.h5ad", [[1.0], [2.0]])
    c = write(tmp_path / "c.h5ad", [[1.0], [2.5]])
    assert io.file_fingerprint(a) != io.file_fingerprint(b)
    assert io.content_hash(a) == io.content_hash(b) != io.content_hash(c)
    io.write_json_atomic(tmp_path / "a.json", {"kind": "ridge", "created": "2026-01-01", "provenance": {"created": 1}})
    (tmp_path / "b.json").write_text(json.dumps({"provenance": {"created": 2}, "kind": "ridge"}))
    assert io.content_hash(tmp_path / "a.json") == io.content_hash(tmp_path / "b.json")
