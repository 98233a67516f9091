"""Tiles (uint8 RGB, any size) → the float tensor a backbone expects; runs in loader workers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def to_model_input(tiles: np.ndarray | torch.Tensor, input_size: int, mean: Sequence[float],
                   std: Sequence[float]) -> torch.Tensor:
    """uint8 [k, H, W, 3] → float32 [k, 3, input_size, input_size], resized (antialiased) and normalised."""
    x = torch.as_tensor(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (input_size, input_size):
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean_t).div_(std_t).contiguous()
