"""Statistics and downstream analyses of predicted (and measured) expression."""

from emo.analysis.clustering import clusters, consensus_clustering
from emo.analysis.de import differential_expression
from emo.analysis.enrichment import enrich, over_representation, read_gmt

__all__ = ["clusters", "consensus_clustering", "differential_expression", "enrich", "over_representation",
           "read_gmt"]
