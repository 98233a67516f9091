"""Sample sheet ↔ expression columns ↔ slides ↔ patients, with a report of every mismatch.

Mismatches that lose data but are unambiguous (a sheet sample without expression, an expression
column without a sheet row, a sample without slide, a slide file without sample) are reported and
the affected sample left out (or kept without slide). Ambiguities — one patient with several RNA
samples, one slide claimed by several samples — stop the run unless `on_duplicate` says how to
resolve them: `first` keeps the first sheet row, `all` keeps every sample (they share a split, since
splits are by patient). Several rows of one sample with different slides are one sample with
several slides (`slide_id` joined by ";").
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from emo.errors import EmoError
from emo.expression.readers import read_table

REQUIRED = ("sample_id", "patient_id", "cohort")
ON_DUPLICATE = ("error", "first", "all")
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".vms", ".svslide", ".bif", ".jpg", ".png")


def read_sheet(path: str | Path) -> pd.DataFrame:
    """The sample sheet (`emo.expression.readers.read_table`: CSV, TSV or Parquet) with ids as stripped
    strings; one row per sample/slide."""
    path = Path(path)
    if not path.exists():
        raise EmoError(f"{path}: sample sheet not found")
    ids = (*REQUIRED, "slide_id", "split")
    sheet = read_table(path, dtype={c: str for c in ids})
    for col in ids:  # Parquet keeps its own types
        if col in sheet and not pd.api.types.is_string_dtype(sheet[col]):
            sheet[col] = sheet[col].map(lambda v: v if pd.isna(v) else str(v))
    missing = [c for c in REQUIRED if c not in sheet.columns]
    if missing:
        raise EmoError(f"{path}: sample sheet lacks column(s) {', '.join(missing)} "
                       f"(has {', '.join(map(str, sheet.columns))}); it needs at least {', '.join(REQUIRED)}")
    for col in (*REQUIRED, "slide_id", "split"):
        if col in sheet:
            sheet[col] = sheet[col].str.strip().replace("", pd.NA)
    for col in REQUIRED:
        if sheet[col].isna().any():
            row = int(sheet.index[sheet[col].isna()][0]) + 2
            raise EmoError(f"{path}: line {row} has no {col}; every row needs {', '.join(REQUIRED)}")
    return sheet


def _collapse_slides(sheet: pd.DataFrame, path: str) -> pd.DataFrame:
    """One row per sample; a sample's several slides become `"a;b"`; conflicting rows are an error."""
    dup = sheet["sample_id"].duplicated(keep=False)
    if not dup.any():
        return sheet
    other = [c for c in sheet.columns if c not in ("sample_id", "slide_id")]
    for sample, rows in sheet[dup].groupby("sample_id", sort=False):
        for col in other:
            if rows[col].nunique(dropna=False) > 1:
                raise EmoError(f"{path}: sample {sample!r} appears in several rows with different {col} "
                               f"({', '.join(map(str, rows[col].unique()))}); sample ids must be unique")
    agg = {c: "first" for c in other}
    if "slide_id" in sheet:
        agg["slide_id"] = lambda s: ";".join(pd.unique(s.dropna())) or pd.NA
    return sheet.groupby("sample_id", sort=False, as_index=False).agg(agg)[sheet.columns]


def _slide_files(slides: Path) -> dict[str, Path]:
    files = [p for p in sorted(slides.rglob("*")) if p.suffix.lower() in SLIDE_SUFFIXES]
    return {p.stem: p for p in files}


def match_sheet(sheet: pd.DataFrame, expression_samples: dict[str, str], *, sheet_path: str = "sample sheet",
                  on_duplicate: str = "error", slides: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the sheet rows that have expression; return them (indexed by sample_id) and the mismatch report.

    `expression_samples` maps each expression column (sample id) to the file it came from.
    """
    if on_duplicate not in ON_DUPLICATE:
        raise EmoError(f"--on-duplicate {on_duplicate!r} unknown; choose one of {', '.join(ON_DUPLICATE)}")
    report: list[dict] = []

    def note(kind: str, sample=None, patient=None, slide=None, detail=""):
        report.append({"kind": kind, "sample_id": sample, "patient_id": patient, "slide_id": slide, "detail": detail})

    sheet = _collapse_slides(sheet, sheet_path)
    for sample in sheet["sample_id"][~sheet["sample_id"].isin(list(expression_samples))]:
        note("sample_without_expression", sample, detail="in the sheet, in no matrix; left out")
    for sample, src in expression_samples.items():
        if sample not in set(sheet["sample_id"]):
            note("expression_without_sample", sample, detail=f"column of {src}, not in the sheet; left out")
    sheet = sheet[sheet["sample_id"].isin(list(expression_samples))]

    if "slide_id" in sheet:
        for _, row in sheet[sheet["slide_id"].isna()].iterrows():
            note("sample_without_slide", row.sample_id, row.patient_id, detail="kept; it cannot be used to train")
        slides_long = sheet.dropna(subset=["slide_id"]).assign(slide_id=lambda d: d["slide_id"].str.split(";"))
        slides_long = slides_long.explode("slide_id")
        shared = slides_long[slides_long["slide_id"].duplicated(keep=False)]
        for slide, rows in shared.groupby("slide_id", sort=False):
            note("duplicate_slide", ";".join(rows["sample_id"]), None, slide,
                 detail="one slide claimed by several samples")
            if on_duplicate == "error":
                raise EmoError(f"{sheet_path}: slide {slide!r} belongs to several samples "
                               f"({', '.join(rows['sample_id'])}); fix the sheet or pass --on-duplicate first|all")
            if on_duplicate == "first":
                sheet = sheet[~sheet["sample_id"].isin(rows["sample_id"].iloc[1:])]
        if slides is not None:
            files = _slide_files(Path(slides))
            stems = {Path(s).stem for s in slides_long["slide_id"]}
            for slide in slides_long["slide_id"]:
                if Path(slide).stem not in files and not Path(slide).exists():
                    note("slide_not_found", None, None, slide, detail=f"no such file under {slides}")
            for stem, file in files.items():
                if stem not in stems:
                    note("slide_without_sample", None, None, str(file), detail="slide file with no sheet row")

    several = sheet[sheet["patient_id"].duplicated(keep=False)]
    for patient, rows in several.groupby("patient_id", sort=False):
        note("duplicate_patient", ";".join(rows["sample_id"]), patient, detail="several RNA samples of one patient")
        if on_duplicate == "error":
            raise EmoError(f"{sheet_path}: patient {patient!r} has several RNA samples "
                           f"({', '.join(rows['sample_id'])}); keep one in the sheet or pass --on-duplicate first|all")
        if on_duplicate == "first":
            sheet = sheet[~sheet["sample_id"].isin(rows["sample_id"].iloc[1:])]

    columns = ["kind", "sample_id", "patient_id", "slide_id", "detail"]
    return sheet.set_index("sample_id"), pd.DataFrame(report, columns=columns)
