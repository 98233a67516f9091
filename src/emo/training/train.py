"""`train_model`: fit one multi-output head for all genes on cached features.

Slide level (EMO-average, the paper's setting): each training sample is a slide with bulk expression;
the head predicts per tile and the slide prediction is the mean over its tiles. Tile level: each
feature-store row (a tile or a spatial-transcriptomics spot) has its own target. The `train` split
fits the head, `tune` chooses its regularisation / stopping epoch; validation and test samples are
never read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from emo.errors import EmoError
from emo.io import dense, provenance, write_table_atomic
from emo.features.store import feature_identity, open_feature_stores
from emo.expression.targets import read_targets
from emo.training.data import select_genes, source_tile_store_attrs, tile_geometry, training_hash

if TYPE_CHECKING:
    from emo.training.config import TrainConfig
FIT_SPLITS = ("train", "tune")


def _slide_of(obs: pd.DataFrame) -> pd.Series:
    """Slide of each sample (`slide_id`, else the sample id); samples without a slide are NaN."""
    if "slide_id" not in obs:
        return pd.Series(obs.index.astype(str), index=obs.index)
    return obs["slide_id"].where(obs["slide_id"].notna()).map(lambda s: s if pd.isna(s) else str(s))


def _slide_level_data(adata, stores, genes, targets, allow_missing, tiles_per_sample, seed):
    """Per fitting split: tile features with their sample index (`groups`) and slide targets.

    `tiles_per_sample` None gives one row per slide, its mean feature over all tiles; a number
    samples that many tiles per slide (once, seeded)."""
    obs = adata.obs
    slides = _slide_of(obs)
    fit = obs["split"].astype(str).isin(FIT_SPLITS).to_numpy() & slides.notna().to_numpy()
    missing = sorted(set(slides[fit]) - set(stores))
    if missing and not allow_missing:
        raise EmoError(
            f"{targets}: {len(missing)} train/tune slide(s) have no feature store (e.g. {', '.join(missing[:3])}); "
            "run `emo features` on them or pass --allow-missing-features"
        )
    empty = sorted(s for s in set(slides[fit]) & set(stores) if stores[s].n_tiles == 0)
    if empty:
        raise EmoError(f"{stores[empty[0]].path}: feature store has no tiles; drop slide {empty[0]} from the targets")
    use = fit & slides.isin(stores).to_numpy()
    col = adata.var_names.get_indexer(genes)
    out = {}
    rng = np.random.default_rng(seed)
    for split in FIT_SPLITS:
        rows = np.flatnonzero(use & (obs["split"].astype(str) == split).to_numpy())
        ids = slides.iloc[rows].tolist()
        y = dense(adata.X[rows][:, col], np.float64) if len(rows) else np.zeros((0, len(genes)))
        if tiles_per_sample is None:
            x = np.stack([stores[s].mean() for s in ids]) if ids else np.zeros((0, 0))
            groups = np.arange(len(ids))
        else:
            bags = []
            for s in ids:
                st = stores[s]
                pick = np.sort(rng.choice(st.n_tiles, min(tiles_per_sample, st.n_tiles), replace=False))
                bags.append(st.read(pick))
            x = np.concatenate(bags) if bags else np.zeros((0, 0), np.float32)
            groups = np.repeat(np.arange(len(bags)), [len(b) for b in bags])
        out[split] = (x, y, groups, ids)
    return out


def _tile_level_data(adata, stores, genes, targets):
    obs = adata.obs
    slides = _slide_of(obs)
    tiles = obs["tile_id"].astype(str) if "tile_id" in obs else pd.Series(obs.index.astype(str), index=obs.index)
    col = adata.var_names.get_indexer(genes)
    split = obs["split"].astype(str).to_numpy()
    fit = np.isin(split, FIT_SPLITS)
    missing = sorted(set(slides[fit]) - set(stores))
    if missing:
        raise EmoError(
            f"{targets}: {len(missing)} train/tune slide(s) have no feature store (e.g. {', '.join(missing[:3])}); "
            "run `emo features` on them"
        )
    feats, rows_found = [], []
    for slide_id in sorted(set(slides[fit])):
        st = stores[slide_id]
        row_of = {t: i for i, t in enumerate(st.tile_ids)}
        obs_rows = np.flatnonzero(fit & (slides == slide_id).to_numpy())
        store_rows = np.array([row_of.get(t, -1) for t in tiles.iloc[obs_rows]])
        if (store_rows < 0).all():
            raise EmoError(f"{st.path}: none of the targets' tile_id values of slide {slide_id} are in this store; "
                           "targets must use the feature store's tile_id (spot ids for spot-centred stores)")
        ok = store_rows >= 0
        feats.append(st.read(store_rows[ok]))
        rows_found.append(obs_rows[ok])
    x_all = np.concatenate(feats)
    rows = np.concatenate(rows_found)
    y_all = dense(adata.X[rows][:, col], np.float64)
    out = {}
    for name in FIT_SPLITS:
        m = split[rows] == name
        out[name] = (x_all[m], y_all[m], None, list(tiles.iloc[rows[m]]))
    return out


def _spearman_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra -= ra.mean(0)
    rb -= rb.mean(0)
    den = np.sqrt((ra**2).sum(0) * (rb**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(0) / den


def train_config(config: TrainConfig | None = None, **options) -> TrainConfig:
    """`config`, or one built from keyword options (`mlp_config` is the MLP options); errors are EmoError."""
    from emo.training.config import TrainConfig

    if config is not None:
        return config
    if "mlp_config" in options:
        options["mlp"] = options.pop("mlp_config")
    return TrainConfig.build(what="training", **{k: v for k, v in options.items() if v is not None})


@dataclass
class FittedHead:
    """What training computed, before anything is written: the head, its genes and tuning results."""

    head: object
    config: TrainConfig
    genes: list[str]
    per_gene: pd.DataFrame
    tuning: dict
    tensors: dict[str, np.ndarray]
    offsets: list[str]
    n_train: int
    n_tune: int


def _patient_of_slide(obs: pd.DataFrame) -> dict[str, str]:
    """slide id → patient id (the sample's own id where there is no `patient_id` column)."""
    slides = _slide_of(obs)
    patients = obs["patient_id"].astype(str) if "patient_id" in obs else pd.Series(obs.index.astype(str), index=obs.index)
    return {s: p for s, p in zip(slides, patients) if isinstance(s, str)}


def permute_by_patient(y: np.ndarray, patients: list, rng: np.random.Generator) -> np.ndarray:
    """`y`'s rows with labels exchanged between whole patients, as the splits assign them: each patient
    takes the rows of another patient with as many rows (a patient's own samples stay together)."""
    names, inverse, sizes = np.unique(np.asarray(patients, dtype=str), return_inverse=True, return_counts=True)
    rows = [np.flatnonzero(inverse == i) for i in range(len(names))]
    order = np.arange(len(y))
    for size in np.unique(sizes):
        same = np.flatnonzero(sizes == size)
        for a, b in zip(same, rng.permutation(same)):
            order[rows[a]] = rows[b]
    return y[order]


def fit_head(stores: dict, adata, targets: Path, config: TrainConfig) -> FittedHead:
    """Fit `config.head` for all selected genes at once on the train split, tuned on the tune split.

    `permute_labels` fits a null baseline: within each fitting split whole patients' labels are
    exchanged (`permute_by_patient`; tiles at tile level) with `seed`, so the same head and features
    meet labels that carry no image information — what chance and the architecture give.
    """
    from emo.models.heads import HEADS, predict_groups

    head_cls = HEADS[config.head]
    seed = config.seed
    genes = select_genes(adata, config.genes, targets)
    if config.level == "tile":
        data = _tile_level_data(adata, stores, genes, targets)
    else:
        data = _slide_level_data(adata, stores, genes, targets, config.allow_missing_features,
                                 head_cls.tiles_per_sample(config), seed)
    (x_tr, y_tr, g_tr, ids_tr), (x_tu, y_tu, g_tu, ids_tu) = data["train"], data["tune"]
    if config.permute_labels:
        rng = np.random.default_rng([seed, 0x9E11])
        patient = _patient_of_slide(adata.obs) if config.level == "slide" else {}
        y_tr = permute_by_patient(y_tr, [patient.get(s, s) for s in ids_tr], rng)
        y_tu = permute_by_patient(y_tu, [patient.get(s, s) for s in ids_tu], rng)
    if len(y_tr) < 2 or len(y_tu) < 1:
        raise EmoError(f"{targets}: need ≥2 train and ≥1 tune samples with features (have {len(y_tr)} train, "
                       f"{len(y_tu)} tune); check the split column and the feature folder")
    head = head_cls.fit(x_tr, y_tr, x_tu, y_tu, groups_train=g_tr, groups_tune=g_tu, config=config)
    per_gene = pd.DataFrame({"gene": genes, **head.fit_report["per_gene"]})

    # Tuning metrics on the original scale: the slide prediction is the mean of its tile predictions.
    pred_tu = predict_groups(head, x_tu, g_tu)
    rho = _spearman_cols(pred_tu, y_tu)
    per_gene["tune_spearman"] = rho
    per_gene["tune_mse"] = ((pred_tu - y_tu) ** 2).mean(axis=0)
    tensors = dict(head.to_tensors())
    tensors["target_mean"] = y_tr.mean(axis=0).astype(np.float32)
    tensors["target_std"] = y_tr.std(axis=0).astype(np.float32)
    offsets = [c for c in adata.var.columns if c.startswith("offset_")]
    for c in offsets:
        tensors[f"cohort_{c}"] = adata.var.loc[genes, c].to_numpy(dtype=np.float32)
    tuning = {"mse_mean": float(per_gene["tune_mse"].mean()),
              "spearman_median": float(np.nanmedian(rho)) if np.isfinite(rho).any() else None,
              **head.fit_report["tuning"]}
    return FittedHead(head, config, genes, per_gene, tuning, tensors, offsets, len(y_tr), len(y_tu))


def write_model(out_dir: Path, fitted: FittedHead, stores: dict, targets: Path) -> Path:
    """The model directory: weights, manifest (backbone identity, geometry, genes, tuning), tuning.csv."""
    from emo.models.model import save_model

    c = fitted.config
    first = next(iter(stores.values()))
    geometry, stain_reference = tile_geometry(first.attrs, source_tile_store_attrs(first))
    prov = provenance(head=c.head, level=c.level, seed=c.seed, n_genes=len(fitted.genes), alphas=c.alphas,
                      permute_labels=c.permute_labels)
    manifest = {
        "emo_version": prov["emo_version"],
        "created": prov["created"],
        "kind": c.head,
        "level": c.level,
        "backbone": feature_identity(stores),
        "tile_geometry": geometry,
        "stain_reference": stain_reference,
        "genes": fitted.genes,
        "target_normalisation": "per gene (x - target_mean) / target_std on the train split for fitting; "
        "predictions are on the targets' original scale (target_mean/target_std in weights.safetensors)",
        "cohort_offsets": {o.removeprefix("offset_"): f"cohort_{o}" for o in fitted.offsets},
        "training_data_hash": training_hash(targets, stores, fitted.genes,
                                            {"level": c.level, "head": c.head, "permute_labels": c.permute_labels}),
        "permuted_labels": c.permute_labels,
        "targets": str(targets.resolve()),
        "n_train": fitted.n_train,
        "n_tune": fitted.n_tune,
        "head_config": fitted.head.head_config(),
        "tuning": fitted.tuning,
        "provenance": prov,
    }
    save_model(out_dir, manifest, fitted.tensors)
    write_table_atomic(out_dir / "tuning.csv", fitted.per_gene)
    return out_dir


def train_model(feature_dir: Path, targets: Path, out_dir: Path, config: TrainConfig | None = None, **options) -> Path:
    """Fit a head for all selected genes at once and write the model directory; returns it.

    `config` is a `TrainConfig`; without one, keyword options build it (`head`, `genes`, `seed`,
    `level`, `alphas`, `mlp_config`, `allow_missing_features`, `permute_labels`).
    """
    config = train_config(config, **options)
    if config.protocol != "features":
        raise EmoError(f"train_model: fits heads on cached features; use emo.training.train_protocol for protocol "
                       f"{config.protocol!r}")
    targets, out_dir = Path(targets), Path(out_dir)
    stores = open_feature_stores(feature_dir)
    adata = read_targets(targets)
    fitted = fit_head(stores, adata, targets, config)
    write_model(out_dir, fitted, stores, targets)
    _tuning_png(out_dir / "tuning.png", fitted.per_gene, config.head)
    return out_dir


def _tuning_png(dest: Path, per_gene: pd.DataFrame, head: str) -> None:
    """Tuning-split Spearman per gene (and the chosen ridge penalties): a first look at the fit."""
    import matplotlib.pyplot as plt

    from emo.io import save_figure

    panels = 2 if "alpha" in per_gene else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
    rho = per_gene["tune_spearman"].dropna()
    axes[0, 0].hist(rho, bins=40, range=(-1, 1), color="#4c72b0")
    axes[0, 0].set(xlabel="Spearman ρ on the tuning split", ylabel="genes", title=f"{head}: {len(per_gene)} genes")
    if panels == 2:
        axes[0, 1].hist(np.log10(per_gene["alpha"]), bins=30, color="#55a868")
        axes[0, 1].set(xlabel="log10 chosen ridge penalty", ylabel="genes")
    fig.tight_layout()
    save_figure(fig, dest, dpi=100)
