"""Pathology foundation-model presets: exact timm architecture, published output and checkpoint layout.

Each preset names the timm architecture (with the arguments its model card / reference code uses),
the input size and normalisation it was trained with, the embedding it publishes (CLS token, CLS +
mean of patch tokens for Virchow/Virchow2/Midnight, CONCH's attentional pool, Swin's pooled output),
its licence/gating note, and where the checkpoint lives on the Hugging Face hub with its key layout
(timm, transformers ViT/DINOv2, CONCH's open_clip `visual.` tower, CTransPath's timm-0.5 Swin), so a
file copied from the hub onto an offline cluster loads as it is. Checkpoints are read with
safetensors or `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emo.errors import EmoError
from emo.models.backbone_specs import HUB_REPO_TYPE, LAYOUTS, OUTPUTS, PRESETS, EncoderPreset



def _swiglu() -> dict[str, Any]:
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}


def _hf_vit_norm() -> dict[str, Any]:
    return {"norm_layer": functools.partial(nn.LayerNorm, eps=1e-12)}  # transformers ViTConfig.layer_norm_eps


def _conv_stem() -> dict[str, Any]:
    return {"embed_layer": ConvStem}


def timm_kwargs(preset: EncoderPreset) -> dict[str, Any]:
    """The preset's `timm.create_model` arguments, its non-literal layers included."""
    extra = _EXTRA_KWARGS[preset.extra_kwargs]() if preset.extra_kwargs else {}
    return {"num_classes": 0, **preset.create_kwargs, **extra}


_EXTRA_KWARGS = {"swiglu": _swiglu, "hf_vit_norm": _hf_vit_norm, "conv_stem": _conv_stem}



