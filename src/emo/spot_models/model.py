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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from emo.errors import EmoError
from emo.io import atomic_path, provenance, write_json_atomic


@dataclass(frozen=True)
class SpotModelConfig:
    tile_sizes_um: tuple[float, ...] = (224.0, 100.0, 448.0)
    tile_px: int = 224
    backbone: str = "efficientnet_lite0_ms"  # a name from emo.models.list_backbones()
    alpha: float = 100.0  # ridge penalty per feature (λ = alpha × n_features)
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


def section_design(features: np.ndarray, grid_xy: np.ndarray, config: SpotModelConfig) -> np.ndarray:
    """Per-section design matrix: (standardised) spot features, plus neighbour means for context."""
    f = np.asarray(features, np.float64)
    if config.section_standardize:
        f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    if config.context_radius > 0:
        neighbours = cKDTree(grid_xy).query_ball_point(grid_xy, config.context_radius)
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
    """Fitted head: x ↦ ((x − μ)/σ) W Vᵀ + ȳ, one matmul for all genes."""

    genes: list[str]
    config: SpotModelConfig
    x_mean: np.ndarray
    x_std: np.ndarray
    coef: np.ndarray  # [n_features, k or n_genes]
    basis: np.ndarray | None  # [n_genes, k]
    y_mean: np.ndarray
    meta: dict = field(default_factory=dict)

    def predict_design(self, design: np.ndarray) -> np.ndarray:
        scores = ((design - self.x_mean) / self.x_std) @ self.coef
        out = scores @ self.basis.T if self.basis is not None else scores
        return (out + self.y_mean).astype(np.float32)

    def predict_section(self, features: np.ndarray, grid_xy: np.ndarray) -> np.ndarray:
        """float32 [spots, genes] for one whole section (section statistics and context need all its spots)."""
        return self.predict_design(section_design(features, grid_xy, self.config))

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
        write_json_atomic(model_dir / "manifest.json", manifest)
        return model_dir

    @classmethod
    def load(cls, model_dir: str | Path) -> SpotModel:
        from safetensors.numpy import load_file

        model_dir = Path(model_dir)
        path = model_dir / "manifest.json"
        if not path.exists():
            raise EmoError(f"{path}: not found; give a model folder written by `emo spatial train`")
        manifest = json.loads(path.read_text())
        if manifest.get("kind") != "spot_ridge":
            raise EmoError(f"{path}: kind={manifest.get('kind')!r} is not a spot-level model")
        cfg = manifest["config"]
        cfg["tile_sizes_um"] = tuple(cfg["tile_sizes_um"])
        t = {k: v.astype(np.float64) for k, v in load_file(str(model_dir / "weights.safetensors")).items()}
        meta = {k: v for k, v in manifest.items() if k in ("train_sections", "basis_sections")}
        return cls(manifest["genes"], SpotModelConfig(**cfg), t["x_mean"], t["x_std"], t["coef"],
                   t.get("basis"), t["y_mean"], meta)


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
