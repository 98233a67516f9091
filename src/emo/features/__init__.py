"""Feature stage: one backbone pass over every kept tile, cached per slide (see docs/architecture.md)."""

from emo.features.extract import extract_features, find_tile_stores
from emo.features.store import FeatureStore, list_feature_stores, tile_store_params_hash, write_feature_store

__all__ = ["FeatureStore", "extract_features", "find_tile_stores", "list_feature_stores", "tile_store_params_hash",
           "write_feature_store"]
