"""Statistics and downstream analyses of predicted (and measured) expression."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "clustering": ["clusters", "consensus_clustering"],
        "de": ["differential_expression"],
        "enrichment": ["enrich", "over_representation", "read_gmt"],
        "evaluate": ["EvaluateConfig", "evaluate"],
        "proliferation": ["proliferation_map", "proliferation_score"],
        "roi_validation": ["build_rois", "spatial_validation"],
    },
)
