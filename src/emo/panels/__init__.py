"""Gene panels shipped with emo, selectable by name wherever genes are chosen."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from emo.errors import EmoError

#: Old PAM50 identifiers → current HGNC symbols (the renames the paper's tables still use).
GENE_RENAMES: dict[str, str] = {"CDCA1": "NUF2", "KNTC2": "NDC80", "ORC6L": "ORC6", "CTSL2": "CTSV"}


@lru_cache(maxsize=1)
def _panels() -> dict:
    return json.loads(files("emo.panels").joinpath("panels.json").read_text())


def panel_names() -> list[str]:
    return sorted(_panels())


def panel_info(name: str) -> dict:
    key = name.lower().replace("-", "_")
    if key not in _panels():
        raise EmoError(f"unknown gene panel {name!r}; choose one of: {', '.join(panel_names())}")
    return _panels()[key]


def get_panel(name: str) -> list[str]:
    """Genes of a panel by name (`pam50`, `pam50_proliferation`, `oncotype_dx`, `endopredict`)."""
    info = panel_info(name)
    if "genes" not in info:
        return sorted({g for genes in info["composites"].values() for g in genes})
    return list(info["genes"])


def composite_probes() -> dict[str, list[str]]:
    """GeoMx composite probes: probe name → member genes."""
    return {k: list(v) for k, v in _panels()["geomx_composite"]["composites"].items()}


TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


def read_gene_file(path: str | Path) -> list[str]:
    """Genes of a file: one symbol per line or whitespace-separated (`#` comments ignored), or a table
    (CSV/TSV/Parquet) with a `gene` column — an emo genes.csv keeps only its `selected` rows."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise EmoError(f"{path}: gene list not found; give a file with one gene per line, a genes.csv or a panel name")
    if path.suffix.lower() in TABLE_SUFFIXES:
        table = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(
            path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        if "gene" not in table.columns:
            raise EmoError(f"{path}: no 'gene' column; give a one-gene-per-line file or an emo genes.csv")
        if "selected" in table.columns:
            selected = table["selected"]
            keep = selected if selected.dtype == bool else selected.astype(str).str.lower().isin({"true", "1"})
            table = table[keep.to_numpy()]
        return table["gene"].astype(str).tolist()
    return [g for line in path.read_text().splitlines() for g in line.split("#", 1)[0].split()]


def resolve_genes(spec: str | Path | list[str]) -> list[str]:
    """Turn `"pam50"`, `"ESR1,PGR"`, a gene-list file (see `read_gene_file`) or a list (panels and genes
    mixed) into a de-duplicated gene list, with old PAM50 identifiers renamed to current symbols."""
    if isinstance(spec, Path) or (isinstance(spec, str) and "," not in spec and Path(spec).is_file()):
        spec = read_gene_file(spec)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: dict[str, None] = {}
    for item in (str(s).strip() for s in items):
        if not item:
            continue
        key = item.lower().replace("-", "_")
        out.update(dict.fromkeys(get_panel(key) if key in _panels() else [GENE_RENAMES.get(item, item)]))
    return list(out)
