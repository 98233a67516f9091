"""Pathology foundation-model presets: exact timm architecture, published output and checkpoint layout.

Each preset names the timm architecture (with the arguments its model card / reference code uses),
the input size and normalisation it was trained with, the embedding it publishes (CLS token, CLS +
mean of patch tokens for Virchow/Virchow2/Midnight, CONCH's attentional pool, Swin's pooled output,
KEEP's normalised projection, GenBio-PathFM's per-channel CLS tokens), its licence/gating note, the
published code or model card it follows, and where the checkpoint lives on the Hugging Face hub with
its key layout (timm, transformers ViT/DINOv2, original DINOv2, CONCH's open_clip `visual.` tower,
CTransPath's timm-0.5 Swin, KEEP, MUSK's BEiT-3), so a file copied from the hub onto an offline
cluster loads as it is. Trunks are timm models except two published architectures timm lacks: CONCH
v1.5's iBOT ViT (DINO's forward-time position interpolation) and GenBio-PathFM's RoPE ViT.
Checkpoints are read with safetensors or `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emo.errors import EmoError
from emo.models.backbone_specs import HUB_REPO_TYPE, LAYOUTS, OUTPUTS, PRESETS, EncoderPreset

POS_RESAMPLE = {"bicubic": ("bicubic", False), "bicubic_antialias": ("bicubic", True), "bilinear": ("bilinear", False)}


def _swiglu() -> dict[str, Any]:
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}


def _hf_vit_norm() -> dict[str, Any]:
    return {"norm_layer": functools.partial(nn.LayerNorm, eps=1e-12)}  # transformers ViTConfig.layer_norm_eps


def _conv_stem() -> dict[str, Any]:
    return {"embed_layer": ConvStem}


def _ln_1e5() -> dict[str, Any]:
    return {"norm_layer": functools.partial(nn.LayerNorm, eps=1e-5)}  # torchscale's layernorm_eps


def timm_kwargs(preset: EncoderPreset) -> dict[str, Any]:
    """The preset's `timm.create_model` arguments, its non-literal layers included."""
    extra = _EXTRA_KWARGS[preset.extra_kwargs]() if preset.extra_kwargs else {}
    return {"num_classes": 0, **preset.create_kwargs, **extra}


_EXTRA_KWARGS = {"swiglu": _swiglu, "hf_vit_norm": _hf_vit_norm, "conv_stem": _conv_stem, "ln_1e5": _ln_1e5}


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


def _dino_vit(**kwargs: Any) -> nn.Module:
    """CONCH v1.5's trunk: timm's ViT whose position embedding is interpolated to each input the way
    DINO/iBOT do it, as the published CONCH v1.5 (TITAN) code does."""
    from timm.models.vision_transformer import VisionTransformer

    class DinoInterpolatedViT(VisionTransformer):
        def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, W, C] (dynamic_img_size)
            b, h, w, c = x.shape
            pos = self.pos_embed
            gh, gw = self.patch_embed.grid_size
            if (h, w) != (gh, gw) or h != w:
                # DINO's `scale_factor` bicubic call (+0.1 against float error), not a target size
                grid = pos[:, 1:].reshape(1, gh, gw, c).permute(0, 3, 1, 2)
                grid = nn.functional.interpolate(grid, scale_factor=((h + 0.1) / math.sqrt(gh * gw),
                                                                     (w + 0.1) / math.sqrt(gh * gw)), mode="bicubic")
                pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, c)], dim=1)
            x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, -1, c)], dim=1)
            return self.pos_drop(x + pos)

    return DinoInterpolatedViT(**kwargs)


def _eva(**kwargs: Any) -> nn.Module:
    """MUSK's BEiT-3 vision path as timm's Eva, with the key bias BEiT-3 has and Eva leaves out."""
    from timm.models.eva import Eva

    model = Eva(**kwargs)
    for block in model.blocks:
        block.attn.k_proj = nn.Linear(model.embed_dim, model.embed_dim, bias=True)
    return model


