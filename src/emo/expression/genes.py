"""Gene identifiers: one clean id per row, so cohorts can be intersected gene by gene.

Rules (documented in `emo expression prepare --help` and the summary):
- whitespace is stripped and Ensembl versions are dropped (`ENSG00000141510.16` → `ENSG00000141510`);
- old PAM50 symbols are renamed to current HGNC symbols (`emo.panels.GENE_RENAMES`, e.g. CDCA1 → NUF2);
- rows that end up with the same id are collapsed: raw counts are summed (reads of one gene), and
  for log-scale values the row with the highest mean is kept (averaging logs of different
  transcripts/probes has no meaning; the most expressed one is the usual representative).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from emo.panels import GENE_RENAMES

_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*[GT]\d{6,})\.\d+(_PAR_Y)?$")


def clean_gene_id(gene: str) -> str:
    gene = str(gene).strip()
    match = _ENSEMBL_VERSION.match(gene)
    if match:
        gene = match.group(1) + (match.group(2) or "")
    return GENE_RENAMES.get(gene, gene)


def normalize_genes(frame: pd.DataFrame, counts: bool) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Clean the ids of a genes × samples frame and collapse duplicates; return it and what changed."""
    ids = pd.Index([clean_gene_id(g) for g in frame.index], name="gene")
    renamed = sorted({f"{old}→{new}" for old, new in zip(frame.index, ids) if str(old).strip() != new
                      and not _ENSEMBL_VERSION.match(str(old).strip())})
    frame = frame.set_axis(ids, axis=0)
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        if counts:
            frame = frame.groupby(level=0, sort=False).sum()
        else:
            order = np.argsort(-frame.mean(axis=1).to_numpy(), kind="stable")
            frame = frame.iloc[order]
            frame = frame[~frame.index.duplicated(keep="first")].reindex(pd.unique(ids))
    return frame, {"renamed": renamed, "collapsed_duplicates": duplicated}
