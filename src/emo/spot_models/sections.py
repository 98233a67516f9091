"""Spot-level training and prediction over her2st-layout sections (sections are the unit of splitting).

A section's spot-centred tiles at each scale are a tile store (`emo.slides.tile_slide_at`) and their
embeddings a feature store (`emo.features.extract_features`), both in the shared cache
(`emo.cache.cache_dir`), keyed by the tile-store parameters and the backbone identity: every command
on the same sections reuses them, and a killed run resumes at the first missing store.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from emo.cache import cache_dir
from emo.errors import EmoError
from emo.expression import read_her2st
from emo.expression.her2st import Her2stLayout
from emo.expression.st_readers import SPATIAL_KEY
from emo.io import atomic_path, file_fingerprint, params_hash
from emo.models.spot import SpotModel, SpotModelConfig, section_design
from emo.spot_models.ridge import fit_spot_model, target_basis
from emo.spot_models.targets import spot_targets


def count_sections(data_dir: str | Path) -> list[str]:
    return Her2stLayout(data_dir).count_sections()


def grid_xy(adata: ad.AnnData) -> np.ndarray:
    return adata.obs[["array_x", "array_y"]].to_numpy(np.float64)


def counts_genes(path: Path) -> list[str]:
    """The gene columns of a her2st count table, from its header line only (seconds, not minutes)."""
    with gzip.open(path, "rt") as fh:
        return fh.readline().rstrip("\n").split("\t")[1:]


def check_sections(data_dir: str | Path, sections: list[str], genes: list[str] | None = None, *,
                   counts: bool = True) -> None:
    """Everything a spot run needs, checked before any heavy work: each section's image, spot file,
    counts (when `counts`), a positive µm/px, and every gene in every section's counts (the unknown
    ones are named)."""
    layout = Her2stLayout(data_dir)
    if not layout.root.is_dir():
        raise EmoError(f"{layout.root}: not a folder; pass a folder in the her2st layout (images/, spots/, counts/)")
    table = json.loads(layout.mpp_estimate.read_text()) if layout.mpp_estimate.is_file() else {}
    missing_genes: dict[str, list[str]] = {}
    for s in sections:
        if not layout.has_image(s):
            raise EmoError(f"section {s}: no image in {layout.images_dir} ({layout.full_image(s).name} or "
                           f"{layout.preview_image(s).name}); use sections with images")
        if not layout.spots(s).is_file():
            raise EmoError(f"section {s}: {layout.spots(s)} not found; fix the section name")
        mpp = table.get(s, {}).get("um_per_px", 1.0)
        if not float(mpp) > 0:
            raise EmoError(f"{layout.mpp_estimate}: section {s}: um_per_px={mpp}; give a positive µm/px")
        if not counts:
            continue
        if not layout.has_counts(s):
            raise EmoError(f"section {s}: {layout.counts(s)} not found; training sections need counts")
        if genes:
            measured = set(counts_genes(layout.counts(s)))
            missing_genes[s] = [g for g in genes if g not in measured]
    unknown = sorted({g for gs in missing_genes.values() for g in gs})
    if unknown:
        where = ", ".join(s for s, gs in missing_genes.items() if gs)
        raise EmoError(f"gene(s) {', '.join(unknown[:10])}{' …' if len(unknown) > 10 else ''} not measured in "
                       f"section(s) {where}; fix their spelling or drop them from the gene list")


def check_out_dir(out: str | Path) -> None:
    """The model/prediction folder must be creatable (checked before minutes of features)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EmoError(f"{out}: exists and is not a folder; pass a folder for the output")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    import os

    if not os.access(parent, os.W_OK):
        raise EmoError(f"{out}: {parent} is not writable; choose another output folder")


def centred_tile_store(image_path: str | Path, centres_px: np.ndarray, mpp: float, tile_ids: list[str],
                       size_um: float, tile_px: int, cache: str | Path | None = None, name: str = "section") -> Path:
    """A tile store of `size_um` tiles (`tile_px` pixels a side) centred on `centres_px` (level-0 px of
    `image_path`; `emo.slides.tile_slide_at`), made once in the cache, keyed by image, centres and geometry."""
    from emo.slides import TilingConfig, tile_slide_at

    centres = np.asarray(centres_px, np.float64).reshape(-1, 2)
    key = params_hash({"image": file_fingerprint(image_path), "spots": centres.tolist(),
                       "tile_size_um": size_um, "tile_px": tile_px, "mpp": mpp})
    store = cache_dir(cache) / "spots" / f"{name}_{key}" / "tiles" / f"{name}.h5"
    if not store.exists():
        tiling = TilingConfig(mpp=mpp, target_mpp=size_um / tile_px, normalize=False)
        tile_slide_at(image_path, centres, store, size_um, tile_ids=list(tile_ids), config=tiling)
    return store


