"""HTML fragments for report sections: escaped text, tables with plain column labels and base64-embedded
figures, each linked to the file behind it (relative links, so the run folder can be moved as a whole)."""

from __future__ import annotations

import base64
import contextvars
import html
import io
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

MAX_IMAGE_WIDTH = 1400

# folder of the report being built: links to the files behind figures and tables are relative to it
LINK_BASE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("emo_report_link_base", default=None)

LABELS = {
    "gene": "gene", "n": "samples", "spearman_rho": "Spearman ρ", "spearman_p": "P (Spearman)",
    "fdr_bh": "FDR (BH)", "pearson_r": "Pearson r", "r": "Pearson r", "p": "P", "r2": "R² (pred.)",
    "p_bonferroni": "P (Bonferroni)", "selected": "selected on validation", "validated": "validated (test)",
    "n_genes": "genes", "n_spots": "spots", "mean_r": "mean Pearson r", "median_r": "median Pearson r",
    "n_fdr05": "genes with FDR < 0.05", "prolif_spearman": "proliferation score ρ",
    "prolif_spearman_p": "proliferation score P", "slide_id": "slide", "n_kept": "tiles kept",
    "n_dropped_tissue": "dropped: too little tissue", "n_dropped_roi": "dropped: outside annotation",
    "n_dropped_sharpness": "dropped: blurred", "mpp": "µm per pixel", "n_panel": "genes in panel",
    "n_evaluated": "evaluated", "n_selected": "selected", "n_validated": "validated", "selected_genes": "selected genes",
    "n_samples": "samples", "n_slides": "slides", "n_rois": "annotated regions", "n_tiles": "tiles",
    "alpha_median": "median chosen penalty", "mse_mean": "mean squared error (standardised)",
    "spearman_median": "median Spearman ρ", "n_r_positive": "genes with r > 0",
}


def plain_label(name: Any) -> str:
    """A column or key as words: `fdr_lt_0.05` → 'genes with FDR < 0.05', `r2_gt_0.2` → 'genes with R² > 0.2'."""
    key = str(name)
    if key in LABELS:
        return LABELS[key]
    m = re.fullmatch(r"(fdr|r2|p)_(lt|gt)_([0-9.]+)", key)
    if m:
        what = {"fdr": "FDR", "r2": "R²", "p": "P"}[m[1]]
        return f"genes with {what} {'<' if m[2] == 'lt' else '>'} {m[3]}"
    return key[2:].replace("_", " ") if key.startswith("n_") else key.replace("_", " ")


def esc(text: Any) -> str:
    return html.escape(str(text))


def href(path: str | Path) -> str:
    """Link target for a file of the run: relative to the report's folder (absolute when none is set)."""
    base = LINK_BASE.get()
    path = Path(path).resolve()
    target = os.path.relpath(path, base) if base is not None else str(path)
    return quote(Path(target).as_posix())


def source_links(paths: Iterable[str | Path]) -> str:
    """'file: a.csv, b.h5ad' with each name linked to the file."""
    links = [f'<a href="{href(p)}">{esc(Path(p).name)}</a>' for p in paths]
    return f" · file{'s' if len(links) > 1 else ''}: " + ", ".join(links) if links else ""


def plot(fig: Any, caption: str, sources: Iterable[str | Path] = (), dpi: int = 100) -> str:
    """A matplotlib figure drawn for the report, embedded as PNG, captioned with links to the data behind it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    b64 = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{esc(caption)}{source_links(sources)}</figcaption></figure>")


def image(path: Path, caption: str | None = None, max_width: int = MAX_IMAGE_WIDTH) -> str:
    """An <img> with the PNG/JPEG inlined as a data URI (wide images re-encoded smaller), linked to the file."""
    data = Path(path).read_bytes()
    mime = "image/jpeg" if path.suffix.lower() in {".jpg", ".jpeg"} else "image/png"
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            if im.width > max_width:
                im = im.convert("RGB").resize((max_width, round(im.height * max_width / im.width)))
                buf = io.BytesIO()
                im.save(buf, format="PNG", optimize=True)
                data, mime = buf.getvalue(), "image/png"
    except Exception:  # unreadable by PIL: embed the bytes as they are
        pass
    b64 = base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{esc(caption or path.name)}{source_links([path])}</figcaption>"
    return f'<figure><a href="{href(path)}"><img alt="{esc(path.name)}" src="data:{mime};base64,{b64}"></a>{cap}</figure>'


def figure(path: str | Path, caption: str | None = None) -> str:
    """`image` for a figure that may not have been made: '' when the file is missing."""
    path = Path(path)
    return image(path, caption) if path.exists() else ""


def images(paths: list[Path], limit: int = 24, captions: dict[Path, str] | None = None) -> str:
    shown = "".join(image(p, (captions or {}).get(p)) for p in paths[:limit])
    more = f"<p class=note>{len(paths) - limit} more figures in the run folder.</p>" if len(paths) > limit else ""
    return f'<div class="figs">{shown}</div>{more}' if paths else ""


def table(frame: pd.DataFrame, max_rows: int = 25, caption: str | None = None, source: str | Path | None = None,
          empty: str | None = None) -> str:
    """A table with plain column labels; `empty` explains what an empty table means (shown instead of it)."""
    cap = f"<h4>{esc(caption)}</h4>" if caption else ""
    link = f"<p class=note>{source_links([source]).removeprefix(' · ')}</p>" if source else ""
    if frame.empty and empty:
        return f"{cap}<p class=note>{esc(empty)}</p>{link}"
    note = f"<p class=note>showing {max_rows} of {len(frame)} rows</p>" if len(frame) > max_rows else ""
    shown = frame.head(max_rows).rename(columns=plain_label)
    body = shown.to_html(index=False, border=0, classes="tbl", float_format=lambda v: f"{v:.4g}", na_rep="")
    return f"{cap}<div class=scroll>{body}</div>{note}{link}"


def csv_table(path: Path, max_rows: int = 25, caption: str | None = None) -> str:
    try:
        frame = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except Exception as exc:  # a broken CSV must not break the whole report
        return f"<p class=note>{esc(path.name)}: unreadable ({esc(exc)})</p>"
    return table(frame, max_rows, caption or path.name, source=path)


def _cell(v) -> str:
    """A value as a reader sees it: floats to 4 significant digits, nested values as compact JSON."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v) if isinstance(v, (str, int, bool)) or v is None else json.dumps(v, default=str)


def mapping(obj: dict, caption: str | None = None) -> str:
    """A dict as a two-column table; nested values shown as compact JSON."""
    rows = "".join(
        f"<tr><th>{esc(plain_label(k))}</th><td>{esc(_cell(v))}</td></tr>"
        for k, v in obj.items()
    )
    cap = f"<h4>{esc(caption)}</h4>" if caption else ""
    return f"{cap}<div class=scroll><table class=kv>{rows}</table></div>"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"
