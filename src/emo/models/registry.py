"""One model interface: every trained model emo writes is an `EmoModel` subclass that registers the
manifest kinds it reads on import (as timm models do); `load(model_dir)` reads `manifest["kind"]`
and builds that class, so every trained model predicts any tile store the same way.

A model has `.kind`, `.genes` (output columns), `.manifest`, `.path`, `.backbone` (identity of the
features it needs, or of its own network when it reads pixels), `.model_id` (the identity of its
exact weights), `.save(model_dir)` and `.predict(source, embed=None)` → float32 [tiles, genes],
where `source` is an `emo.slides.TileStore`, an `emo.features.FeatureStore` or a float32 feature
array [n, dim] (models that read pixels accept only a TileStore). `embed(store, backbone) -> array`
is `emo.features.embed`, passed in by the caller so that `emo.models` never imports `emo.features`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from emo.errors import EmoError

Embedder = Callable[[Any, dict], np.ndarray]
MODEL_KINDS: dict[str, type[EmoModel]] = {}
# The modules that define emo's model kinds; importing them registers the kinds (done on first `load`).
_KIND_MODULES = ("emo.models.model", "emo.models.paper_cnn", "emo.models.finetune_cnn", "emo.models.tile_classifier",
                 "emo.models.spot")


class EmoModel:
    """Base of every trained model: subclasses name the manifest `kinds` they load."""

    kinds: ClassVar[tuple[str, ...]] = ()
    reads_pixels: ClassVar[bool] = False  # predicts from tile pixels (a TileStore), not cached features
    manifest: dict
    path: Path | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for kind in cls.__dict__.get("kinds", ()):
            MODEL_KINDS[kind] = cls

    @classmethod
    def from_folder(cls, model_dir: Path, manifest: dict) -> EmoModel:
        """The model saved in `model_dir` (manifest already read and version-checked)."""
        raise NotImplementedError

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def genes(self) -> list[str]:
        return list(self.manifest["genes"])

    @property
    def backbone(self) -> dict:
        return dict(self.manifest["backbone"])

    @property
    def model_id(self) -> str:
        """Identity of the exact weights, by content (identical trainings are one model): outputs of
        another model are never mistaken for finished."""
        from emo.io import content_hash, params_hash, without_times

        files = [] if self.path is None else [self.path / "weights.safetensors", self.path / "done.json",
                                              *sorted(self.path.glob("genes/*/done.json"))]
        manifest = {k: v for k, v in without_times(self.manifest).items() if k != "targets"}  # where targets were read from
        return params_hash({"manifest": manifest, "weights": [content_hash(p) for p in files if p.exists()]})

    def predict(self, source: Any, embed: Embedder | None = None) -> np.ndarray:
        raise NotImplementedError

    def save(self, model_dir: str | Path) -> Path:
        raise EmoError(f"{self.path}: a {self.kind} model is saved by the run that trains it; copy its folder")

    def pixels_only(self, source: Any) -> None:
        """Models that read pixels take a tile store, never features (one line saying so)."""
        from emo.slides import TileStore

        if not isinstance(source, TileStore):
            raise EmoError(f"{self.kind} model {self.path}: reads tile pixels; pass a tile store "
                           "(`emo predict --tiles TILE_DIR`), not features")


def load(model_dir: str | Path) -> EmoModel:
    """Load any model folder emo writes (manifest checked for its major version)."""
    from emo.models.model import read_manifest

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    for name in _KIND_MODULES:
        import_module(name)
    kind = str(manifest.get("kind", "?"))
    if kind not in MODEL_KINDS:
        raise EmoError(f"{model_dir / 'manifest.json'}: unknown model kind {kind!r}; "
                       f"this emo loads {', '.join(sorted(MODEL_KINDS))}")
    return MODEL_KINDS[kind].from_folder(model_dir, manifest)


def load_kind(model_dir: str | Path, cls: type[EmoModel]) -> EmoModel:
    """`load`, refusing a folder of another kind than `cls` (for commands that need one kind)."""
    model = load(model_dir)
    if not isinstance(model, cls):
        raise EmoError(f"{model_dir}: kind={model.kind!r} is not a {cls.__name__} ({', '.join(cls.kinds)})")
    return model
