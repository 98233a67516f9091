"""`emo` command line: a thin shell over the library's public functions.

Each module in `_COMMAND_MODULES` attaches its commands to the apps in `emo.cli._apps` on import.
Heavy libraries are imported inside the commands so `emo --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from emo.cli._apps import app
from emo.errors import EmoError

_COMMAND_MODULES = (
    "info",
    "evaluate",
    "report",
    "spatial_validation",
    "analyze_bulk",
    "expression",
    "demo",
    "train",
    "predict",
    "classifier",
    "features",
    "run",
    "spatial",
    "tile",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(f"emo.cli.{_name}")


@app.callback()
def _root(ctx: typer.Context,
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show debug messages."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Show warnings and errors only.")) -> None:
    """Messages go to stderr through the `emo` logger; figures are drawn off-screen (Agg) unless MPLBACKEND says otherwise."""
    import os

    from emo.log import setup

    os.environ.setdefault("MPLBACKEND", "Agg")  # the one place the matplotlib backend is chosen
    setup(1 if verbose else -1 if quiet else 0)
    ctx.call_on_close(_release_folders)


def _release_folders() -> None:
    from emo.run.lock import release_folders

    release_folders()


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2.

    Storage failures (full, read-only, forbidden folder) are one line too; usage errors (missing/invalid
    options) are reported by click itself in standalone mode.
    """
    try:
        app()
    except EmoError as exc:
        typer.echo(f"emo: error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # a write outside `emo.io`'s helpers: a full, read-only or forbidden folder
        from emo.io import storage_error

        if (error := storage_error(exc)) is None:
            raise
        typer.echo(f"emo: error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("emo: interrupted; finished outputs are kept, re-run to resume", err=True)
        sys.exit(130)
