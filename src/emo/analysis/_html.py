"""Small HTML pieces the analyses' report sections share (tables and inline PNGs)."""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd


def table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0, classes="emo-table")


def figure(png: str | Path, alt: str = "") -> str:
    png = Path(png)
    if not png.exists():
        return ""
    data = base64.b64encode(png.read_bytes()).decode()
    return f'<img alt="{alt or png.stem}" src="data:image/png;base64,{data}" style="max-width:100%">'
