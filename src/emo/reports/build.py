"""Assemble registered sections into one offline HTML file (inline CSS, base64 figures, no scripts)."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path

from emo.errors import EmoError
from emo.io import write_text_atomic
from emo.reports import html as h
from emo.reports.registry import sections

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#24344d;color:#fff;padding:1em 2em}header h1{margin:0;font-size:1.5em}header p{margin:.3em 0 0;opacity:.8}
nav{padding:.5em 2em;background:#e8ecf2}nav a{margin-right:1.2em;color:#24344d;text-decoration:none}
main{padding:0 2em 2em}section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:1.2em 0;padding:.6em 1.2em}
h2{color:#24344d;border-bottom:1px solid #eee;padding-bottom:.2em}h3{margin-bottom:.3em}h4{margin:.8em 0 .3em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
table.kv th{text-align:left;background:#f3f5f8}table.kv td{text-align:left;max-width:70em;word-break:break-all}
thead th{background:#f3f5f8}.scroll{overflow-x:auto}.note{color:#777;font-size:.85em}
.figs{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;max-width:100%}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.8em;color:#555}details{margin:.4em 0}summary{cursor:pointer;color:#24344d}
code{background:#f3f5f8;padding:0 3px}.error{color:#b00}
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{{ css }}</style></head>
<body><header><h1>{{ title }}</h1><p>{{ run_dir }} · generated {{ created }} · emo {{ version }} · Python {{ python }}</p></header>
<nav>{% for s in blocks %}<a href="#{{ s.name }}">{{ s.title }}</a>{% endfor %}</nav>
<main>{% for s in blocks %}<section id="{{ s.name }}"><h2>{{ s.title }}</h2>
{% for item in s.entries %}{% if s.entries|length > 1 %}<h3>{{ item.label }}</h3>{% endif %}{{ item.html }}{% endfor %}
</section>{% endfor %}
{% if not blocks %}<p>Nothing to report: no stage outputs were found.</p>{% endif %}</main></body></html>
"""


def build_report(run_dir: Path, out_html: Path | None = None, title: str | None = None) -> Path:
    """Render every registered section that finds something under `run_dir` into `out_html`.

    A section that fails is shown as a one-line error in the page, so one broken artifact never
    hides the rest of the run.
    """
    import jinja2
    from markupsafe import Markup

    from emo import __version__

    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise EmoError(f"{run_dir}: not a folder; pass the output folder of an emo run")
    out_html = Path(out_html) if out_html else run_dir / "report.html"
    link_base = h.LINK_BASE.set(out_html.resolve().parent)
    try:
        blocks = _blocks(run_dir)
    finally:
        h.LINK_BASE.reset(link_base)
    env = jinja2.Environment(autoescape=True)
    page = env.from_string(TEMPLATE).render(
        title=title or f"emo report — {run_dir.name}",
        css=Markup(CSS),
        run_dir=str(run_dir),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        python=platform.python_version(),
        blocks=blocks,
    )
    return write_text_atomic(out_html, page)


def _blocks(run_dir: Path) -> list[dict]:
    """Each registered section's rendered entries (sections that find nothing are left out)."""
    from markupsafe import Markup

    claimed: set[Path] = set()
    blocks = []
    for section in sections():
        items = []
        for path in section.find(run_dir):
            if path in claimed:
                continue
            try:
                body = section.render(path, run_dir)
            except Exception as exc:  # noqa: BLE001 — report what broke, keep the rest
                body = f"<p class=error>could not render {h.esc(path.name)}: {h.esc(type(exc).__name__)}: {h.esc(exc)}</p>"
            if body:
                claimed.add(path)
                label = str(path.relative_to(run_dir)) if path != run_dir else run_dir.name
                items.append({"label": label, "html": Markup(body)})
        if items:
            blocks.append({"name": section.name, "title": section.title, "entries": items})
    return blocks
