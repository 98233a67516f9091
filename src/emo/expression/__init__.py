"""RNA-seq matrices → training targets (SPEC §2), and spatial transcriptomics input (issue 6)."""

from emo.expression.batch import align_cohort, apply_offsets, cohort_offsets
from emo.expression.prepare import prepare_targets
from emo.expression.pseudobulk import region_of_spots, region_pseudobulk
from emo.expression.readers import read_matrix
from emo.expression.st_readers import (add_her2st_labels, normalize_spots, read_her2st, scanpy_spatial,
                                    read_spatial, read_spatial_h5ad, read_visium)
from emo.expression.splits import PAPER_FRACTIONS, SPLITS, assign_splits
from emo.expression.targets import read_targets

__all__ = ["PAPER_FRACTIONS", "SPLITS", "add_her2st_labels", "align_cohort", "apply_offsets", "assign_splits",
           "cohort_offsets", "normalize_spots", "prepare_targets", "read_her2st",
           "read_matrix", "read_spatial", "read_targets", "read_spatial_h5ad", "read_visium", "region_of_spots", "region_pseudobulk",
           "scanpy_spatial"]
