"""Predictions: EMO-spatial (per tile) and EMO-average (per slide) from a trained model."""

from emo.prediction.spatial import predict

__all__ = ["predict"]
