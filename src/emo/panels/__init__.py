"""Gene panels shipped with emo, selectable by name wherever genes are chosen."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files

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


def resolve_genes(spec: str | list[str]) -> list[str]:
    """Turn `"pam50"`, `"ESR1,PGR"` or a list (panels and genes mixed) into a de-duplicated gene list."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        key = item.lower().replace("-", "_")
        genes = get_panel(key) if key in _panels() else [GENE_RENAMES.get(item, item)]
        out.extend(g for g in genes if g not in out)
    return out
