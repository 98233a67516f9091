"""Draw an AnnData with scanpy and squidpy exactly as a user would (no extra arguments) and check what
was drawn: the H&E thumbnail, one spot per row at `obsm["spatial"]` × the hires scale factor, the
gene's values as colours."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")


def _centres(collection) -> np.ndarray:
    """Centre of each drawn circle: the middle of its path's bounding box (a Bézier circle repeats its
    start vertex, so the vertex mean is off by r/25)."""
    return np.array([(p.vertices.min(axis=0) + p.vertices.max(axis=0)) / 2 for p in collection.get_paths()])


def _check_axes(ax, adata, gene: str, library: str) -> None:
    lib = adata.uns["spatial"][library]
    hires = lib["images"]["hires"]
    assert len(ax.images) == 1 and ax.images[0].get_array().shape[:2] == hires.shape[:2]
    spots = ax.collections[0]
    values = np.asarray(adata[:, gene].X.toarray() if hasattr(adata.X, "toarray") else adata[:, gene].X).ravel()
    np.testing.assert_allclose(np.sort(np.asarray(spots.get_array(), float)), np.sort(values), rtol=1e-5, atol=1e-6)
    want = np.asarray(adata.obsm["spatial"], float) * lib["scalefactors"]["tissue_hires_scalef"]
    got = _centres(spots)
    order_w, order_g = np.lexsort(want.T), np.lexsort(got.T)
    np.testing.assert_allclose(got[order_g], want[order_w], atol=1.0)
    h, w = hires.shape[:2]
    assert (got[:, 0] > -1).all() and (got[:, 0] < w + 1).all() and (got[:, 1] > -1).all() and (got[:, 1] < h + 1).all()


def assert_scanpy_and_squidpy_plot(adata, gene: str) -> None:
    """sc.pl.spatial(adata, color=gene) and, with the `scverse` extra installed, sq.pl.spatial_scatter(adata,
    color=gene) draw the spots on the image."""
    import importlib.util

    import matplotlib.pyplot as plt
    import scanpy as sc

    (library,) = adata.uns["spatial"]
    ax = sc.pl.spatial(adata, color=gene, show=False)
    _check_axes(ax[0] if isinstance(ax, list) else ax, adata, gene, library)
    plt.close("all")
    if importlib.util.find_spec("squidpy") is None:  # `.[dev]` alone: squidpy caps imagecodecs < 2026
        return
    import squidpy as sq

    ax = sq.pl.spatial_scatter(adata, color=gene, return_ax=True)
    _check_axes(ax[0] if isinstance(ax, list) else ax, adata, gene, library)
    plt.close("all")
