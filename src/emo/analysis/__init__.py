"""Statistics and downstream analyses of predicted (and measured) expression."""

from __future__ import annotations

from emo.analysis.clustering import clusters, consensus_clustering
from emo.analysis.de import differential_expression
from emo.analysis.enrichment import enrich, over_representation, read_gmt
from emo.analysis.evaluate import EvaluateConfig, evaluate
from emo.analysis.proliferation import proliferation_map, proliferation_score
from emo.analysis.roi_validation import build_rois, spatial_validation

__all__ = [
    "EvaluateConfig",
    "build_rois",
    "clusters",
    "consensus_clustering",
    "differential_expression",
    "enrich",
    "evaluate",
    "over_representation",
    "proliferation_map",
    "proliferation_score",
    "read_gmt",
    "spatial_validation",
]
