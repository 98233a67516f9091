"""`emo report RUN_DIR`: one self-contained HTML page of a run's QC, models, validation and analyses."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emo.cli._apps import app


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="Run folder: whatever emo stages wrote there is summarised."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default RUN_DIR/report.html)."),
    title: Optional[str] = typer.Option(None, "--title", help="Page title."),
) -> None:
    """Write a single offline HTML report (figures embedded) of tiling QC, targets, model, predictions,
    evaluation, spatial validation and analyses found under RUN_DIR."""
    from emo.reports import build_report

    path = build_report(run_dir, out, title=title)
    typer.echo(f"report written to {path}")