class ConvStem(nn.Module):
    """CTransPath's patch embedding: two stride-2 3×3 conv-BN-ReLU layers and a 1×1 projection
    (replaces Swin's 4×4 patchify); NHWC output as timm's Swin expects."""

    def __init__(self, img_size: Any = 224, patch_size: Any = 4, in_chans: int = 3, embed_dim: int = 96,
                 norm_layer: Any = None, output_fmt: str = "NHWC", **_: Any) -> None:
        super().__init__()
        from timm.layers import to_2tuple

        if to_2tuple(patch_size) != (4, 4):
            raise EmoError(f"CTransPath stem: patch size {patch_size} is not 4")
        size = to_2tuple(img_size)
        self.img_size, self.patch_size = size, (4, 4)
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, embed_dim // 8
        for _ in range(2):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, embed_dim, 1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class AttentionalPool(nn.Module):
    """The attentional pooler of CONCH v1.5: learned queries attend over the trunk's tokens
    (LayerNorm on both sides, bias-free q/kv/out projections)."""

    def __init__(self, d_model: int, context_dim: int, heads: int = 8, queries: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(queries, d_model))
        self.heads = heads
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, h = tokens.shape[0], self.heads
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
        k, v = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2) for t in (q, k, v))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class MultiheadAttentionalPool(nn.Module):
    """open_clip's CoCa attentional pooler as CONCH v1 publishes it: learned queries through
    `nn.MultiheadAttention` (separate q/k/v projections with biases, context of another width)."""

    def __init__(self, d_model: int, context_dim: int, heads: int = 8, queries: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, heads, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.ln_k(tokens)
        q = self.ln_q(self.query).expand(tokens.shape[0], -1, -1)
        return self.attn(q, x, x, need_weights=False)[0]


POOLS = {"multihead": MultiheadAttentionalPool, "bias_free": AttentionalPool}


class EncoderModel(nn.Module):
    """timm trunk + the published read-out: [B, 3, S, S] → [B, dim]."""

    def __init__(self, trunk: nn.Module, output: str, pool: tuple[int, int, str] | None = None) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise EmoError(f"encoder output {output!r} is not one of {', '.join(OUTPUTS)}")
        self.trunk, self.output = trunk, output
        if output == "attn_pool":
            if pool is None or pool[2] not in POOLS:
                raise EmoError(f"attentional-pool output needs pool=(d_model, heads, one of {', '.join(POOLS)})")
            d_model, heads, kind = pool
            self.attn_pool_contrast = POOLS[kind](d_model, trunk.num_features, heads)
            self.ln_contrast = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "pooled":
            return self.trunk(x)
        tokens = self.trunk.forward_features(x)
        if self.output == "attn_pool":
            return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        cls = tokens[:, 0]
        if self.output == "cls":
            return cls
        return torch.cat([cls, tokens[:, self.trunk.num_prefix_tokens:].mean(1)], dim=-1)


def build_encoder(preset: EncoderPreset, **overrides: Any) -> EncoderModel:
    """The preset's architecture with random weights (`overrides`, e.g. depth=2, only for tests)."""
    import timm

    trunk = timm.create_model(preset.arch, pretrained=False, **(timm_kwargs(preset) | overrides))
    return EncoderModel(trunk, preset.output, preset.pool)


# ---- published checkpoint layouts → EncoderModel keys -------------------------------------------------


def to_encoder_state(state: Mapping[str, torch.Tensor], layout: str, model: EncoderModel) -> dict[str, torch.Tensor]:
    """Rename a published checkpoint's tensors onto `model` (an EncoderModel of the same preset)."""
    if layout == "timm":
        out = {f"trunk.{k}": v for k, v in state.items() if not k.startswith("head.")}
    elif layout in ("hf_vit", "hf_dinov2"):
        out = _from_transformers(state)
    elif layout in ("conch_v1", "conch_v15"):
        prefix = "visual." if layout == "conch_v1" else ""
        keep = ("trunk.", "attn_pool_contrast.", "ln_contrast.")
        out = {k[len(prefix):]: v for k, v in state.items()
               if k.startswith(prefix) and k[len(prefix):].startswith(keep) and not k[len(prefix):].startswith("trunk.head.")}
    elif layout == "ctranspath":
        from timm.models.swin_transformer import checkpoint_filter_fn

        out = {f"trunk.{k}": v for k, v in checkpoint_filter_fn(dict(state), model.trunk).items()
               if not k.startswith("head.")}
    else:
        raise EmoError(f"unknown checkpoint layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    trunk, key = model.trunk, "trunk.pos_embed"
    if layout.startswith("hf_") and getattr(trunk, "no_embed_class", False) and key in out:
        # transformers adds a position to CLS; timm's register models do not: fold it into the token
        out["trunk.cls_token"] = out["trunk.cls_token"] + out[key][:, :1]
        out[key] = out[key][:, 1:]
    if key in out and hasattr(trunk, "pos_embed") and out[key].shape != trunk.pos_embed.shape:
        out[key] = _resample_pos_embed(out[key], trunk)
    return out


_HF_LAYER = [  # transformers ViT / DINOv2 encoder-layer names → timm Block names (qkv handled apart)
    ("attention.output.dense.", "attn.proj."),
    ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),  # ViTModel
    ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2."),  # ViTModel
    ("norm1.", "norm1."), ("norm2.", "norm2."), ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),  # Dinov2
    ("mlp.weights_in.", "mlp.fc1."), ("mlp.weights_out.", "mlp.fc2."),  # Dinov2 SwiGLU (packed)
    ("layer_scale1.lambda1", "ls1.gamma"), ("layer_scale2.lambda1", "ls2.gamma"),
]
_HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "reg_token",
           "embeddings.position_embeddings": "pos_embed", "embeddings.patch_embeddings.projection.weight":
           "patch_embed.proj.weight", "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
_HF_DROP = ("embeddings.mask_token", "pooler.")


def _from_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ViTModel / Dinov2Model (optionally under a `vit.`/`dinov2.`/`model.` prefix) → timm."""
    prefixes = ("vit.", "dinov2.", "model.", "backbone.")
    state = {next((k[len(p):] for p in prefixes if k.startswith(p)), k): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(_HF_DROP):
            continue
        if key in _HF_TOP:
            out[f"trunk.{_HF_TOP[key]}"] = value
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", key)
        if m is None:
            out[f"unexpected.{key}"] = value  # reported by the strict load
            continue
        i, rest = int(m.group(1)), m.group(2)
        q = re.fullmatch(r"attention\.attention\.(query|key|value)\.(weight|bias)", rest)
        if q:
            qkv.setdefault((i, q.group(2)), {})[q.group(1)] = value
            continue
        new = next((rest.replace(a, b, 1) for a, b in _HF_LAYER if rest.startswith(a)), None)
        out[f"trunk.blocks.{i}.{new or 'unexpected.' + rest}"] = value
    for (i, kind), parts in qkv.items():
        out[f"trunk.blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def _resample_pos_embed(pos: torch.Tensor, trunk: nn.Module) -> torch.Tensor:
    """A checkpoint trained at another resolution (DINOv2 at 518 px): resample its grid once, bicubic."""
    from timm.layers import resample_abs_pos_embed

    grid = list(trunk.patch_embed.grid_size)
    prefix = trunk.pos_embed.shape[1] - grid[0] * grid[1]
    return resample_abs_pos_embed(pos, new_size=grid, num_prefix_tokens=prefix,
                                  interpolation="bicubic", antialias=False, verbose=False)


# ---- where a preset's weights come from ----------------------------------------------------------------


def weights_map_path() -> Path:
    """The per-user map of local checkpoints: `$XDG_CONFIG_HOME/emo/weights.yaml` (~/.config/emo/…)."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser() / "emo" / "weights.yaml"


