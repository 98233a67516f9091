"""Spot-level (spatial transcriptomics) training, prediction and evaluation."""

from emo.spot_models.evaluate import gene_correlations, score_spearman
from emo.spot_models.model import SpotModel, SpotModelConfig, fit_spot_model
from emo.spot_models.pipeline import predict_section, section_features, train_spot_model
from emo.spot_models.predictions import prediction_anndata, write_spot_predictions

__all__ = ["SpotModel", "SpotModelConfig", "fit_spot_model", "gene_correlations", "predict_section",
           "prediction_anndata", "score_spearman", "section_features", "train_spot_model", "write_spot_predictions"]
