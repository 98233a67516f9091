"""Predictions: EMO-spatial (per tile) and EMO-average (per slide) from a trained model."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={"average": ["read_average"], "config": ["PredictionConfig"], "slides": ["predict"]},
)
