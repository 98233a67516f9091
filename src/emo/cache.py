"""Where emo keeps what it can recompute (spot-centred tile stores, their feature stores, parsed
count targets): one cache for every command, so a second run, or another command on the same
sections, reuses it.

`$EMO_CACHE_DIR`, else `$XDG_CACHE_HOME/emo`, else `~/.cache/emo` (the XDG default, as pip, torch
and Hugging Face do). Entries are keyed by their inputs and written atomically, so the folder can be
deleted at any time and an interrupted run resumes at the first missing entry.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(override: str | Path | None = None) -> Path:
    """`override` when given, else the default cache folder (not created here)."""
    if override:
        return Path(override)
    if os.environ.get("EMO_CACHE_DIR"):
        return Path(os.environ["EMO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emo"
