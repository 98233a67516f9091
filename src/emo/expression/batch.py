"""Cohort batch correction by per-gene median offsets (the paper's "RNA-seq data preparation").

offset_c(gene) = median over the reference cohort − median over cohort c, both over training,
tuning and validation samples only; the offset is added to every sample of cohort c, test samples
included, so test data never influence the correction. External (test-only) cohorts have no such
samples: as the paper did for ABiM, their own median (all their samples) is set against the
reference's training+validation median. The reference medians are kept so a new cohort can be
aligned later with `align_cohort`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emo.errors import EmoError

FIT_SPLITS = ("train", "tune", "validation")


def cohort_offsets(x: pd.DataFrame, cohort: pd.Series, split: pd.Series, reference: str) -> tuple[pd.DataFrame, pd.Series]:
    """Offsets (genes × cohorts) and the reference medians, from a samples × genes frame."""
    fit = split.isin(FIT_SPLITS).to_numpy()
    is_ref = (cohort == reference).to_numpy()
    if not (fit & is_ref).any():
        raise EmoError(f"reference cohort {reference!r} has no training/tuning/validation samples; "
                       "pick a reference cohort that is not external and has samples outside the test split")
    values = x.to_numpy(dtype=np.float64)
    ref_median = np.median(values[fit & is_ref], axis=0)
    offsets = {}
    for name in pd.unique(cohort):
        rows = (cohort == name).to_numpy()
        use = rows & fit if (rows & fit).any() else rows
        offsets[name] = ref_median - np.median(values[use], axis=0)
    return pd.DataFrame(offsets, index=x.columns), pd.Series(ref_median, index=x.columns, name="reference_median")


def apply_offsets(x: pd.DataFrame, cohort: pd.Series, offsets: pd.DataFrame) -> pd.DataFrame:
    """Add each sample's cohort offset (gene-wise) to its values."""
    shift = offsets[cohort.to_numpy()].to_numpy().T
    return x + shift


def align_cohort(x: pd.DataFrame, reference_median: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """Align a new cohort (samples × genes) to stored reference medians; returns values and offsets.

    Genes absent from the new cohort are reported, not dropped silently: they raise when none match.
    """
    genes = reference_median.index.intersection(x.columns)
    if genes.empty:
        raise EmoError("the new cohort shares no gene with the stored reference medians; "
                       "use the same gene identifiers (symbols or Ensembl ids) as the targets")
    offsets = reference_median[genes] - x[genes].median(axis=0)
    return x[genes] + offsets, offsets.rename("offset")
