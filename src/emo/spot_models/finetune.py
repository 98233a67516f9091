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

from emo.expression import read_her2st
from emo.io import atomic_path, write_json_atomic
from emo.spot_models.sections import check_sections, spot_tile_store
from emo.spot_models.targets import spot_targets
from emo.training.finetune import FinetuneConfig, train_finetune


def train_spot_finetune(data_dir: str | Path, train_sections: list[str], genes: list[str], out_dir: str | Path,
                        config: FinetuneConfig = FinetuneConfig(), *, tile_size_um: float = 224.0,
                        tune_fraction: float = 0.15, cache: str | Path | None = None,
                        executor="local") -> Path:
    """Fine-tune on every spot of `train_sections`; writes `<out_dir>/targets.h5ad` (spot targets,
    normalised log1p) beside the model and returns the model folder (`emo.models.load` reads it;
    `emo spatial predict` predicts sections with it, refusing the training sections)."""
    import json

    out_dir = Path(out_dir)
    check_sections(data_dir, list(train_sections), list(genes))
    rng = np.random.default_rng([config.seed, 0x5907])
    stores, frames, obs = [], [], []
    for section in train_sections:
        adata = read_her2st(data_dir, section)
        stores.append(spot_tile_store(adata, tile_size_um, config.input_size, cache))
        frames.append(spot_targets(adata, genes))
        obs.append(pd.DataFrame({"slide_id": section, "tile_id": adata.obs_names, "patient_id": section,
                                 "split": np.where(rng.random(adata.n_obs) < tune_fraction, "tune", "train")},
                                index=[f"{section}:{s}" for s in adata.obs_names]))
    targets = out_dir / "targets.h5ad"
    targets.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(targets) as tmp:
        anndata.AnnData(np.concatenate(frames), obs=pd.concat(obs), var=pd.DataFrame(index=list(genes))).write_h5ad(tmp)
    model_dir = train_finetune(stores, targets, out_dir, list(genes), config, executor, level="tile")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    write_json_atomic(model_dir / "manifest.json", manifest | {"train_sections": list(train_sections)})
    return model_dir
