"""Report sections as a registry: a stage adds a section without touching the report core.

A section is a `find(run_dir) -> list[Path]` (the dirs or files it reports on) and a
`render(path, run_dir) -> str` returning an HTML fragment (use the helpers in `emo.reports.html`).
Register with the `register_section` decorator in a module `emo.<package>.<what>_sections` (e.g.
`emo.reports.builtin_sections`, `emo.analysis.analysis_sections`, `emo.run.demo_sections`);
`build_report` imports every such module it finds, so the section appears in the next report.
Sections run in `order`; a path already reported by an earlier section is skipped by later ones,
so specific sections (evaluate, spatial validation) come before the generic analyze section.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Finder = Callable[[Path], list[Path]]
Renderer = Callable[[Path, Path], str]


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    order: int
    find: Finder
    render: Renderer


SECTIONS: dict[str, Section] = {}


def register_section(name: str, *, title: str, order: int = 500, find: Finder) -> Callable[[Renderer], Renderer]:
    """Decorator registering `render` as the report section `name` for the paths `find` returns."""

    def wrap(render: Renderer) -> Renderer:
        SECTIONS[name] = Section(name=name, title=title, order=order, find=find, render=render)
        return render

    return wrap


def load_plugins() -> list[str]:
    """Import every `emo.<package>.<what>_sections` module, so stages' sections register themselves."""
    import emo

    loaded = []
    for info in pkgutil.iter_modules(emo.__path__):
        if info.ispkg:
            for path in sorted(p for root in emo.__path__ for p in (Path(root) / info.name).glob("*_sections.py")):
                name = f"emo.{info.name}.{path.stem}"
                importlib.import_module(name)
                loaded.append(name)
    return loaded


def sections() -> list[Section]:
    load_plugins()
    return sorted(SECTIONS.values(), key=lambda s: (s.order, s.name))
