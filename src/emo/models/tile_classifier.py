"""A tile classifier on backbone features (kind `tile_classifier`, fitted by
`emo.training.tile_classifier`): class probabilities per tile."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emo.errors import EmoError
from emo.models.registry import EmoModel


class TileClassifier(EmoModel):
    """Tile classes from backbone features; behind `emo.models.load` its output columns (`genes`) are
    the classes and `predict(source)` gives their probabilities per tile."""

    kinds = ("tile_classifier",)

    @classmethod
    def from_folder(cls, model_dir: Path, manifest: dict) -> TileClassifier:
        return _load_classifier(model_dir, manifest)

    def __init__(self, manifest: dict, tensors: dict[str, np.ndarray], path: Path | None = None):
        self.manifest, self.t, self.path = manifest, tensors, path
        self.classes = list(manifest["classes"])

    @property
    def genes(self) -> list[str]:
        return list(self.classes)

    @property
    def backbone(self) -> dict:
        return self.manifest["backbone"]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float32) - self.t["mean"]) / self.t["scale"]
        logits = z @ self.t["coef"].T + self.t["intercept"]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, source, embed=None) -> np.ndarray:
        """float32 [tiles, classes] probabilities from features, a FeatureStore or a TileStore."""
        from emo.slides import TileStore

        if isinstance(source, TileStore):
            if embed is None:
                raise EmoError(f"classifier {self.path}: predicting a tile store needs an embedder (emo.features.embed)")
            source = embed(source, self.backbone)
        x = source.features if hasattr(source, "features") else np.asarray(source, np.float32)
        if x.ndim != 2 or x.shape[1] != int(self.backbone["dim"]):
            raise EmoError(f"classifier {self.path}: expects features [n, {self.backbone['dim']}], got {list(x.shape)}")
        return self.predict_proba(x).astype(np.float32)

    def predict_classes(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes, dtype=object)[self.predict_proba(features).argmax(axis=1)]


def _load_classifier(model_dir: Path, manifest: dict) -> TileClassifier:
    from safetensors.numpy import load_file

    return TileClassifier(manifest, load_file(str(Path(model_dir) / "weights.safetensors")), Path(model_dir))


def load_tile_classifier(model_dir: Path) -> TileClassifier:
    from emo.models import load

    model = load(model_dir)
    if not isinstance(model, TileClassifier):
        raise EmoError(f"{model_dir}: not a tile classifier (kind {model.kind}); use `emo train-classifier`")
    return model
