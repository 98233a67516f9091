"""`emo tile`: whole-slide images → QC'd, stain-normalised tile stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from emo.cli._apps import app
from emo.cli._options import config_option
from emo.slides.config import TilingConfig


def tiling_config(p: dict[str, Any]) -> TilingConfig:
    """The `TilingConfig` that `emo tile`'s parsed options mean (a study's `slides:` gives the same object)."""
    classes = p["roi_classes"]
    return TilingConfig.build(
        what="emo tile", tile_size_um=p["tile_um"], target_mpp=p["target_mpp"], mpp=p["mpp"], min_tissue=p["min_tissue"],
        normalize=p["normalize"], stain_reference=str(p["stain_reference"]) if p["stain_reference"] else None,
        roi=p["roi"], min_roi=p["min_roi"], min_sharpness=p["min_sharpness"], save_tiles=p["save_tiles"], seed=p["seed"],
        roi_classes=[c.strip() for c in classes.split(",") if c.strip()] if classes is not None else None,
    )


@app.command()
def tile(
    ctx: typer.Context,
    slides: list[Path] = typer.Argument(..., help="Slide files and/or folders of slides (.svs .tif .ndpi .mrxs ... or JPEG/PNG with --mpp)."),
    out: Path = typer.Option(..., "--out", help="Output folder; stores go to OUT/tiles/<slide_id>.h5 (+ .png thumbnail, summary.csv)."),
    mpp: float | None = config_option(TilingConfig, "mpp", "--mpp"),
    tile_um: float = config_option(TilingConfig, "tile_size_um", "--tile-um"),
    target_mpp: float = config_option(TilingConfig, "target_mpp", "--target-mpp"),
    workers: int = typer.Option(1, "--workers", min=1, help="Slides processed in parallel worker processes (--executor local)."),
    executor: str = typer.Option("local", "--executor", help="Where slides run: local (process pool), ray (a Ray cluster; RAY_ADDRESS or a local one), slurm (a job array; job files in OUT/tiles/.slurm)."),
    roi: Path | None = config_option(TilingConfig, "roi", "--roi"),
    roi_classes: str | None = config_option(TilingConfig, "roi_classes", "--roi-classes", help="comma-separated"),
    min_roi: float | None = config_option(TilingConfig, "min_roi", "--min-roi"),
    normalize: bool = config_option(TilingConfig, "normalize", "--normalize/--no-normalize"),
    stain_reference: Path | None = config_option(TilingConfig, "stain_reference", "--stain-reference"),
    min_tissue: float = config_option(TilingConfig, "min_tissue", "--min-tissue"),
    min_sharpness: float = config_option(TilingConfig, "min_sharpness", "--min-sharpness"),
    save_tiles: bool = config_option(TilingConfig, "save_tiles", "--save-tiles"),
    seed: int = config_option(TilingConfig, "seed", "--seed"),
) -> None:
    """Tile slides into physical-size tiles on tissue, with sharpness QC and stain parameters per slide.

    Finished slides are skipped on a re-run; a slide that fails is reported and the batch goes on.
    """
    from emo.errors import EmoError
    from emo.run.lock import hold_folder
    from emo.slides import find_slides, tile_slides

    config = tiling_config(ctx.params)
    hold_folder(out, "emo tile")
    summary = tile_slides(find_slides(slides), out / "tiles", config, workers=workers, executor=executor)
    ok = summary["status"].isin(["ok", "skipped"])
    for row in summary.loc[ok].itertuples():
        typer.echo(f"{row.slide_id}: {row.mpp:g} µm/px from {row.mpp_source or 'the file'}, read by {row.reader}")
    for warning in summary["warning"].dropna():
        if warning:
            typer.echo(f"emo: warning: {warning}", err=True)
    kept = int(summary.loc[ok, "n_kept"].sum())
    counts = summary["status"].value_counts()
    typer.echo(f"{counts.get('ok', 0)} tiled, {counts.get('skipped', 0)} already done"
               + (f", {counts['failed']} failed" if counts.get("failed") else "")
               + f"; {kept} tiles kept → {out / 'tiles'} (summary.csv)")
    failed = summary.loc[~ok, "error"].tolist()
    if failed:
        raise EmoError(failed[0] if len(failed) == 1 else f"{len(failed)} slides failed: " + " | ".join(failed))
