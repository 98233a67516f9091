"""`emo info`: versions and available panels — the first thing to paste into a bug report."""

import typer

from emo.cli._apps import app


@app.command()
def info() -> None:
    """Print emo's version, the accelerator in use and the shipped gene panels."""
    import platform

    from emo import __version__
    from emo.panels import get_panel, panel_names

    typer.echo(f"emo {__version__} (Python {platform.python_version()})")
    try:
        import torch

        device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
        typer.echo(f"torch {torch.__version__}, device: {device}")
    except ImportError:
        typer.echo("torch: not installed")
    for name in panel_names():
        typer.echo(f"panel {name}: {len(get_panel(name))} genes")
