"""Patient-level train / tune / validation / test splits (never by slide or tile).

Patients are shuffled with a seeded generator inside each stratum, strata are laid end to end, and
the whole line is dealt out along one low-discrepancy sequence of split labels (at each position the
split furthest behind its target fraction is served). Every stratum therefore gets its share of each
split, and every split's size is within one patient of its target fraction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emo.errors import EmoError
from emo.expression.config import PAPER_FRACTIONS, SPLITS


def split_sequence(n: int, fractions: tuple[float, ...] = PAPER_FRACTIONS) -> np.ndarray:
    """Indices into `fractions` for n positions; every prefix stays within one of its target counts."""
    f = np.asarray(fractions, dtype=float)
    if len(f) != len(SPLITS) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise EmoError(f"split fractions {tuple(fractions)} must be four non-negative numbers (train, tune, validation, test) summing to 1")
    counts = np.zeros(len(f))
    out = np.empty(n, dtype=int)
    for t in range(n):
        k = int(np.argmax(f * (t + 1) - counts))
        out[t] = k
        counts[k] += 1
    return out


def assign_splits(patients: pd.DataFrame, *, seed: int = 0, fractions: tuple[float, ...] = PAPER_FRACTIONS,
                  stratify: str | None = None) -> pd.Series:
    """Split label per patient.

    `patients` is indexed by `patient_id`, with a bool `external` column (external cohorts are
    test-only), a `cohort` column and, when stratifying, the stratum column (missing values form
    their own stratum).
    """
    split = pd.Series("test", index=patients.index, name="split", dtype=object)
    internal = patients.index[~patients["external"].to_numpy(bool)]
    rng = np.random.default_rng(seed)
    # Cohorts are always strata, so every cohort contributes its share of each split.
    strata = patients.loc[internal, "cohort"].astype(str) if "cohort" in patients else pd.Series("all", index=internal)
    if stratify:
        values = patients.loc[internal, stratify]
        strata = strata + "|" + values.astype(str).where(values.notna(), "<missing>")
    order: list = []
    for _, members in sorted(strata.groupby(strata).groups.items(), key=lambda kv: str(kv[0])):
        members = sorted(members)
        order.extend(members[i] for i in rng.permutation(len(members)))
    seq = split_sequence(len(order), fractions)
    split.loc[order] = [SPLITS[k] for k in seq]
    return split
