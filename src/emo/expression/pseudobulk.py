"""Pseudo-bulk regions of a spatial-transcriptomics section: blocks of spots summed into bulk samples.

A her2st spot at array position (x, y) belongs to region `f"{section}_{x // block}_{y // block}"`;
with the 200 µm spot pitch a 3 × 3 block is a 600 µm square, the size of the paper's GeoMx ROIs.
Summing raw counts before normalising (log2(CPM + 1)) makes a region a small bulk RNA-seq sample.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from emo.errors import EmoError
from emo.expression.st_readers import SPATIAL_KEY


def region_of_spots(adata, block: int = 3, offset: tuple[int, int] = (0, 0)) -> pd.Series:
    """Region id of every spot (index = spot id), from the array coordinates `array_x`, `array_y`.

    A non-zero `offset` shifts the grid by (dx, dy) spots (more, overlapping training regions); its
    ids get the suffix `~<dx><dy>` so they never collide with the regions of the standard grid.
    """
    if block < 1:
        raise EmoError(f"block={block}: a region is block × block spots; use block ≥ 1")
    section = adata.uns[SPATIAL_KEY]["section_id"]
    dx, dy = offset
    x = (adata.obs["array_x"].to_numpy(int) + dx) // block
    y = (adata.obs["array_y"].to_numpy(int) + dy) // block
    suffix = f"~{dx}{dy}" if (dx, dy) != (0, 0) else ""
    return pd.Series([f"{section}_{a}_{b}{suffix}" for a, b in zip(x, y)], index=adata.obs_names, name="region_id")


def region_pseudobulk(adata, genes: list[str], *, block: int = 3, min_spots: int = 5,
                      offset: tuple[int, int] = (0, 0)) -> tuple[pd.DataFrame, pd.Series]:
    """log2(CPM + 1) of each region's summed raw counts (regions × `genes`; genes absent from the
    section are 0) and the region of every spot of a kept region (regions with ≥ `min_spots` spots)."""
    region = region_of_spots(adata, block, offset)
    sizes = region.value_counts()
    kept = sorted(sizes.index[sizes >= min_spots])
    if not kept:
        raise EmoError(f"section {adata.uns[SPATIAL_KEY]['section_id']}: no region has ≥ {min_spots} spots; "
                       "lower min_spots or use a larger block")
    spot_region = region[region.isin(kept)]
    rows = pd.Index(kept).get_indexer(spot_region.to_numpy())
    spots = adata.obs_names.get_indexer(spot_region.index)
    member = sp.csr_matrix((np.ones(len(rows)), (rows, spots)), shape=(len(kept), adata.n_obs))
    summed = sp.csr_matrix(member @ sp.csr_matrix(adata.X, dtype=np.float64))
    totals = np.asarray(summed.sum(axis=1)).ravel()
    pos = pd.Index(adata.var_names).get_indexer(genes)
    have = pos >= 0
    out = np.zeros((len(kept), len(genes)))
    out[:, have] = summed[:, pos[have]].toarray()
    cpm = out / np.maximum(totals, 1.0)[:, None] * 1e6
    return pd.DataFrame(np.log2(cpm + 1.0), index=pd.Index(kept, name="region_id"), columns=list(genes)), spot_region
