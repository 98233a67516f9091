"""Spot-level expression model (kind `spot_ridge`): multi-scale frozen features + section-aware
reduced-rank ridge, fitted by `emo.spot_models.train_spot_model`.

Why each piece (leave-one-section-out on her2st B4/C2/C3/C4, docs/benchmarks.md):
- features are standardised within each section, which removes staining/scan offsets between sections;
- each spot's features are joined with the mean of its grid neighbours (spot context);
- targets are projected on principal components learned from the counts of *all* sections the model
  may see (count-only sections included), and the head predicts the component scores: a low-rank,
  multi-task target that the 30 count-only sections shape although they have no image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from emo.config import Components, StageConfig
from emo.errors import EmoError
from emo.models.backbone_specs import BackboneName
from emo.io import atomic_path, provenance
from emo.models.registry import Embedder, EmoModel


class SpotModelConfig(StageConfig):
    """The spot model's options (`emo spatial train` flags and the study's `spatial:` keys)."""

    tile_sizes_um: tuple[float, ...] = Field((224.0, 100.0, 448.0), min_length=1,
                                             description="spot-centred tile sizes in µm, features concatenated")
    tile_px: int = Field(224, ge=16, description="pixels a side of every spot tile")
    backbone: BackboneName = Field("efficientnet_lite0_ms", description="frozen feature backbone (emo.models.list_backbones())")
    alpha: float = Field(3.0, gt=0, description="ridge penalty per feature (λ = alpha × n_features)")
    n_components: Components = Field(10, description="target principal components learned from all count sections "
                                                     "(0 or null: every gene directly)")
    section_standardize: bool = Field(True, description="standardise features within each section (removes "
                                                        "staining/scan offsets between sections)")
    context_radius: float = Field(1.5, ge=0, description="neighbour radius in spot pitches (0: off)")

    @field_validator("tile_sizes_um")
    @classmethod
    def _positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if min(v) <= 0:
            raise ValueError(f"{list(v)}: give one or more positive tile sizes in µm")
        return v


def section_design(features: np.ndarray, xy: np.ndarray, config: SpotModelConfig,
                   radius: float | None = None) -> np.ndarray:
    """Per-section design matrix: (standardised) spot features, plus neighbour means for context.

    Neighbours are the spots within `radius` of `xy` (default `config.context_radius`, for array-grid
    coordinates; pass the radius in µm with µm coordinates)."""
    f = np.asarray(features, np.float64)
    if config.section_standardize:
        f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    radius = config.context_radius if radius is None else radius
    if config.context_radius > 0 and len(f):
        from scipy.spatial import cKDTree  # imported here: `emo spatial --help` reads this module's config

        neighbours = cKDTree(xy).query_ball_point(xy, radius)
        ctx = np.stack([f[nb].mean(0) for nb in neighbours])
        f = np.concatenate([f, ctx], axis=1)
    return f


# Training facts kept in the manifest: sections, and the spot geometry used for context in µm.
META_KEYS = ("train_sections", "basis_sections", "spot_pitch_um", "context_radius_um")


class SpotModel(EmoModel):
    """Fitted head: x ↦ ((x − μ)/σ) W Vᵀ + ȳ, one matmul for all genes.

    It reads pixels: `predict` takes a tile store, embeds tiles around its tile centres at the
    model's own sizes (through the store's slide reader, in memory) and takes neighbour context
    within `context_radius_um` of each tile centre (the training spot pitch × `context_radius`)."""

    kinds = ("spot_ridge",)
    reads_pixels = True

    def __init__(self, genes: list[str], config: SpotModelConfig, tensors: dict[str, np.ndarray],
                 meta: dict | None = None, path: Path | None = None, manifest: dict | None = None):
        self.config, self.path = config, path
        self.x_mean, self.x_std, self.coef, self.y_mean = (tensors[k] for k in ("x_mean", "x_std", "coef", "y_mean"))
        self.basis = tensors.get("basis")  # [n_genes, k], or None: genes fitted directly
        meta = {k: v for k, v in (meta or {}).items() if k in META_KEYS}
        self.manifest = manifest or {"kind": "spot_ridge", "genes": list(genes), "config": config.model_dump(mode="json"),
                                     **meta, **provenance(**config.model_dump(mode="json"))}

    @property
    def meta(self) -> dict:
        return {k: self.manifest[k] for k in META_KEYS if k in self.manifest}

    @property
    def backbone(self) -> dict:
        """The network it runs on its own tiles (it needs no cached features)."""
        return {"name": self.config.backbone, "tile_sizes_um": list(self.config.tile_sizes_um),
                "tile_px": self.config.tile_px}

    @property
    def context_radius_um(self) -> float:
        if "context_radius_um" not in self.manifest:
            raise EmoError(f"{self.path}: spot model without context_radius_um (written before emo learned it); "
                           "retrain with `emo spatial train`")
        return float(self.manifest["context_radius_um"])

    def predict_design(self, design: np.ndarray) -> np.ndarray:
        scores = ((design - self.x_mean) / self.x_std) @ self.coef
        out = scores @ self.basis.T if self.basis is not None else scores
        return (out + self.y_mean).astype(np.float32)

    def predict_section(self, section: Any) -> np.ndarray:
        """float32 [spots, genes] for one whole section (`emo.spot_models.SpotSection`: section
        statistics and context need all its spots)."""
        return self.predict_design(section_design(section.features(self.config), section.grid_xy, self.config))

    def predict(self, source: Any, embed: Embedder | None = None) -> np.ndarray:
        """float32 [tiles, genes] for every tile of a tile store (any slide; no counts or spot grid)."""
        self.pixels_only(source)
        if len(source) == 0:
            return np.zeros((0, len(self.genes)), np.float32)
        if embed is None:
            raise EmoError(f"spot model {self.path}: predicting a tile store needs an embedder (emo.features.embed)")
        identity = {"name": self.config.backbone}
        features = np.concatenate([embed(source.centred_view(size, self.config.tile_px), identity)
                                   for size in self.config.tile_sizes_um], axis=1)
        size = float(source.attrs["tile_size_level0"])
        centres_um = (np.asarray(source.coords_px, np.float64) + size / 2.0) * float(source.mpp)
        return self.predict_design(section_design(features, centres_um, self.config, self.context_radius_um))

    def save(self, model_dir: str | Path) -> Path:
        from safetensors.numpy import save_file

        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        tensors = {"x_mean": self.x_mean, "x_std": self.x_std, "coef": self.coef, "y_mean": self.y_mean}
        if self.basis is not None:
            tensors["basis"] = self.basis
        with atomic_path(model_dir / "weights.safetensors") as tmp:
            save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(tmp))
        from emo.models.model import write_manifest

        write_manifest(model_dir, self.manifest)
        self.path = model_dir
        return model_dir

    @classmethod
    def from_folder(cls, model_dir: Path, manifest: dict) -> SpotModel:
        from safetensors.numpy import load_file

        t = {k: v.astype(np.float64) for k, v in load_file(str(Path(model_dir) / "weights.safetensors")).items()}
        config = SpotModelConfig(**manifest["config"])
        return cls(manifest["genes"], config, t, path=Path(model_dir), manifest=manifest)
