"""`emo run` and `emo init`: a whole study from one YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emo.cli._apps import app
from emo.run.pipeline import stage_names


@app.command()
def run(
    study: Path = typer.Argument(..., help="study YAML (write one with `emo init`)"),
    from_stage: Optional[str] = typer.Option(
        None, "--from", help=f"redo this stage and every later one: {', '.join(stage_names())}"),
    executor: Optional[str] = typer.Option(None, "--executor", help="local | ray | slurm (overrides the study file)"),
    wait: bool = typer.Option(False, "--wait", help="if another run holds the output folder, wait for it instead of refusing"),
) -> None:
    """Run a study: tile → features → expression → train → predict → evaluate → analyze → report.

    With a `spots:` section (see docs/her2st-study.yaml) the study is spot-level instead:
    spot_train → spot_predict → spot_evaluate → report.
    Stages whose inputs and parameters did not change since their last finished run are skipped.
    """
    from emo.run import load_study, run_study

    config = load_study(study)
    status = run_study(config, from_stage=from_stage, executor=executor, wait=wait)
    ran = [s for s, v in status.items() if v == "ran"]
    typer.echo(f"{config.out_dir}: {len(ran)} stage(s) ran ({', '.join(ran) or 'none'}), others up to date")
    report = config.out_dir / "report.html"
    if report.exists():
        typer.echo(f"report: {report}")


@app.command()
def init(
    path: Path = typer.Argument(Path("study.yaml"), help="where to write the template"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
    spatial: bool = typer.Option(False, "--spatial", help="a spot-level study (her2st-layout sections) instead of slides + bulk targets"),
) -> None:
    """Write a commented study template to edit and pass to `emo run`."""
    from emo.run import write_template

    typer.echo(f"wrote {write_template(path, force=force, spatial=spatial)}")
