"""Whole-slide images → QC'd, stain-normalised tile stores (`emo tile`)."""

from emo.slides.readers import READERS, SlideReader, open_slide
from emo.slides.store import TileStore
from emo.slides.tiling import TilingConfig, find_slides, tile_slide, tile_slide_at, tile_slides

__all__ = [
    "READERS",
    "SlideReader",
    "TileStore",
    "TilingConfig",
    "find_slides",
    "open_slide",
    "tile_slide",
    "tile_slide_at",
    "tile_slides",
]
