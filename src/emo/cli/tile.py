"""`emo tile`: whole-slide images → QC'd, stain-normalised tile stores."""

from __future__ import annotations

from pathlib import Path

import typer

from emo.cli._apps import app


@app.command()
def tile(
    slides: list[Path] = typer.Argument(..., help="Slide files and/or folders of slides (.svs .tif .ndpi .mrxs ... or JPEG/PNG with --mpp)."),
    out: Path = typer.Option(..., "--out", help="Output folder; stores go to OUT/tiles/<slide_id>.h5 (+ .png thumbnail, summary.csv)."),
    mpp: float | None = typer.Option(None, "--mpp", help="Level-0 µm/px, for slides without it (plain images: her2st photos are 0.688)."),
    tile_um: float = typer.Option(271.0, "--tile-um", help="Tile side in µm."),
    target_mpp: float = typer.Option(0.453, "--target-mpp", help="µm/px of the output tiles (0.453 = 20×; 271 µm → 598 px)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Slides processed in parallel worker processes (--executor local)."),
    executor: str = typer.Option("local", "--executor", help="Where slides run: local (process pool), ray (a Ray cluster; RAY_ADDRESS or a local one), slurm (a job array; job files in OUT/tiles/.slurm)."),
    roi: Path | None = typer.Option(None, "--roi", help="QuPath GeoJSON or binary mask image, or a folder of <slide_id>.geojson / <slide_id>_mask.png."),
    roi_classes: str | None = typer.Option(None, "--roi-classes", help="Comma-separated QuPath classes whose annotations make the ROI (e.g. Tumor,Stroma; 'Unclassified' for annotations without one). Default: every class but Ignore*."),
    min_roi: float | None = typer.Option(None, "--min-roi", help="Keep tiles with at least this fraction inside the ROI (default: centre inside)."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Macenko stain normalisation (stains estimated per slide)."),
    stain_reference: Path | None = typer.Option(None, "--stain-reference", help="RGB image whose stains are the target (default: built-in Macenko reference)."),
    min_tissue: float = typer.Option(0.5, "--min-tissue", help="Minimum tissue fraction of a kept tile (pen ink and glass do not count)."),
    min_sharpness: float | None = typer.Option(None, "--min-sharpness", help="Minimum variance of the Laplacian of a kept tile (default 10)."),
    save_tiles: bool = typer.Option(False, "--save-tiles", help="Also write the (normalised) tiles as JPEGs to OUT/tiles/<slide_id>/."),
    seed: int = typer.Option(0, "--seed", help="Seed of the tile sample used for stain estimation."),
) -> None:
    """Tile slides into physical-size tiles on tissue, with sharpness QC and stain parameters per slide.

    Finished slides are skipped on a re-run; a slide that fails is reported and the batch goes on.
    """
    from emo.errors import EmoError
    from emo.run.lock import hold_folder
    from emo.slides import TilingConfig, find_slides, tile_slides

    options = dict(
        tile_size_um=tile_um, target_mpp=target_mpp, mpp=mpp, min_tissue=min_tissue, normalize=normalize,
        stain_reference=str(stain_reference) if stain_reference else None, roi=roi, min_roi=min_roi,
        roi_classes=[c.strip() for c in roi_classes.split(",") if c.strip()] if roi_classes is not None else None,
        save_tiles=save_tiles, seed=seed,
    )  # fmt: skip
    if min_sharpness is not None:
        options["min_sharpness"] = min_sharpness
    try:
        config = TilingConfig(**options)
    except ValueError as exc:
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": ("?",), "msg": str(exc)}
        raise EmoError(f"invalid option {first['loc'][0]}: {first['msg']}") from None
    hold_folder(out, "emo tile")
    summary = tile_slides(find_slides(slides), out, config, workers=workers, executor=executor)
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
