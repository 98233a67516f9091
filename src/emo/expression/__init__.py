"""RNA-seq matrices → training targets, and spatial transcriptomics input (SPEC §2, §5)."""

from emo.expression.batch import align_cohort, apply_offsets, cohort_offsets
from emo.expression.prepare import prepare_targets
from emo.expression.readers import read_matrix
from emo.expression.splits import PAPER_FRACTIONS, SPLITS, assign_splits

__all__ = ["PAPER_FRACTIONS", "SPLITS", "align_cohort", "apply_offsets", "assign_splits", "cohort_offsets",
           "prepare_targets", "read_matrix"]
