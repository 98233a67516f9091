"""Spot-level expression model: multi-scale frozen features + section-aware reduced-rank ridge.

Why each piece (leave-one-section-out on her2st B4/C2/C3/C4, docs/benchmarks.md):
- features are standardised within each section, which removes staining/scan offsets between sections;
- each spot's features are joined with the mean of its grid neighbours (spot context);
- targets are projected on principal components learned from the counts of *all* sections the model
  may see (count-only sections included), and the head predicts the component scores: a low-rank,
  multi-task target that the 30 count-only sections shape although they have no image.
All genes are fitted in one linear solve (dual form, spots ≪ features).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from emo.errors import EmoError
from emo.io import atomic_path, provenance
from emo.models.model import write_manifest
from emo.models.registry import register_model_kind


@dataclass(frozen=True)
class SpotModelConfig:
    tile_sizes_um: tuple[float, ...] = (224.0, 100.0, 448.0)
    tile_px: int = 224
    backbone: str = "efficientnet_lite0_ms"  # a name from emo.models.list_backbones()
    alpha: float = 3.0  # ridge penalty per feature (λ = alpha × n_features); the her2st study's value
    n_components: int | None = 10  # target PCs; None = predict every gene directly
    section_standardize: bool = True
    context_radius: float = 1.5  # in array-grid units (1 = spot pitch); 0 disables spot context

    def __post_init__(self) -> None:
        if not self.tile_sizes_um or min(self.tile_sizes_um) <= 0:
            raise EmoError(f"tile_sizes_um={self.tile_sizes_um}: give one or more positive tile sizes in µm")
        if self.alpha <= 0:
            raise EmoError(f"alpha={self.alpha}: the ridge penalty must be positive")
        if self.n_components is not None and self.n_components < 1:
            raise EmoError(f"n_components={self.n_components}: use ≥ 1, or None to fit every gene directly")


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


def target_basis(expression: list[np.ndarray], n_components: int) -> np.ndarray:
    """Top principal axes [genes, k] of section-centred expression pooled over sections."""
    pooled = np.concatenate([np.asarray(y, np.float64) - y.mean(0) for y in expression])
    _, _, vt = np.linalg.svd(pooled, full_matrices=False)
    if n_components > vt.shape[0]:
        raise EmoError(f"n_components={n_components}: only {vt.shape[0]} components available from the counts")
    return vt[:n_components].T


@dataclass
class SpotModel:
    """Fitted head: x ↦ ((x − μ)/σ) W Vᵀ + ȳ, one matmul for all genes.

    Behind `emo.models.load` (kind `spot_ridge`): it reads pixels, so `predict` takes a tile store,
    tiles around its tile centres at the model's own sizes and takes neighbour context within
    `context_radius_um` of each tile centre (the training spot pitch × `context_radius`)."""

    genes: list[str]
    config: SpotModelConfig
    x_mean: np.ndarray
    x_std: np.ndarray
    coef: np.ndarray  # [n_features, k or n_genes]
    basis: np.ndarray | None  # [n_genes, k]
    y_mean: np.ndarray
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    manifest: dict = field(default_factory=dict)

    kind = "spot_ridge"
    reads_pixels = True

    @property
    def backbone(self) -> dict:
        """The network it runs on its own tiles (it needs no cached features)."""
        return {"name": self.config.backbone, "tile_sizes_um": list(self.config.tile_sizes_um),
                "tile_px": self.config.tile_px}

    @property
    def context_radius_um(self) -> float:
        if "context_radius_um" not in self.meta:
            raise EmoError(f"{self.path}: spot model without context_radius_um (written before emo learned it); "
                           "retrain with `emo spatial train`")
        return float(self.meta["context_radius_um"])

    def predict_design(self, design: np.ndarray) -> np.ndarray:
        scores = ((design - self.x_mean) / self.x_std) @ self.coef
        out = scores @ self.basis.T if self.basis is not None else scores
        return (out + self.y_mean).astype(np.float32)

    def predict_section(self, features: np.ndarray, grid_xy: np.ndarray) -> np.ndarray:
        """float32 [spots, genes] for one whole section (section statistics and context need all its spots)."""
        return self.predict_design(section_design(features, grid_xy, self.config))

    def predict(self, source, cache_dir: str | Path | None = None) -> np.ndarray:
        """float32 [tiles, genes] for every tile of a tile store (any slide; no counts or spot grid)."""
        from emo.slides import TileStore
        from emo.spot_models.pipeline import tile_store_features

        if not isinstance(source, TileStore):
            raise EmoError(f"spot model {self.path}: reads pixels around tile centres; pass a tile store "
                           "(`emo predict --tiles TILE_DIR`), not features")
        if len(source) == 0:
            return np.zeros((0, len(self.genes)), np.float32)
        features = tile_store_features(source, self.config, cache_dir)
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
        manifest = {"kind": "spot_ridge", "genes": self.genes, "config": asdict(self.config), **self.meta,
                    **provenance(**asdict(self.config))}
        write_manifest(model_dir, manifest)
        return model_dir

    @classmethod
    def load(cls, model_dir: str | Path) -> SpotModel:
        """A spot model folder (any kind via `emo.models.load`)."""
        from emo.models import load

        model = load(model_dir)
        if not isinstance(model, SpotModel):
            raise EmoError(f"{model_dir}: kind={model.kind!r} is not a spot-level model; train one with `emo spatial train`")
        return model


@register_model_kind("spot_ridge")
def _load_spot_model(model_dir: Path, manifest: dict) -> SpotModel:
    from safetensors.numpy import load_file

    cfg = dict(manifest["config"])
    cfg["tile_sizes_um"] = tuple(cfg["tile_sizes_um"])
    t = {k: v.astype(np.float64) for k, v in load_file(str(Path(model_dir) / "weights.safetensors")).items()}
    meta = {k: v for k, v in manifest.items() if k in META_KEYS}
    return SpotModel(manifest["genes"], SpotModelConfig(**cfg), t["x_mean"], t["x_std"], t["coef"],
                     t.get("basis"), t["y_mean"], meta, Path(model_dir), manifest)


# Training facts kept in the manifest: sections, and the spot geometry used for context in µm.
META_KEYS = ("train_sections", "basis_sections", "spot_pitch_um", "context_radius_um")


def fit_spot_model(designs: list[np.ndarray], targets: list[np.ndarray], genes: list[str],
                   config: SpotModelConfig, basis: np.ndarray | None = None, meta: dict | None = None) -> SpotModel:
    """Ridge over all genes (or their component scores) on the stacked section designs."""
    x = np.concatenate(designs)
    y = np.concatenate(targets).astype(np.float64)
    if len(x) != len(y):
        raise EmoError(f"{len(x)} spots with features but {len(y)} with targets; sections are misaligned")
    x_mean, x_std = x.mean(0), x.std(0) + 1e-6
    x = (x - x_mean) / x_std
    y_mean = y.mean(0)
    t = (y - y_mean) @ basis if basis is not None else y - y_mean
    lam = config.alpha * x.shape[1]
    dual = np.linalg.solve(x @ x.T + lam * np.eye(len(x)), t)
    coef = x.T @ dual
    return SpotModel(list(genes), config, x_mean, x_std, coef, basis, y_mean, dict(meta or {}))
