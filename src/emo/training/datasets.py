"""Training data for end-to-end CNNs (the paper protocol, fine-tuning): tiles read from the slides on demand.

Tiles come through the tile store, so the stain normalisation stored for each slide is applied and no
image copies are needed. A `SlideBalancedSampler` draws slides uniformly (then a tile within the
slide), so large slides do not dominate; augmentation is the paper's random 90° rotations + flips.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from emo.errors import EmoError
from emo.features.preprocess import to_model_input


def random_dihedral(tile: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """One of the 8 rotations/flips of an [H, W, C] tile, uniformly (rot90 × k, then a flip or not)."""
    rng = rng or np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = np.rot90(tile, k, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


def hed_jitter(tile: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Strong colour augmentation (Tellez et al. 2018): each haematoxylin/eosin/DAB channel of the
    colour deconvolution (`skimage.color.rgb2hed`) scaled by U(1−σ, 1+σ) and shifted by U(−σ, σ)·its
    spread, then recomposed with `hed2rgb`; uint8 [H, W, 3] in and out."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(tile)
    scale = rng.uniform(1 - sigma, 1 + sigma, size=3)
    shift = rng.uniform(-sigma, sigma, size=3) * hed.reshape(-1, 3).std(axis=0)
    rgb = hed2rgb(hed * scale + shift)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


class TileDataset(Dataset):
    """(tile tensor [3, S, S], label) pairs over the kept tiles of several tile stores.

    `labels` maps slide_id → the slide's target (scalar or vector; every tile of the slide gets it, as
    in the paper) or, with `level="tile"`, slide_id → array [n_tiles, ...] in tile-store row order.
    Slides without a label are an error, not silently dropped.
    """

    def __init__(self, tile_stores: Sequence[str | Path], labels: Mapping[str, Any], *, input_size: int,
                 mean: Sequence[float], std: Sequence[float], level: str = "slide", augment: bool = True,
                 hed_sigma: float = 0.0) -> None:
        from emo.slides import TileStore

        if level not in ("slide", "tile"):
            raise EmoError(f"TileDataset: level must be 'slide' or 'tile' (got {level!r})")
        self.paths = [Path(p) for p in tile_stores]
        self.slide_ids: list[str] = []
        sizes: list[int] = []
        self.labels: list[np.ndarray] = []
        for path in self.paths:
            store = TileStore(path)
            if store.slide_id not in labels:
                raise EmoError(f"{path}: slide {store.slide_id!r} has no label; pass labels for every slide "
                               "or leave the tile store out")
            label = np.asarray(labels[store.slide_id], dtype=np.float32)
            if level == "tile" and (label.ndim == 0 or len(label) != len(store)):
                raise EmoError(f"{path}: {len(store)} tiles but per-tile labels of shape {label.shape}; "
                               "give one label row per tile in tile-store order")
            self.slide_ids.append(store.slide_id)
            sizes.append(len(store))
            self.labels.append(label)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.level, self.augment, self.hed_sigma = level, augment, float(hed_sigma)
        self.input_size, self.mean, self.std = input_size, tuple(mean), tuple(std)
        self._stores: dict[int, Any] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Global index → (slide number, tile row in that slide's store)."""
        slide = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return slide, int(index - self.offsets[slide])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.load(index)

    def load(self, index: int, rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Item `index`, augmented with `rng` when given: a generator owned by the caller keeps runs
        reproducible even when batches are prepared in another thread (torch's global RNG is shared)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        slide, row = self.locate(index)
        store = self._stores.get(slide)
        if store is None:
            from emo.slides import TileStore

            store = self._stores[slide] = TileStore(self.paths[slide])
        tile = store.read_tiles(np.array([row]))[0]
        if self.augment:
            rng = rng or np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
            tile = random_dihedral(tile, rng)
            if self.hed_sigma > 0:
                tile = hed_jitter(tile, self.hed_sigma, rng)
        x = to_model_input(tile[None], self.input_size, self.mean, self.std)[0]
        label = self.labels[slide][row] if self.level == "tile" else self.labels[slide]
        return x, torch.as_tensor(label)

    def __getstate__(self) -> dict[str, Any]:  # open slide handles stay in the process that opened them
        return {**self.__dict__, "_stores": {}}


class SlideBalancedSampler(Sampler[int]):
    """Draw `num_samples` indices of a `TileDataset`: a slide uniformly, then one of its tiles uniformly.

    Seeded and epoch-aware (`set_epoch`), so a resumed run draws the same tiles.
    """

    def __init__(self, sizes: Sequence[int], num_samples: int, seed: int = 0) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if (self.sizes <= 0).any():
            raise EmoError("SlideBalancedSampler: a slide has no tiles; leave it out of the dataset")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.num_samples, self.seed, self.epoch = int(num_samples), int(seed), 0

    @classmethod
    def for_dataset(cls, dataset: TileDataset, num_samples: int, seed: int = 0) -> SlideBalancedSampler:
        return cls(dataset.sizes, num_samples, seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        slides = rng.integers(len(self.sizes), size=self.num_samples)
        rows = (rng.random(self.num_samples) * self.sizes[slides]).astype(np.int64)
        return iter((self.offsets[slides] + rows).tolist())
