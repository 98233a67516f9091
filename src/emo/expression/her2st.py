"""The her2st (legacy ST) folder layout, spelled out once for every reader, stage and CLI help.

    <root>/counts/<S>.tsv.gz            spots × genes raw counts (optional for prediction)
    <root>/spots/<S>.tsv                spot array (x, y) and image pixel (pixel_x, pixel_y) positions
    <root>/images/<S>.jpg               full-resolution H&E, else images/<S>_lowres.png (a preview)
    <root>/labels/<S>_labeled_coordinates.tsv   pathologist spot labels
    <root>/image_dims.json, mpp_estimate.json   full widths of previews, µm/px per section
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DESCRIPTION = "her2st layout: images/<S>.jpg, spots/<S>.tsv, counts/<S>.tsv.gz (counts not needed to predict)"


@dataclass(frozen=True)
class Her2stLayout:
    """Paths of one her2st-layout folder; sections are named by their file stem (A1 … H3)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def counts(self, section: str) -> Path:
        return self.root / "counts" / f"{section}.tsv.gz"

    def spots(self, section: str) -> Path:
        return self.root / "spots" / f"{section}.tsv"

    def labels(self, section: str) -> Path:
        return self.root / "labels" / f"{section}_labeled_coordinates.tsv"

    def full_image(self, section: str) -> Path:
        return self.root / "images" / f"{section}.jpg"

    def preview_image(self, section: str) -> Path:
        return self.root / "images" / f"{section}_lowres.png"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def image_dims(self) -> Path:
        return self.root / "image_dims.json"

    @property
    def mpp_estimate(self) -> Path:
        return self.root / "mpp_estimate.json"

    def image(self, section: str) -> Path | None:
        """The full image when present, else the preview, else None (a count-only section)."""
        for path in (self.full_image(section), self.preview_image(section)):
            if path.exists():
                return path
        return None

    def has_image(self, section: str) -> bool:
        return self.image(section) is not None

    def has_counts(self, section: str) -> bool:
        return self.counts(section).is_file()

    def count_sections(self) -> list[str]:
        return sorted(p.name.removesuffix(".tsv.gz") for p in (self.root / "counts").glob("*.tsv.gz"))

    def scale_files(self) -> list[Path]:
        """Files the reader takes image scale and µm/px from (when present)."""
        return [p for p in (self.image_dims, self.mpp_estimate) if p.is_file()]

    def section_files(self, section: str, *, image: bool) -> list[Path]:
        """Existing input files of a section (for stage fingerprints): counts, spots and, if asked, its image."""
        files = [self.counts(section), self.spots(section)]
        if image:
            files += [self.full_image(section), self.preview_image(section)]
        return [f for f in files if f.exists()]


def her2st_patient(section: str) -> str:
    """her2st sections of one patient share the letter (A1…A6 are patient A)."""
    return str(section)[:1]