class _RopeBlock(nn.Module):
    """A pre-norm transformer block with LayerScale, rotary q/k (rotation in the RoPE table's bf16,
    prefix tokens included, as published) and a SwiGLU FFN with separate w1/w2/w3."""

    def __init__(self, dim: int, heads: int, hidden: int, init_values: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.w1, self.mlp.w2, self.mlp.w3 = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        from timm.layers import LayerScale

        self.ls1, self.ls2 = LayerScale(dim, init_values), LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        start = n - sin.shape[0]

        def rotate(t: torch.Tensor) -> torch.Tensor:
            r = t.to(sin.dtype)
            body = r[..., start:, :]
            half = torch.cat([-body[..., body.shape[-1] // 2:], body[..., :body.shape[-1] // 2]], dim=-1)
            return torch.cat([r[..., :start, :], body * cos + half * sin], dim=-2).to(t.dtype)

        out = nn.functional.scaled_dot_product_attention(rotate(q), rotate(k), v)
        x = x + self.ls1(self.attn.proj(out.transpose(1, 2).reshape(b, n, c)))
        h = self.norm2(x)
        return x + self.ls2(self.mlp.w3(nn.functional.silu(self.mlp.w1(h)) * self.mlp.w2(h)))


class RopeViT(nn.Module):
    """GenBio-PathFM's single-channel ViT (DINOv3 style): patch tokens after a CLS and storage tokens,
    2-D rotary position embedding with `separate` coordinate normalisation computed in bf16."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 1536, depth: int = 40,
                 num_heads: int = 24, ffn_ratio: float = 4.0, storage_tokens: int = 4, align_to: int = 64,
                 rope_base: float = 100.0, init_values: float = 1e-5, num_classes: int = 0) -> None:
        super().__init__()
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 + storage_tokens
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(1, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, storage_tokens, embed_dim))
        quarter = embed_dim // num_heads // 4
        self.rope_embed = nn.Module()
        self.rope_embed.register_buffer("periods", rope_base ** (
            2 * torch.arange(quarter, dtype=torch.bfloat16) / (2 * quarter)))
        d = int(embed_dim * ffn_ratio * 2 / 3)
        hidden = d + (-d % align_to)
        self.blocks = nn.ModuleList(_RopeBlock(embed_dim, num_heads, hidden, init_values) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def _rope(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        periods = self.rope_embed.periods
        ys = torch.arange(0.5, h, dtype=periods.dtype, device=periods.device) / h
        xs = torch.arange(0.5, w, dtype=periods.dtype, device=periods.device) / w
        coords = 2.0 * torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1) - 1.0
        angles = (2 * math.pi * coords[:, :, None] / periods[None, None, :]).flatten(1, 2).tile(2)
        return torch.sin(angles), torch.cos(angles)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] → normalised tokens [B, 1 + storage + patches, C]."""
        x = self.patch_embed.proj(x)
        sin, cos = self._rope(x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.storage_tokens.expand(b, -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x, sin, cos)
        return self.norm(x)


def _timm(arch: str, **kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False, **kwargs)


TRUNKS = {"timm": _timm, "dino_vit": lambda arch, **kw: _dino_vit(**kw), "eva": lambda arch, **kw: _eva(**kw),
          "genbio": lambda arch, **kw: RopeViT(**kw)}


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

    def __init__(self, trunk: nn.Module, output: str, pool: tuple[int, int, str] | None = None,
                 head: int = 0) -> None:
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
        if output == "proj_l2":  # KEEP's visual_head: Linear, GELU, Linear
            self.head = nn.Sequential(nn.Linear(trunk.num_features, head), nn.GELU(), nn.Linear(head, head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "pooled":
            return self.trunk(x)
        if self.output == "channel_cls":  # each RGB channel through the single-channel trunk
            b, c, h, w = x.shape
            return self.trunk.forward_features(x.reshape(b * c, 1, h, w))[:, 0].reshape(b, -1)
        tokens = self.trunk.forward_features(x)
        if self.output == "attn_pool":
            return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        cls = tokens[:, 0]
        if self.output == "cls":
            return cls
        if self.output == "proj_l2":
            return nn.functional.normalize(self.head(cls), dim=-1)
        return torch.cat([cls, tokens[:, self.trunk.num_prefix_tokens:].mean(1)], dim=-1)


def build_encoder(preset: EncoderPreset, **overrides: Any) -> EncoderModel:
    """The preset's architecture with random weights (`overrides`, e.g. depth=2, only for tests)."""
    trunk = TRUNKS[preset.trunk](preset.arch, **(timm_kwargs(preset) | overrides))
    return EncoderModel(trunk, preset.output, preset.pool, preset.head)


# ---- published checkpoint layouts → EncoderModel keys -------------------------------------------------


def to_encoder_state(state: Mapping[str, torch.Tensor], preset: EncoderPreset,
                     model: EncoderModel) -> dict[str, torch.Tensor]:
    """Rename a published checkpoint's tensors onto `model` (an EncoderModel of `preset`)."""
    layout = preset.layout
    if layout == "timm":
        out = {f"trunk.{k}": v for k, v in state.items() if not k.startswith("head.")}
    elif layout in ("hf_vit", "hf_dinov2"):
        out = _from_transformers(state)
    elif layout == "dinov2":  # facebookresearch/dinov2 names; timm's own DINOv2 converter
        from timm.models.vision_transformer import checkpoint_filter_fn

        out = {f"trunk.{k}": v for k, v in checkpoint_filter_fn(dict(state), model.trunk).items()}
    elif layout in ("conch_v1", "conch_v15"):
        prefix = "visual." if layout == "conch_v1" else ""
        keep = ("trunk.", "attn_pool_contrast.", "ln_contrast.")
        out = {k[len(prefix):]: v for k, v in state.items()
               if k.startswith(prefix) and k[len(prefix):].startswith(keep) and not k[len(prefix):].startswith("trunk.head.")}
    elif layout == "keep":  # the CLIP-style model: image tower `visual.`, projection `visual_head.`
        out = {("trunk." if k.startswith("visual.") else "head.") + k.split(".", 1)[1]: v for k, v in state.items()
               if k.startswith(("visual.", "visual_head."))}
    elif layout == "musk":
        out = _from_beit3(state)
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
        out[key] = _resample_pos_embed(out[key], trunk, preset.pos_resample)
    return out


def _from_beit3(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MUSK's BEiT-3 (torchscale, multiway) → timm Eva: the vision expert `A` of every layer."""
    state = {k.removeprefix("model."): v for k, v in state.items()}
    enc = "beit3.encoder."
    out = {"trunk.cls_token": state.get("beit3.vision_embed.cls_token"),
           "trunk.patch_embed.proj.weight": state.get("beit3.vision_embed.proj.weight"),
           "trunk.patch_embed.proj.bias": state.get("beit3.vision_embed.proj.bias"),
           "trunk.norm.weight": state.get(f"{enc}layer_norm.A.weight"),
           "trunk.norm.bias": state.get(f"{enc}layer_norm.A.bias")}
    positions = state.get(f"{enc}embed_positions.A.weight")
    if positions is not None:  # fairseq positions start at 2
        out["trunk.pos_embed"] = positions[2:].unsqueeze(0)
    names = {"self_attn_layer_norm": "norm1", "self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj",
             "self_attn.v_proj": "attn.v_proj", "self_attn.inner_attn_ln": "attn.norm",
             "self_attn.out_proj": "attn.proj", "final_layer_norm": "norm2", "ffn.fc1": "mlp.fc1",
             "ffn.ffn_layernorm": "mlp.norm", "ffn.fc2": "mlp.fc2"}
    for key, value in state.items():
        m = re.fullmatch(r"beit3\.encoder\.layers\.(\d+)\.(.+?)\.A\.(weight|bias)", key)
        if m is None:  # ffn's expert sits one level up: ffn.A.fc1
            m = re.fullmatch(r"beit3\.encoder\.layers\.(\d+)\.(ffn)\.A\.(\w+)\.(weight|bias)", key)
            if m is None:
                continue
            name, kind = f"ffn.{m.group(3)}", m.group(4)
        else:
            name, kind = m.group(2), m.group(3)
        out[f"trunk.blocks.{m.group(1)}.{names.get(name, 'unexpected.' + name)}.{kind}"] = value
    return {k: v for k, v in out.items() if v is not None}


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


def _resample_pos_embed(pos: torch.Tensor, trunk: nn.Module, method: str) -> torch.Tensor:
    """A checkpoint trained at another grid: resize it once to the trunk's, as the published code does
    (timm's bicubic; DINOv2's antialiased bicubic; CONCH v1.5's bilinear)."""
    from timm.layers import resample_abs_pos_embed

    grid = list(trunk.patch_embed.grid_size)
    prefix = trunk.pos_embed.shape[1] - grid[0] * grid[1]
    interpolation, antialias = POS_RESAMPLE[method]
    return resample_abs_pos_embed(pos, new_size=grid, num_prefix_tokens=prefix,
                                  interpolation=interpolation, antialias=antialias, verbose=False)


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


def _candidates(rel: str) -> tuple[str, ...]:
    """A listed checkpoint file, then its sharded form (`<file>.index.json` naming the shards)."""
    return (rel, f"{rel}.index.json") if rel.endswith((".safetensors", ".bin")) else (rel,)


def checkpoint_in(folder_or_file: Path, preset: EncoderPreset, name: str) -> Path:
    """The published checkpoint file (or shard index) inside a folder (a hub snapshot or a copy of it),
    or the file itself."""
    if folder_or_file.is_file():
        return folder_or_file
    if folder_or_file.is_dir():
        for rel in preset.hub_files:
            for cand in _candidates(rel):
                for path in (folder_or_file / cand, folder_or_file / Path(cand).name):
                    if path.is_file():
                        return path
        raise EmoError(f"{folder_or_file}: no {' or '.join(Path(f).name for f in preset.hub_files)} for {name} "
                       f"(nor its *.index.json with shards); place the checkpoint from "
                       f"https://huggingface.co/{preset.hub_repo} there")
    raise EmoError(f"{folder_or_file}: weights file or folder not found; pass an existing checkpoint for {name}")


def hub_checkpoint(name: str, preset: EncoderPreset, repo: str | None = None) -> Path:
    """The preset's checkpoint from the Hugging Face cache, else downloaded once when online: every file
    the preset lists is tried in order, each also as a shard index (then its shards come along).

    Offline (HF_HUB_OFFLINE=1) or unreachable, one line names the file to place and where."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    repo = repo or preset.hub_repo
    repo_type = HUB_REPO_TYPE.get(name, "model")
    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    candidates = [c for rel in preset.hub_files for c in _candidates(rel)]
    for rel in candidates:
        hit = try_to_load_from_cache(repo, rel, cache_dir=cache, repo_type=repo_type)
        if isinstance(hit, str) and all(isinstance(try_to_load_from_cache(repo, shard, cache_dir=cache,
                                                                          repo_type=repo_type), str)
                                        for shard in _shards(Path(hit), rel)):
            return Path(hit)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")
    failure = "offline (HF_HUB_OFFLINE=1)"
    if not offline:
        failure = _unreachable(constants.ENDPOINT)
    if not offline and not failure:
        tried = []
        for rel in candidates:
            try:
                path = Path(hf_hub_download(repo, rel, cache_dir=cache, repo_type=repo_type))
                for shard in _shards(path, rel):
                    hf_hub_download(repo, shard, cache_dir=cache, repo_type=repo_type)
                return path
            except Exception as exc:  # gated, missing: try the next file, then one line, no traceback
                tried.append(f"{Path(rel).name}: {type(exc).__name__}")
        failure = f"download failed ({'; '.join(tried)})"
    url = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo}"
    files = " or ".join(preset.hub_files)
    raise EmoError(f"backbone {name}: checkpoint {files} from {url} not cached and {failure} "
                   f"({preset.licence}); download it on a machine with internet and pass --weights FILE, or add "
                   f"`{name}: /path/to/{Path(preset.hub_files[0]).name}` to {weights_map_path()}")


def _shards(index: Path, rel: str) -> list[str]:
    """The shard files (relative to the repo) a `*.index.json` names; [] for a single-file checkpoint."""
    if not index.name.endswith(".index.json"):
        return []
    folder = str(Path(rel).parent)
    return [f"{folder}/{s}" if folder != "." else s for s in sorted(set(shard_map(index).values()))]


def shard_map(index: Path) -> dict[str, str]:
    """tensor name → shard file name, from a transformers/safetensors `*.index.json`."""
    import json

    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (OSError, ValueError, AttributeError):
        weight_map = None
    if not isinstance(weight_map, dict) or not weight_map:
        raise EmoError(f"{index}: not a shard index (no `weight_map`); pass the index.json saved with the shards")
    return weight_map


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
