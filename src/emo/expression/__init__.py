"""RNA-seq matrices → training targets (SPEC §2), and spatial transcriptomics input (issue 6)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "batch": ["align_cohort", "apply_offsets", "cohort_offsets"],
        "prepare": ["prepare_targets"],
        "pseudobulk": ["region_of_spots", "region_pseudobulk"],
        "readers": ["read_matrix"],
        "st_readers": ["add_her2st_labels", "normalize_spots", "read_her2st", "read_her2st_labels", "read_spatial", "read_spatial_h5ad", "read_visium", "scanpy_spatial"],
        "targets": ["read_targets"],
        "splits": ["PAPER_FRACTIONS", "SPLITS", "assign_splits"],
    },
)
