"""Predictions: EMO-spatial (per tile) and EMO-average (per slide) from a trained model."""

from emo.prediction.average import read_average
from emo.prediction.slides import predict

__all__ = ["predict", "read_average"]
