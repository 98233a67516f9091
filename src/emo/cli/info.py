"""`emo info`: versions and available panels — the first thing to paste into a bug report."""

import typer

from emo.cli._apps import app


@app.command()
def info(backbones: bool = typer.Option(False, "--backbones", help="List every registered backbone and encoder "
                                        "preset with its feature dim, input size and where its weights come from."),
         check_weights: tuple[str, str] | None = typer.Option(
             None, "--check-weights", metavar="PRESET PATH",
             help="Load an encoder preset's checkpoint (file, *.index.json of shards, or folder) without a slide; "
                  "report missing/unexpected keys, the weights identity and the embedding dim.")) -> None:
    """Print emo's version, the accelerator in use and the shipped gene panels (or, with --backbones, the backbones)."""
    import platform

    if backbones:
        from emo.models.backbone_specs import backbone_table

        for row in backbone_table():
            typer.echo(f"{row['name']:<22} dim {row['dim']:>5}  {row['input_size']:>3} px  {row['output']:<11} "
                       f"{row['weights']}  — {row['summary']}")
        return
    if check_weights:
        _check_weights(*check_weights)
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


def _check_weights(preset: str, path: str) -> None:
    """`--check-weights`: one report; exit 2 (one line naming the keys) when the checkpoint does not fit."""
    from emo.errors import EmoError
    from emo.models.backbones import check_preset_weights

    r = check_preset_weights(preset, path)
    typer.echo(f"preset {r['preset']}: {r['file']} ({r['tensors']} tensors)\nweights {r['weights']}")
    for kind in ("missing", "unexpected", "wrong_shape"):
        keys = r[kind]
        typer.echo(f"{kind} keys: {len(keys)}" + (f" ({', '.join(keys[:20])}{', …' if len(keys) > 20 else ''})"
                                                  if keys else ""))
    if r["dim"] is None:
        bad = r["missing"] or r["unexpected"] or r["wrong_shape"]
        raise EmoError(f"{r['file']}: does not fit encoder {preset} ({len(r['missing'])} missing, "
                       f"{len(r['unexpected'])} unexpected, {len(r['wrong_shape'])} wrong shape, e.g. "
                       f"{', '.join(bad[:3])}); copy the complete published checkpoint")
    typer.echo(f"embedding dim {r['dim']}: ok")
