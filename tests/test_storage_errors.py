"""Storage failures are the storage's, in one line: a read-only or full output folder names the folder
and the cause (exit 2, no traceback); a full disk stops the run without blaming the slide, and what
was written before stays intact."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emo.errors import EmoError
from emo.slides import TileStore, TilingConfig, tile_slide, tile_slides

SRC = Path(__file__).resolve().parents[1] / "src"
CONFIG = TilingConfig(tile_size_um=200, normalize=False)


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode == 0


@pytest.fixture
def read_only(tmp_path):
    """A folder no one may write to: mode 0555 for a normal user, a read-only tmpfs for root."""
    folder = tmp_path / "ro"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    elif _mount_tmpfs(folder, "ro,size=1m"):
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
    else:
        pytest.skip("running as root without permission to mount a read-only tmpfs")


@pytest.fixture
def slides(tmp_path, demo_source_slide):
    """Three slides (links to the real CMU H&E) and the bytes one slide's outputs take."""
    links = []
    for name in ("a", "b", "c"):
        links.append(tmp_path / "slides" / f"{name}.svs")
        links[-1].parent.mkdir(exist_ok=True)
        links[-1].symlink_to(demo_source_slide)
    tile_slide(links[0], tmp_path / "probe" / "a.h5", CONFIG)
    return links, sum(p.stat().st_size for p in (tmp_path / "probe").iterdir())


def emo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emo", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SRC)})


def test_read_only_output_folder_is_one_line_from_cli_and_library(read_only, slides, tmp_path):
    links, _ = slides
    with pytest.raises(EmoError, match=rf"^{read_only / 'tiles'}: cannot write \((read-only file system|permission denied)"):
        tile_slides(links[:1], read_only / "tiles", CONFIG)
    for args in (["tile", str(links[0]), "--out", str(read_only)],
                 ["predict", "--model", str(tmp_path), "--out", str(read_only / "predictions")],
                 ["expression", "prepare", "--matrix", str(links[0]), "--samples", str(links[0]), "--reference-cohort", "X",
                  "--out", str(read_only / "t.h5ad")]):
        result = emo(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"emo: error: {read_only}") and "cannot write (" in lines[0], lines


def _fill_after_first_store(monkeypatch):
    """Without a tmpfs: the write boundary raises ENOSPC from the second store on, as a full disk does."""
    import emo.slides.tiling as tiling

    real, calls = tiling.write_store, []

    def write_store(path, data, attrs):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data, attrs)

    monkeypatch.setattr(tiling, "write_store", write_store)


@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_full_disk_stops_the_run_and_blames_no_slide(slides, tmp_path, monkeypatch, disk):
    links, one_slide = slides
    out = tmp_path / "disk"
    mounted = disk == "tmpfs" and os.geteuid() == 0 and _mount_tmpfs(out, f"size={int(one_slide * 1.6) // 4096 * 4096 + 4096}")
    if disk == "tmpfs" and not mounted:
        pytest.skip("no permission to mount a tiny tmpfs; the injected variant covers the write boundary")
    if disk == "injected":
        _fill_after_first_store(monkeypatch)
    try:
        with pytest.raises(EmoError) as err:
            tile_slides(links, out / "tiles", CONFIG)
        message = str(err.value)
        assert message.startswith(f"{out / 'tiles'}: cannot write (no space left on the device; free space)")
        assert "slides are done)" in message and "corrupt" not in message
        assert len(TileStore(out / "tiles" / "a.h5")) > 0  # the slide finished before is intact
        assert not (out / "tiles" / "summary.csv").exists()  # no slide is recorded as bad
        assert not [p for p in (out / "tiles").iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
        if mounted:  # the command line says the same in one line
            result = emo("tile", *map(str, links), "--out", str(out))
            assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no space left" in result.stderr
    finally:
        if mounted:
            subprocess.run(["umount", str(out)], check=True)
