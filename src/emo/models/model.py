"""The trained-model artefact: `manifest.json` + `weights.safetensors`, all `emo predict` needs."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np

from emo.errors import EmoError
from emo.formats import ArtifactAttrs
from emo.io import atomic_path, write_json_atomic
from emo.models.heads import HEADS
from emo.models.registry import Embedder, EmoModel

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


class ModelManifest(ArtifactAttrs):
    """What every model folder's manifest must say (each kind's loader checks the rest)."""

    WHAT = "model manifest"
    FIX = "retrain the model with this emo (`emo train`)"

    kind: str


def write_manifest(model_dir: str | Path, manifest: dict) -> Path:
    """Write a model folder's manifest (atomically, last: a folder with one is complete), format version stamped."""
    return write_json_atomic(Path(model_dir) / MANIFEST, {"format_version": ModelManifest.FORMAT, **manifest})


def _major(version: str) -> str:
    return str(version).split(".")[0]


class Model(EmoModel):
    """A loaded head (`ridge`, `mlp`, `attention_mil`) with its manifest: per-tile expression from
    backbone features."""

    kinds = tuple(HEADS)

    def __init__(self, manifest: dict, head, path: Path | None = None):
        self.manifest = manifest
        self.head = head
        self.path = path

    @property
    def dim(self) -> int:
        return int(self.manifest["backbone"]["dim"])

    def predict(self, source, embed: Embedder | None = None) -> np.ndarray:
        """float32 [tiles, genes] from a feature array, a FeatureStore, or a TileStore (embedded in
        memory by `embed` with the model's backbone, checked to give the identity it was trained on)."""
        from emo.slides import TileStore

        if isinstance(source, TileStore):
            if embed is None:
                raise EmoError(f"model {self.path}: predicting a tile store needs an embedder (emo.features.embed)")
            source = embed(source, self.backbone)
        elif hasattr(source, "features") and hasattr(source, "attrs"):  # a FeatureStore
            check_features(self, {"name": source.attrs.get("backbone"), "dim": source.dim}, str(source.path))
            source = source.features
        x = np.asarray(source, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise EmoError(f"model {self.path}: expects features [n, {self.dim}], got {list(x.shape)}")
        return np.asarray(self.head.predict(x), dtype=np.float32)

    def save(self, model_dir: str | Path) -> Path:
        self.path = save_model(Path(model_dir), self.manifest, self.head.to_tensors())
        return self.path

    @classmethod
    def from_folder(cls, model_dir: Path, manifest: dict) -> Model:
        """Heads on cached features: weights via safetensors, never pickle."""
        return _load_head(model_dir, manifest)


def check_features(model, identity: dict, where: str) -> None:
    """Refuse features from another backbone or with another dimension than `model.backbone` (one line)."""
    mine = model.backbone
    if int(identity.get("dim", -1)) != int(mine.get("dim", -2)) or (
        identity.get("name") is not None and mine.get("name") is not None and identity["name"] != mine["name"]
    ):
        raise EmoError(
            f"{where}: features are {identity.get('name')} dim {identity.get('dim')} but model {model.path} "
            f"was trained on {mine.get('name')} dim {mine.get('dim')}; run `emo features --backbone {mine.get('name')}`"
        )


def save_model(out_dir: Path, manifest: dict, tensors: dict[str, np.ndarray]) -> Path:
    """Weights first, manifest last (atomically), so a directory with a manifest is complete."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / WEIGHTS) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
    manifest = {k: (asdict(v) if is_dataclass(v) else v) for k, v in manifest.items()}
    write_manifest(out_dir, manifest)
    return out_dir


def read_manifest(model_dir: Path) -> dict:
    from emo import __version__

    path = Path(model_dir) / MANIFEST
    if not path.exists():
        raise EmoError(f"{model_dir}: no {MANIFEST}; pass a folder written by `emo train`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EmoError(f"{path}: not valid JSON ({exc}); re-run `emo train`") from None
    ModelManifest.check(path, manifest)
    version = str(manifest.get("emo_version", "?"))
    if _major(version) != _major(__version__):
        raise EmoError(
            f"{path}: model written by emo {version}, this is emo {__version__} (major versions differ); "
            f"retrain with `emo train` or use emo {_major(version)}.x"
        )
    return manifest


def _load_head(model_dir: Path, manifest: dict) -> Model:
    from safetensors.numpy import load_file

    from emo.models.heads import get_head_class

    head_cls = get_head_class(manifest.get("kind", "?"))
    weights = model_dir / WEIGHTS
    if not weights.exists():
        raise EmoError(f"{model_dir}: {WEIGHTS} missing; re-run `emo train`")
    head = head_cls.from_tensors(load_file(str(weights)), manifest.get("head_config", {}))
    if head.dim != int(manifest["backbone"]["dim"]):
        raise EmoError(f"{weights}: weights expect dim {head.dim}, manifest says {manifest['backbone']['dim']}")
    return Model(manifest, head, model_dir)
