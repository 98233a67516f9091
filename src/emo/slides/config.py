"""`TilingConfig`: what the tiling stage does (`emo tile`, a study's `slides:`); no heavy imports, so the
CLI reads its defaults and help without loading the slide readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from emo.config import StageConfig


class TilingConfig(StageConfig):
    """Parameters of `emo tile` (validated; stored in each tile store as `params_json`)."""

    tile_size_um: float = Field(271.0, gt=0, description="Tile side in µm.")
    target_mpp: float = Field(0.453, gt=0, description="µm/px of the output tiles (0.453 = 20×; 271 µm → 598 px).")
    mpp: float | None = Field(None, gt=0, description="Level-0 µm/px, for slides without it (plain images: her2st photos are 0.688).")
    min_tissue: float = Field(0.5, ge=0, le=1, description="Minimum tissue fraction of a kept tile (pen ink and glass do not count).")
    min_sharpness: float = Field(10.0, ge=0, description="Minimum variance of the Laplacian of a kept tile.")
    normalize: bool = Field(True, description="Macenko stain normalisation (stains estimated per slide).")
    stain_reference: str | None = Field(None, description="RGB image whose stains are the target (default: built-in Macenko reference).")
    stain_sample_tiles: int = Field(64, ge=1, description="Tiles sampled per slide to estimate its stains.")
    roi: Path | None = Field(None, description="QuPath GeoJSON or binary mask image, or a folder of <slide_id>.geojson / <slide_id>_mask.png.")
    roi_classes: list[str] | None = Field(None, description="QuPath classes whose annotations make the ROI (e.g. Tumor,Stroma; "
                                                            "'Unclassified' for annotations without one). Default: every class but Ignore*.")
    min_roi: float | None = Field(None, gt=0, le=1, description="Keep tiles with at least this fraction inside the ROI (default: centre inside).")
    thumbnail_mpp: float = Field(8.0, gt=0, description="µm/px of the QC thumbnail.")
    save_tiles: bool = Field(False, description="Also write the (normalised) tiles as JPEGs to OUT/tiles/<slide_id>/.")
    seed: int = Field(0, description="Seed of the tile sample used for stain estimation.")

    def store_params(self) -> dict[str, Any]:
        """Parameters that change the store's content (a re-run with the same ones skips the slide)."""
        params = self.model_dump(mode="json", exclude={"save_tiles"})
        if self.stain_reference:
            params["stain_reference"] = str(Path(self.stain_reference).resolve())
        if self.roi:
            params["roi"] = str(Path(self.roi).resolve())
        if self.roi_classes is None:  # absent, so stores made before the option existed keep their hash
            params.pop("roi_classes")
        return params
