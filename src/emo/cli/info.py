"""`emo info`: versions and available panels — the first thing to paste into a bug report."""

import typer

from emo.cli._apps import app


@app.command()
def info(backbones: bool = typer.Option(False, "--backbones", help="List every registered backbone and encoder "
                                        "preset with its feature dim, input size and where its weights come from.")) -> None:
    """Print emo's version, the accelerator in use and the shipped gene panels (or, with --backbones, the backbones)."""
    import platform

    if backbones:
        from emo.models.backbone_specs import backbone_table

        for row in backbone_table():
            typer.echo(f"{row['name']:<22} dim {row['dim']:>5}  {row['input_size']:>3} px  {row['output']:<10} "
                       f"{row['weights']}  — {row['summary']}")
        return

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
