"""Spot-level (spatial transcriptomics) fitting, prediction and evaluation; the fitted models are
`emo.models` kinds (`spot_ridge`: `emo.models.spot`, `finetune_cnn`)."""

from emo.models.spot import SpotModel, SpotModelConfig
from emo.spot_models.evaluate import gene_correlations, score_spearman
from emo.spot_models.predictions import prediction_anndata, write_spot_predictions
from emo.spot_models.ridge import fit_spot_model
from emo.spot_models.sections import (SpotSection, TrainSummary, check_sections, predict_section, section_features,
                                      train_spot_model)

__all__ = ["SpotModel", "SpotModelConfig", "SpotSection", "TrainSummary", "check_sections", "fit_spot_model",
           "gene_correlations", "predict_section", "prediction_anndata", "score_spearman", "section_features",
           "train_spot_model", "write_spot_predictions"]
