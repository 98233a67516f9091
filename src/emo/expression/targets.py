"""The one reader of `targets.h5ad` (obs = samples with `split`, var = genes; docs/architecture.md "Targets")."""

from __future__ import annotations

from pathlib import Path

from emo.errors import EmoError


def read_targets(path: Path, *, backed: bool = False):
    """The training targets as AnnData (`backed`: obs/var only, X left on disk), checked for its `split`."""
    import anndata

    path = Path(path)
    if not path.exists():
        raise EmoError(f"{path}: targets file not found; run `emo expression prepare` first")
    try:
        adata = anndata.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:  # h5py/anndata raise many kinds
        raise EmoError(f"{path}: cannot read as AnnData ({exc.__class__.__name__}: {exc}); "
                       "re-run `emo expression prepare`") from None
    if "split" not in adata.obs:
        raise EmoError(f"{path}: obs has no 'split' column (train/tune/validation/test); re-run `emo expression prepare`")
    return adata
