"""Report sections of the bulk analyses (clustering, differential expression, enrichment)."""

from __future__ import annotations

from pathlib import Path

from emo.analysis import clustering, de, enrichment
from emo.reports.registry import register_section


def _dirs_with(marker: str):
    return lambda run_dir: sorted({p.parent for p in Path(run_dir).glob(f"**/{marker}")})


@register_section("clusters", title="Clustering (measured vs predicted)", order=70, find=_dirs_with("ari.csv"))
def _clusters(folder: Path, run_dir: Path) -> str:
    return clustering.report_section(folder)


@register_section("de", title="Differential expression ER+ vs ER−", order=71, find=_dirs_with("de_measured.csv"))
def _de(folder: Path, run_dir: Path) -> str:
    return de.report_section(folder)


@register_section("enrich", title="Pathway enrichment", order=72, find=_dirs_with("enrich_prerank.csv"))
def _enrich(folder: Path, run_dir: Path) -> str:
    return enrichment.report_section(folder)
