"""Feature stage: one backbone pass over every kept tile, cached per slide (see docs/architecture.md)."""

from emo.features.extract import extract_features
from emo.features.store import (FeatureStore, feature_identity, open_feature_stores, resolve_feature_dir,
                                tile_store_params_hash, write_feature_store)

__all__ = ["FeatureStore", "extract_features", "feature_identity", "open_feature_stores", "resolve_feature_dir",
           "tile_store_params_hash", "write_feature_store"]
