"""Spot-level fine-tuning (`emo spatial train --finetune`): the all-gene network of
`emo.training.finetune` trained on spot-centred tiles, each labelled with its own spot's expression.

Sections are the unit of splitting between train and test; within the training sections a seeded
`tune_fraction` of spots forms the tuning split that early stopping watches.
"""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd

from emo.expression import read_her2st, read_targets
from emo.io import atomic_path
from emo.spot_models.data import spot_targets
from emo.spot_models.pipeline import check_held_out, spot_tile_store
from emo.training.finetune import FinetuneConfig, load_finetune_model, train_finetune


def train_spot_finetune(data_dir: str | Path, train_sections: list[str], genes: list[str], out_dir: str | Path,
                        config: FinetuneConfig = FinetuneConfig(), *, tile_size_um: float = 224.0,
                        tune_fraction: float = 0.15, cache_dir: str | Path | None = None,
                        executor="local") -> Path:
    """Fine-tune on every spot of `train_sections`; writes `<out_dir>/targets.h5ad` (spot targets,
    normalised log1p) beside the model and returns the model folder."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng([config.seed, 0x5907])
    stores, frames, obs = [], [], []
    for section in train_sections:
        adata = read_her2st(data_dir, section)
        stores.append(spot_tile_store(adata, tile_size_um, config.input_size, cache_dir or out_dir / "tiles"))
        frames.append(spot_targets(adata, genes))
        obs.append(pd.DataFrame({"slide_id": section, "tile_id": adata.obs_names, "patient_id": section,
                                 "split": np.where(rng.random(adata.n_obs) < tune_fraction, "tune", "train")},
                                index=[f"{section}:{s}" for s in adata.obs_names]))
    targets = out_dir / "targets.h5ad"
    targets.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(targets) as tmp:
        anndata.AnnData(np.concatenate(frames), obs=pd.concat(obs), var=pd.DataFrame(index=list(genes))).write_h5ad(tmp)
    return train_finetune(stores, targets, out_dir, list(genes), config, executor, level="tile")


def predict_spot_finetune(model_dir: str | Path, data_dir: str | Path, section: str,
                          cache_dir: str | Path | None = None,
                          tile_size_um: float = 224.0) -> tuple[pd.DataFrame, anndata.AnnData]:
    """Predicted normalised log1p expression, spots × genes (index = spot ids "<x>x<y>"), and the
    section's spots; like `predict_section`, no counts needed and training sections are refused."""
    from emo.slides import TileStore

    model_dir = Path(model_dir)
    model = load_finetune_model(model_dir)
    trained = model_dir / "targets.h5ad"
    if trained.exists():
        check_held_out(sorted(set(read_targets(trained, backed=True).obs["slide_id"].astype(str))), [section],
                       "predicted")
    adata = read_her2st(data_dir, section, require_counts=False)
    store = TileStore(spot_tile_store(adata, tile_size_um, int(model.manifest["protocol"]["input_size"]),
                                      cache_dir or model_dir / "tiles"))
    return pd.DataFrame(model.predict(store), index=adata.obs_names, columns=model.genes), adata