def _section_image(adata: ad.AnnData) -> tuple[str, str, float]:
    """The section id, its image path and level-0 µm/px; a section without an image is an error."""
    info = adata.uns[SPATIAL_KEY]
    section, image_path = info["section_id"], info["image_path"]
    if not image_path:
        raise EmoError(f"section {section}: no image under images/ (counts only); it cannot be a train or test section")
    return section, image_path, info["mpp"]


def section_features(adata: ad.AnnData, config: SpotModelConfig, cache: str | Path | None = None,
                     progress: bool = True) -> np.ndarray:
    """Frozen multi-scale features of every spot of a section: per tile size its cached spot-centred
    tile store and feature store, concatenated; a bar per section shows spots/s."""
    from emo.features import FeatureStore, extract_features
    from emo.features.config import ExtractionConfig
    from emo.progress import progress_bar

    section = adata.uns[SPATIAL_KEY]["section_id"]
    parts = []
    with progress_bar(f"spot features {section}", adata.n_obs * len(config.tile_sizes_um), "spot",
                      disable=not progress) as (advance, _):
        for size_um in config.tile_sizes_um:
            work = spot_tile_store(adata, size_um, config.tile_px, cache).parents[1]
            folder = extract_features(work / "tiles", work / "features", ExtractionConfig(backbone=config.backbone, workers=0),
                                      progress=False, on_tiles=advance,
                                      on_slide_done=lambda _s, _p, status: advance(adata.n_obs) if status == "cached" else None)
            parts.append(FeatureStore(next(folder.glob("*.h5"))).features)
    return np.concatenate(parts, axis=1)


def spot_tile_store(adata: ad.AnnData, size_um: float, tile_px: int, cache: str | Path | None = None) -> Path:
    """The section's spot-centred tile store at one scale (fine-tuning trains and predicts on its pixels)."""
    section, image_path, mpp = _section_image(adata)
    return centred_tile_store(image_path, adata.obsm["spatial"], mpp, list(adata.obs_names), size_um, tile_px,
                              cache, section)


def section_targets(data_dir: str | Path, section: str, genes: list[str],
                    cache: str | Path | None = None) -> np.ndarray:
    """Normalised log1p targets of a count-only section, cached (reading 15k-gene TSVs dominates)."""
    counts = Her2stLayout(data_dir).counts(section)
    key = params_hash({"counts": file_fingerprint(counts), "genes": list(genes)})
    cached = cache_dir(cache) / "spot_targets" / f"{section}_{key}.npy"
    if cached.exists():
        return np.load(cached)
    y = spot_targets(read_her2st(data_dir, section), genes)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as tmp, open(tmp, "wb") as fh:
        np.save(fh, y)
    return y


def check_held_out(train_sections: list[str], held_out: list[str], what: str = "held-out") -> None:
    """Leakage guards: a section both trained on and held out is an error; sections of one her2st
    patient (same letter) on both sides are a warning (their spots are not independent)."""
    from emo.expression.her2st import her2st_patient
    from emo.log import warn

    overlap = sorted(set(train_sections) & set(held_out))
    if overlap:
        raise EmoError(f"sections {', '.join(overlap)}: both training and {what} sections; hold them out of training")
    shared = sorted({her2st_patient(s) for s in held_out} & {her2st_patient(s) for s in train_sections})
    if shared:
        pairs = "; ".join(f"patient {p}: train {','.join(s for s in train_sections if her2st_patient(s) == p)}"
                          f" vs {what} {','.join(s for s in held_out if her2st_patient(s) == p)}" for p in shared)
        warn(f"{pairs}: training and {what} sections of one patient; scores may be optimistic")


@dataclass(frozen=True)
class TrainSummary:
    """What one training run did, for the one-line summary the CLI prints."""

    sections: int
    spots: int
    genes: int
    components: int | None
    alpha: float
    seconds: float

    def line(self, model_dir: str | Path) -> str:
        parts = f"{self.sections} sections, {self.spots} spots, {self.genes} genes, "
        parts += f"{self.components} components" if self.components else "every gene directly"
        return f"{parts}, penalty {self.alpha:g}, {self.seconds:.0f} s; model: {model_dir}"


