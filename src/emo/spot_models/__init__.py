"""Spot-level (spatial transcriptomics) training, prediction and evaluation."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "evaluate": ["gene_correlations", "score_spearman"],
        "model": ["SpotModel", "SpotModelConfig", "fit_spot_model"],
        "pipeline": ["predict_section", "section_features", "train_spot_model"],
        "predictions": ["prediction_anndata", "write_spot_predictions"],
    },
)
