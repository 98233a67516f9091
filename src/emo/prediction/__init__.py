"""Predictions: EMO-spatial (per tile) and EMO-average (per slide) from a trained model."""

from emo.prediction.slides import predict

__all__ = ["predict"]
