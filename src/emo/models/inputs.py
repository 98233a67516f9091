"""Tiles (uint8 RGB, any size) → the float tensor a backbone expects, batched in torch on any device:
what every pixel-reading model and the features stage feed their networks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def to_model_input(tiles: np.ndarray | torch.Tensor, input_size: int, mean: Sequence[float],
                   std: Sequence[float]) -> torch.Tensor:
    """uint8 [k, H, W, 3] → float32 [k, 3, input_size, input_size] on the tiles' device, resized
    (bilinear, antialiased) and normalised.

    Channels are split while still uint8 (a quarter of the bytes), and the /255 and mean/std are one
    affine map after the resize (resizing is linear), on 7× fewer pixels for 598-px tiles.
    """
    x = torch.as_tensor(np.ascontiguousarray(tiles)) if isinstance(tiles, np.ndarray) else tiles
    x = x.permute(0, 3, 1, 2).contiguous().float()
    if x.shape[-2:] != (input_size, input_size):
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x * (1.0 / (255.0 * std_t)) - mean_t / std_t).contiguous()
