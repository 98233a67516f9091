"""emo — transcriptome-wide expression prediction from H&E whole-slide images (EMO, Wang et al. 2021)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("emo")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.1.0"

from emo.errors import EmoError

__all__ = ["EmoError", "__version__"]