def mapped_weights(name: str) -> Path | None:
    """The local checkpoint file/folder the user's weights map gives for preset `name`, if any."""
    path = weights_map_path()
    if not path.is_file():
        return None
    import yaml

    try:
        entries = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise EmoError(f"{path}: not valid YAML ({exc.__class__.__name__}); write lines `<preset>: /path/to/checkpoint`") from None
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise EmoError(f"{path}: expected a mapping `<preset>: /path/to/checkpoint`, one per line")
    unknown = sorted(set(entries) - set(PRESETS))
    if unknown:
        raise EmoError(f"{path}: unknown encoder preset(s) {', '.join(map(str, unknown))}; use names from "
                       "`emo info --backbones`")
    if name not in entries:
        return None
    target = Path(entries[name]).expanduser()
    if not target.exists():
        raise EmoError(f"{path}: {name}: {target} does not exist; fix the path or remove the line")
    return target


def checkpoint_in(folder_or_file: Path, preset: EncoderPreset, name: str) -> Path:
    """The published checkpoint file inside a folder (a hub snapshot or a copy of it), or the file itself."""
    if folder_or_file.is_file():
        return folder_or_file
    if folder_or_file.is_dir():
        for rel in preset.hub_files:
            for candidate in (folder_or_file / rel, folder_or_file / Path(rel).name):
                if candidate.is_file():
                    return candidate
        raise EmoError(f"{folder_or_file}: no {' or '.join(Path(f).name for f in preset.hub_files)} for {name}; "
                       f"place the checkpoint from https://huggingface.co/{preset.hub_repo} there")
    raise EmoError(f"{folder_or_file}: weights file or folder not found; pass an existing checkpoint for {name}")


def hub_checkpoint(name: str, preset: EncoderPreset, repo: str | None = None) -> Path:
    """The preset's checkpoint from the Hugging Face cache, downloaded once when online.

    Offline (HF_HUB_OFFLINE=1) or unreachable, one line names the file to place and where."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    repo = repo or preset.hub_repo
    repo_type = HUB_REPO_TYPE.get(name, "model")
    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    for rel in preset.hub_files:
        hit = try_to_load_from_cache(repo, rel, cache_dir=cache, repo_type=repo_type)
        if isinstance(hit, str):
            return Path(hit)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")
    failure = "offline (HF_HUB_OFFLINE=1)"
    if not offline:
        failure = _unreachable(constants.ENDPOINT)
    if not offline and not failure:
        try:
            return Path(hf_hub_download(repo, preset.hub_files[0], cache_dir=cache, repo_type=repo_type))
        except Exception as exc:  # gated, missing: one line, no traceback
            failure = f"download failed ({type(exc).__name__})"
    url = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo}"
    raise EmoError(f"backbone {name}: checkpoint {preset.hub_files[0]} from {url} not cached and {failure} "
                   f"({preset.licence}); download it on a machine with internet and pass --weights FILE, or add "
                   f"`{name}: /path/to/{Path(preset.hub_files[0]).name}` to {weights_map_path()}")


def _unreachable(endpoint: str, timeout_s: float = 3.0) -> str:
    """'' when the hub answers a TCP connect within `timeout_s`; else why not. huggingface_hub would
    retry a dead network for ~30 s before failing; one short probe fails fast instead."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s).close()
    except OSError as exc:
        return f"hub unreachable ({url.hostname}: {type(exc).__name__})"
    return ""
