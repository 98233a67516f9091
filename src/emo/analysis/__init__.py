"""Statistics and analyses of predicted expression (evaluation, proliferation, spatial validation)."""

from __future__ import annotations

from emo.analysis.evaluate import EvaluateConfig, evaluate
from emo.analysis.proliferation import proliferation_map, proliferation_score
from emo.analysis.spatial_validation import build_rois, spatial_validation

__all__ = ["EvaluateConfig", "evaluate", "proliferation_map", "proliferation_score", "build_rois", "spatial_validation"]
