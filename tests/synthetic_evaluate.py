"""Generated evaluation data: targets.h5ad + EMO-average predictions with a known set of predictable genes."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd

from emo.panels import get_panel

PROLIF = get_panel("pam50_proliferation")
SUBTYPES = ["LumA", "LumB", "Her2", "Basal"]


def make_evaluation_data(root: Path, seed: int = 0) -> dict:
    """Validation (120 samples), test (60 internal + 40 external), train (20) samples; 32 planted genes.

    Planted genes are predicted as measured + noise (ρ ≈ 0.9, R² ≈ 0.75); all other genes are
    predicted by independent noise around the gene mean (R² < 0), so the selection rule must
    pick exactly the planted genes.
    """
    rng = np.random.default_rng(seed)
    other = [f"G{i:03d}" for i in range(150)]
    genes = other + PROLIF + ["ESR1", "ERBB2", "GRB7", "SCUBE2"]
    planted = sorted(other[:20] + PROLIF + ["ESR1"])
    splits = ["validation"] * 120 + ["test"] * 100 + ["train"] * 20
    n = len(splits)
    sample_ids = [f"P{i:03d}" for i in range(n)]
    cohort = ["A" if i % 2 else "B" for i in range(120)] + ["A"] * 60 + ["EXT"] * 40 + ["A"] * 20
    subtype = rng.choice(SUBTYPES, size=n)
    prolif_level = pd.Series(subtype).map({"LumA": -1.0, "LumB": 0.5, "Her2": 0.7, "Basal": 1.2}).to_numpy()
    mu = rng.uniform(2, 8, size=len(genes))
    sd = rng.uniform(0.5, 2, size=len(genes))
    x = mu + sd * rng.normal(size=(n, len(genes)))
    is_prolif = np.isin(genes, PROLIF)
    x[:, is_prolif] += (prolif_level + 0.5 * rng.normal(size=n))[:, None] * sd[is_prolif]
    is_planted = np.isin(genes, planted)
    pred = mu + sd * rng.normal(size=(n, len(genes)))
    pred[:, is_planted] = x[:, is_planted] + 0.5 * sd[is_planted] * rng.normal(size=(n, is_planted.sum()))

    obs = pd.DataFrame(
        {
            "patient_id": sample_ids,
            "cohort": cohort,
            "split": splits,
            "slide_id": [f"slide_{s}" for s in sample_ids],
            "external": [c == "EXT" for c in cohort],
            "pam50_subtype": subtype,
        },
        index=pd.Index(sample_ids, name="sample_id"),
    )
    var = pd.DataFrame({"variance": x.var(axis=0), "kept": True}, index=pd.Index(genes, name="gene"))
    targets = anndata.AnnData(X=x.astype(np.float32), obs=obs, var=var, uns={"emo": {"emo_version": "test"}})
    root.mkdir(parents=True, exist_ok=True)
    targets_path = root / "targets.h5ad"
    targets.write_h5ad(targets_path)

    # Predictions are named by slide, carry two slides with no RNA-seq, and list genes in another order.
    slides = list(obs["slide_id"]) + ["slide_extra1", "slide_extra2"]
    values = np.vstack([pred, rng.normal(size=(2, len(genes)))]).astype(np.float32)
    frame = pd.DataFrame(values, index=pd.Index(slides, name="slide_id"), columns=genes)[genes[::-1]]
    csv_path = root / "average.csv"
    frame.to_csv(csv_path)
    h5ad_path = root / "average.h5ad"
    anndata.AnnData(X=frame.to_numpy(), obs=pd.DataFrame(index=frame.index), var=pd.DataFrame(index=frame.columns)).write_h5ad(h5ad_path)
    # Null distribution: the same predictions with slide labels permuted, five times.
    null_paths = []
    for k in range(5):
        null = frame.copy()
        null.index = rng.permutation(frame.index.to_numpy())
        null_paths.append(root / f"average_null_{k}.csv")
        null.to_csv(null_paths[-1])
    return {
        "targets": targets_path,
        "csv": csv_path,
        "h5ad": h5ad_path,
        "null": tuple(null_paths),
        "planted": planted,
        "measured": pd.DataFrame(x, index=sample_ids, columns=genes),
        "predicted": pd.DataFrame(pred, index=sample_ids, columns=genes).astype(np.float32).astype(np.float64),
        "obs": obs,
    }
