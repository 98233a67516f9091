"""Spot-level (spatial transcriptomics) fitting, prediction and evaluation; the fitted models are
`emo.models` kinds (`spot_ridge`: `emo.models.spot`, `finetune_cnn`)."""

import lazy_loader

_attr, __dir__, _names = lazy_loader.attach(
    __name__,
    submod_attrs={
        "evaluate": ["gene_correlations", "score_spearman"],
        "predictions": ["prediction_anndata", "write_spot_predictions"],
        "ridge": ["fit_spot_model"],
        "sections": ["SpotSection", "TrainSummary", "check_sections", "predict_section", "section_features",
                     "train_spot_model"],
    },
)
__all__ = [*_names, "SpotModel", "SpotModelConfig"]


def __getattr__(name: str):
    if name in ("SpotModel", "SpotModelConfig"):  # the model kind lives in emo.models.spot
        from emo.models import spot

        return getattr(spot, name)
    return _attr(name)
