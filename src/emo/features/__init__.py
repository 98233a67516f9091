"""Feature stage: one backbone pass over every kept tile, cached per slide (see docs/architecture.md)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "extract": ["embed", "extract_features"],
        "store": ["FeatureStore", "feature_identity", "open_feature_stores", "resolve_feature_dir", "tile_store_params_hash", "write_feature_store"],
    },
)
