"""HTML fragments for report sections: escaped text, tables and base64-embedded figures (no external links)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

MAX_IMAGE_WIDTH = 1400


def esc(text: Any) -> str:
    return html.escape(str(text))


def image(path: Path, caption: str | None = None, max_width: int = MAX_IMAGE_WIDTH) -> str:
    """An <img> with the PNG/JPEG inlined as a data URI (wide images re-encoded smaller)."""
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
    cap = f"<figcaption>{esc(caption or path.name)}</figcaption>"
    return f'<figure><img alt="{esc(path.name)}" src="data:{mime};base64,{b64}">{cap}</figure>'


def figure(path: str | Path, caption: str | None = None) -> str:
    """`image` for a figure that may not have been made: '' when the file is missing."""
    path = Path(path)
    return image(path, caption) if path.exists() else ""


def images(paths: list[Path], limit: int = 24) -> str:
    shown = "".join(image(p) for p in paths[:limit])
    more = f"<p class=note>{len(paths) - limit} more figures in the run folder.</p>" if len(paths) > limit else ""
    return f'<div class="figs">{shown}</div>{more}' if paths else ""


def table(frame: pd.DataFrame, max_rows: int = 25, caption: str | None = None) -> str:
    note = f"<p class=note>showing {max_rows} of {len(frame)} rows</p>" if len(frame) > max_rows else ""
    body = frame.head(max_rows).to_html(index=False, border=0, classes="tbl", float_format=lambda v: f"{v:.4g}", na_rep="")
    cap = f"<h4>{esc(caption)}</h4>" if caption else ""
    return f"{cap}<div class=scroll>{body}</div>{note}"


def csv_table(path: Path, max_rows: int = 25, caption: str | None = None) -> str:
    try:
        frame = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except Exception as exc:  # a broken CSV must not break the whole report
        return f"<p class=note>{esc(path.name)}: unreadable ({esc(exc)})</p>"
    return table(frame, max_rows, caption or path.name)


def mapping(obj: dict, caption: str | None = None) -> str:
    """A dict as a two-column table; nested values shown as compact JSON."""
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v, default=str))}</td></tr>"
        for k, v in obj.items()
    )
    cap = f"<h4>{esc(caption)}</h4>" if caption else ""
    return f"{cap}<div class=scroll><table class=kv>{rows}</table></div>"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"
