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


def require_data(relpath: str) -> Path:
    path = SHARED_DATA / relpath
    if not path.exists():
        msg = f"real dataset missing: {path} (see ../shared/data/README.md)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def shared_data():
    return require_data
