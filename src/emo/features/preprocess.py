"""Stain normalisation of raw tiles batched in torch on any device (the backbone's own input
transform, `emo.models.inputs.to_model_input`, follows it).

On a CUDA device the loader workers only decode; stain normalisation and resizing run here on the
GPU (`normalize_stains`, `to_model_input` on a device tensor), so the model never waits for the CPU.
On CPU the same functions run vectorised inside the loader workers.
"""

from __future__ import annotations


import numpy as np
import torch

from emo.slides.stain import _OD_LUT, IO


def normalize_stains(tiles: torch.Tensor, matrix: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Macenko-normalise uint8 RGB tiles [..., 3] on their device with a matrix from
    `emo.slides.stain.normalization_matrix`, in one batched pass.

    Same float32 steps as `emo.slides.stain.apply_normalization` (OD lookup, 3×3 map, exp, clip,
    truncation to uint8); that numpy kernel stays the CPU path (`TileStore.read_tiles`): in
    cache-sized chunks it is faster on a CPU than torch's whole-array passes.
    """
    lut = torch.as_tensor(_OD_LUT, dtype=torch.float32, device=tiles.device)
    m = torch.as_tensor(matrix).to(torch.float64).T.to(device=tiles.device, dtype=torch.float32)
    value = lut[tiles.reshape(-1, 3).int()] @ m  # int32 indices: half the memory of int64 on a GPU
    return value.neg_().exp_().mul_(IO).clamp_(0, 255).to(torch.uint8).view(tiles.shape)
