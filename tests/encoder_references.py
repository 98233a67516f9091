"""Reference encoders for the equality tests, written from each model's published description where
the published code is no pip package (CONCH v1.5 / TITAN, MUSK's BEiT-3, GenBio-PathFM), plus the
hub key layouts of transformers-v4 checkpoints. Nothing here imports emo: these are the other side
of the comparison.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    """[B, N, h·d] → [B, h, N, d]."""
    return t.unflatten(-1, (h, -1)).transpose(1, 2)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain scaled dot-product attention with the max subtracted, as the iBOT/torchscale code writes it."""
    sim = torch.einsum("bhid,bhjd->bhij", q * q.shape[-1] ** -0.5, k)
    return torch.einsum("bhij,bhjd->bhid", (sim - sim.amax(-1, keepdim=True)).softmax(-1), v)


# ---- CONCH v1.5 (TITAN's patch encoder): iBOT ViT-L/16 built at 224 px + attentional pooler -----------

class ConchV15Reference(nn.Module):
    """The published vision tower: ViT-L/16 with LayerScale 1.0 at 224 px; for another input the patch
    positions are resized with a bicubic `scale_factor` of (grid + 0.1) / 14 (DINO); a bias-free
    attentional pooler with one query (768-d) reads the tokens, then LayerNorm."""

    def __init__(self, depth: int = 24) -> None:
        super().__init__()
        import timm

        self.trunk = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, global_pool="",
                                       init_values=1.0, depth=depth)
        self.attn_pool_contrast = nn.Module()
        pool = self.attn_pool_contrast
        pool.query = nn.Parameter(torch.randn(1, 768))
        pool.ln_k, pool.ln_q = nn.LayerNorm(1024), nn.LayerNorm(768)
        pool.to_q = nn.Linear(768, 768, bias=False)
        pool.to_kv = nn.Linear(1024, 2 * 768, bias=False)
        pool.to_out = nn.Linear(768, 768, bias=False)
        self.ln_contrast = nn.LayerNorm(768)

    def load_published(self, state: dict[str, torch.Tensor]) -> None:
        """A checkpoint at another grid is first resized bilinearly to 14×14 (timm's resampler)."""
        from timm.layers import resample_abs_pos_embed

        state = dict(state)
        if state["trunk.pos_embed"].shape != self.trunk.pos_embed.shape:
            state["trunk.pos_embed"] = resample_abs_pos_embed(state["trunk.pos_embed"], new_size=[14, 14],
                                                              num_prefix_tokens=1, interpolation="bilinear",
                                                              antialias=False, verbose=False)
        self.load_state_dict(state, strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        w0 = x.shape[-2] // 16
        patches = F.conv2d(x, t.patch_embed.proj.weight, t.patch_embed.proj.bias, stride=16).flatten(2).transpose(1, 2)
        pos = t.pos_embed
        if patches.shape[1] != pos.shape[1] - 1:
            n = math.sqrt(pos.shape[1] - 1)
            grid = pos[:, 1:].reshape(1, int(n), int(n), -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, scale_factor=((w0 + 0.1) / n, (w0 + 0.1) / n), mode="bicubic")
            pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)
        tokens = torch.cat([t.cls_token.expand(x.shape[0], -1, -1), patches], dim=1) + pos
        tokens = t.norm(t.blocks(tokens))
        p = self.attn_pool_contrast
        q = _heads(p.to_q(p.ln_q(p.query)).expand(x.shape[0], -1, -1), 8)
        k, v = (_heads(z, 8) for z in p.to_kv(p.ln_k(tokens)).chunk(2, dim=-1))
        pooled = p.to_out(softmax_attention(q, k, v).transpose(1, 2).flatten(2))
        return self.ln_contrast(pooled[:, 0])


# ---- MUSK: BEiT-3 large (torchscale EncoderConfig: multiway, sub-LN, pre-norm, LayerNorm eps 1e-5) ----

def _multiway(module: nn.Module) -> nn.Module:
    """torchscale's MultiwayWrapper: expert A (vision) and B (language) of the same shape."""
    wrapper = nn.Module()
    wrapper.A, wrapper.B = module, copy.deepcopy(module)
    return wrapper


