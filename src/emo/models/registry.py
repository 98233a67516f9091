"""One model interface: `load(model_dir)` reads `manifest["kind"]` and dispatches to the loader
registered for that kind, so every trained model predicts any tile store the same way.

A loaded model has `.kind`, `.genes` (output columns), `.manifest`, `.path`, `.backbone` (identity of
the features it needs, or of its own network when it reads pixels) and `.predict(source)` →
float32 [tiles, genes], where `source` is an `emo.slides.TileStore`, an `emo.features.FeatureStore`
or a float32 feature array [n, dim] (models that read pixels accept only a TileStore).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from emo.errors import EmoError


@runtime_checkable
class EmoModel(Protocol):
    kind: str
    manifest: dict
    path: Path | None

    @property
    def genes(self) -> list[str]: ...

    @property
    def backbone(self) -> dict: ...

    def predict(self, source: Any) -> np.ndarray: ...


Loader = Callable[[Path, dict], EmoModel]
MODEL_KINDS: dict[str, Loader] = {}
# Modules whose import registers the kinds emo writes (imported on first `load`, not at `import emo`).
_KIND_MODULES = ("emo.models.model", "emo.training.paper", "emo.training.finetune", "emo.training.tile_classifier",
                 "emo.spot_models.model")


def register_model_kind(kind: str) -> Callable[[Loader], Loader]:
    """Decorator: `loader(model_dir, manifest) -> EmoModel` loads model folders of `kind`."""

    def wrap(loader: Loader) -> Loader:
        MODEL_KINDS[kind] = loader
        return loader

    return wrap


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
    return MODEL_KINDS[kind](model_dir, manifest)


def reads_pixels(model: EmoModel) -> bool:
    """Whether the model predicts from tile pixels (a TileStore) rather than cached features."""
    return bool(getattr(model, "reads_pixels", False))
