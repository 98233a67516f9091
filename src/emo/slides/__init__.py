"""Whole-slide images → QC'd, stain-normalised tile stores (`emo tile`)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "readers": ["READERS", "SlideReader", "open_slide"],
        "store": ["TileStore"],
        "config": ["TilingConfig"],
        "tiling": ["find_slides", "tile_slide", "tile_slide_at", "tile_slides"],
    },
)