class _Beit3Layer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.self_attn_layer_norm = _multiway(nn.LayerNorm(dim, eps=1e-5))
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, name, _multiway(nn.Linear(dim, dim)))
        self.self_attn.inner_attn_ln = _multiway(nn.LayerNorm(dim, eps=1e-5))
        self.final_layer_norm = _multiway(nn.LayerNorm(dim, eps=1e-5))
        expert = nn.Module()
        expert.fc1, expert.fc2, expert.ffn_layernorm = nn.Linear(dim, ffn), nn.Linear(ffn, dim), nn.LayerNorm(ffn, eps=1e-5)
        self.ffn = _multiway(expert)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # vision tokens only: every module's expert A
        a = self.self_attn
        h = self.self_attn_layer_norm.A(x)
        q, k, v = (_heads(getattr(a, n).A(h), self.heads) for n in ("q_proj", "k_proj", "v_proj"))
        x = x + a.out_proj.A(a.inner_attn_ln.A(softmax_attention(q, k, v).transpose(1, 2).flatten(2)))
        f = self.ffn.A
        return x + f.fc2(f.ffn_layernorm(F.gelu(f.fc1(self.final_layer_norm.A(x)))))


class MuskReference(nn.Module):
    """MUSK's image path: patch embedding + CLS, fairseq positions (table offset 2), the vision experts,
    final LayerNorm; the published embedding is the CLS token without head or normalisation."""

    def __init__(self, depth: int = 24, img_size: int = 384, dim: int = 1024, heads: int = 16, vocab: int = 16) -> None:
        super().__init__()
        n = (img_size // 16) ** 2
        self.beit3 = nn.Module()
        self.beit3.text_embed = nn.Embedding(vocab, dim)
        self.beit3.vision_embed = nn.Module()
        self.beit3.vision_embed.proj = nn.Conv2d(3, dim, 16, stride=16)
        self.beit3.vision_embed.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.beit3.vision_embed.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        enc = self.beit3.encoder = nn.Module()
        enc.embed_positions = nn.Module()
        enc.embed_positions.A, enc.embed_positions.B = nn.Embedding(n + 3, dim), nn.Embedding(64, dim)
        enc.layers = nn.ModuleList(_Beit3Layer(dim, heads, 4 * dim) for _ in range(depth))
        enc.layer_norm = _multiway(nn.LayerNorm(dim, eps=1e-5))
        self.vision_head, self.language_head = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ve, enc = self.beit3.vision_embed, self.beit3.encoder
        tokens = ve.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([ve.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + enc.embed_positions.A.weight[2:2 + tokens.shape[1]]
        for layer in enc.layers:
            tokens = layer(tokens)
        return enc.layer_norm.A(tokens)[:, 0]


# ---- GenBio-PathFM: single-channel ViT with 2-D RoPE (bf16 table), 4 storage tokens, SwiGLU ------------

class GenBioReference(nn.Module):
    """Each RGB channel is a one-channel image; the RoPE table (`separate` coordinates in [-1, 1],
    base-100 periods) is computed in bf16 and q/k are rotated in bf16; the CLS tokens of R, G, B are
    concatenated. LayerNorm eps 1e-6, LayerScale, qkv without bias, SwiGLU hidden rounded up to 64."""

    def __init__(self, depth: int = 40, dim: int = 1536, heads: int = 24) -> None:
        super().__init__()
        self.heads = heads
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(1, dim, 16, stride=16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, 4, dim))
        d_head = dim // heads
        self.rope_embed = nn.Module()
        self.rope_embed.register_buffer(
            "periods", 100.0 ** (2 * torch.arange(d_head // 4, dtype=torch.bfloat16) / (d_head // 2)))
        hidden = int(dim * 4 * 2 / 3)
        hidden += -hidden % 64
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            b = nn.Module()
            b.norm1, b.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
            b.attn = nn.Module()
            b.attn.qkv, b.attn.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
            b.ls1, b.ls2 = nn.Module(), nn.Module()
            b.ls1.gamma, b.ls2.gamma = nn.Parameter(torch.full((dim,), 1e-5)), nn.Parameter(torch.full((dim,), 1e-5))
            b.mlp = nn.Module()
            b.mlp.w1, b.mlp.w2, b.mlp.w3 = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)
            self.blocks.append(b)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def _sin_cos(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        dt = torch.bfloat16
        ch, cw = torch.arange(0.5, h, dtype=dt) / h, torch.arange(0.5, w, dtype=dt) / w
        coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0
        angles = 2 * math.pi * coords[:, :, None] / self.rope_embed.periods[None, None, :]
        angles = angles.flatten(1, 2).tile(2)
        return torch.sin(angles), torch.cos(angles)

    @staticmethod
    def _rope(t: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        x1, x2 = t.chunk(2, dim=-1)
        return t * cos + torch.cat([-x2, x1], dim=-1) * sin

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_embed.proj(x)
        sin, cos = self._sin_cos(p.shape[2], p.shape[3])
        t = p.flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), self.storage_tokens.expand(len(t), -1, -1), t], dim=1)
        n_prefix = 5
        for b in self.blocks:
            qkv = b.attn.qkv(b.norm1(t)).reshape(t.shape[0], t.shape[1], 3, self.heads, -1)
            q, k, v = (z.transpose(1, 2) for z in qkv.unbind(2))
            q, k = q.to(sin.dtype), k.to(sin.dtype)
            q = torch.cat([q[:, :, :n_prefix], self._rope(q[:, :, n_prefix:], sin, cos)], dim=2).float()
            k = torch.cat([k[:, :, :n_prefix], self._rope(k[:, :, n_prefix:], sin, cos)], dim=2).float()
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)  # as published
            t = t + b.attn.proj(out) * b.ls1.gamma
            h = b.norm2(t)
            t = t + b.mlp.w3(F.silu(b.mlp.w1(h)) * b.mlp.w2(h)) * b.ls2.gamma
        return self.norm(t)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return self._encode(x.reshape(b * c, 1, h, w)).view(b, c, -1).flatten(1)


# ---- transformers v5 module names (pyproject pins >=5) → the v4 names the hub's checkpoints carry ----

def transformers_v4_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ViTModel / Dinov2Model / Dinov2WithRegistersModel state as published on the hub (v4 names;
    DINOv2's SwiGLU packed into weights_in / weights_out)."""
    out: dict[str, torch.Tensor] = {}
    for key, v in state.items():
        k = key.replace("layers.", "encoder.layer.", 1) if key.startswith("layers.") else key
        for new, old in (("attention.q_proj.", "attention.attention.query."),
                         ("attention.k_proj.", "attention.attention.key."),
                         ("attention.v_proj.", "attention.attention.value."),
                         ("attention.o_proj.", "attention.output.dense."),
                         ("mlp.down_proj.", "mlp.weights_out.")):
            k = k.replace(new, old)
        if ".mlp.up_proj." in k:
            continue
        if ".mlp.gate_proj." in k:
            k = k.replace("mlp.gate_proj.", "mlp.weights_in.")
            v = torch.cat([v, state[key.replace("gate_proj", "up_proj")]])
        if key.startswith("layers."):  # ViTModel's own names
            k = k.replace("mlp.fc1.", "intermediate.dense.").replace("mlp.fc2.", "output.dense.")
        out[k] = v
    return out


def dinov2_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers Dinov2WithRegisters (SwiGLU) state → facebookresearch/dinov2 names (OpenMidnight)."""
    out: dict[str, torch.Tensor] = {}
    top = {"embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
           "embeddings.register_tokens": "register_tokens", "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    for key, v in state.items():
        if key in top:
            out[top[key]] = v
            continue
        i, rest = key.removeprefix("encoder.layer.").split(".", 1)
        b = f"blocks.{i}."
        if rest.startswith("attention.q_proj."):
            kind = rest.rsplit(".", 1)[1]
            parts = [state[f"encoder.layer.{i}.attention.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{b}attn.qkv.{kind}"] = torch.cat(parts)
        elif rest.startswith("mlp.gate_proj."):
            kind = rest.rsplit(".", 1)[1]
            out[f"{b}mlp.w12.{kind}"] = torch.cat([v, state[key.replace("gate_proj", "up_proj")]])
        elif not rest.startswith(("attention.k_proj.", "attention.v_proj.", "mlp.up_proj.")):
            for new, old in (("attention.o_proj.", "attn.proj."), ("layer_scale1.lambda1", "ls1.gamma"),
                             ("layer_scale2.lambda1", "ls2.gamma"), ("mlp.down_proj.", "mlp.w3.")):
                rest = rest.replace(new, old)
            out[b + rest] = v
    return out