def train_spot_model(data_dir: str | Path, train_sections: list[str], genes: list[str],
                     config: SpotModelConfig = SpotModelConfig(), *, exclude_from_basis: list[str] = (),
                     basis_sections: list[str] | None = None, cache: str | Path | None = None,
                     progress: bool = True, on_done: Callable[[TrainSummary], None] | None = None) -> SpotModel:
    """Fit on the image sections `train_sections`; target components come from the counts of every
    section in `data_dir` (or of `basis_sections`) except `exclude_from_basis` (pass the test sections there).
    Sections and genes are checked before any feature is computed."""
    start = time.perf_counter()
    check_held_out(list(train_sections), list(exclude_from_basis))
    leaked = sorted(set(basis_sections or []) & set(exclude_from_basis))
    if leaked:
        raise EmoError(f"basis_sections {', '.join(leaked)}: also held out; held-out sections must not shape the "
                       "target components")
    check_sections(data_dir, list(train_sections), list(genes))
    pool = []
    if config.n_components:
        pool = [s for s in basis_sections or count_sections(data_dir) if s not in set(exclude_from_basis)]
        missing = [s for s in pool if not Her2stLayout(data_dir).has_counts(s)]
        if missing:
            raise EmoError(f"basis sections {', '.join(missing)}: no counts in {Path(data_dir) / 'counts'}; fix the names")
    designs, targets, pitches = [], [], []
    for section in train_sections:
        adata = read_her2st(data_dir, section)
        designs.append(section_design(section_features(adata, config, cache, progress), grid_xy(adata), config))
        targets.append(spot_targets(adata, genes))
        pitches.append(float(adata.uns[SPATIAL_KEY]["spot_pitch_um"]))
    basis = None
    if config.n_components:
        expression = list(targets)
        expression += [section_targets(data_dir, s, genes, cache) for s in pool if s not in train_sections]
        basis = target_basis(expression, config.n_components)
    pitch = float(np.median(pitches))
    meta = {"train_sections": list(train_sections),
            "basis_sections": sorted(set(pool) | set(train_sections)) if pool else [],
            "spot_pitch_um": pitch, "context_radius_um": config.context_radius * pitch}
    model = fit_spot_model(designs, targets, genes, config, basis, meta)
    if on_done:
        on_done(TrainSummary(len(train_sections), sum(len(t) for t in targets), len(genes), config.n_components,
                             config.alpha, time.perf_counter() - start))
    return model


def predict_section(model, data_dir: str | Path, section: str, cache: str | Path | None = None,
                    *, allow_basis: bool = False, progress: bool = True) -> tuple[pd.DataFrame, ad.AnnData]:
    """Predicted normalised log1p expression of any spot model (`emo.models.load`), spots × genes
    (index = spot ids "<x>x<y>"), and the section's spots.

    The section needs an image and `spots/<S>.tsv` only. Training sections are refused; a section
    whose counts shaped the model's target components is refused unless `allow_basis`."""
    if not hasattr(model, "predict_section"):
        raise EmoError(f"{model.path}: a {model.kind} model predicts slides, not spots; use `emo predict`, or train "
                       "a spot model with `emo spatial train`")
    check_held_out(list(model.manifest.get("train_sections", [])), [section], "predicted")
    if section in set(model.manifest.get("basis_sections", [])) and not allow_basis:
        raise EmoError(f"section {section}: its counts shaped the model's target components (basis_sections); "
                       f"retrain with --hold-out {section}, or allow it explicitly (--allow-basis-sections)")
    adata = read_her2st(data_dir, section, require_counts=False)
    pred = model.predict_section(SpotSection(adata, cache, progress))
    return pd.DataFrame(pred, index=adata.obs_names, columns=model.genes), adata


@dataclass(frozen=True)
class SpotSection:
    """What a spot model may read of one section (`model.predict_section(section)`): the spot grid,
    cached spot-centred tile stores at any scale, and their cached frozen features."""

    adata: ad.AnnData
    cache: str | Path | None = None
    progress: bool = True

    @property
    def grid_xy(self) -> np.ndarray:
        return grid_xy(self.adata)

    def tiles(self, size_um: float, tile_px: int):
        from emo.slides import TileStore

        return TileStore(spot_tile_store(self.adata, size_um, tile_px, self.cache))

    def features(self, config: SpotModelConfig) -> np.ndarray:
        return section_features(self.adata, config, self.cache, self.progress)
