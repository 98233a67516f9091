"""Pathology encoder presets: exact architectures (checked on the meta device against the published
parameter counts and feature dims) and offline checkpoints in each model's published key layout.

Giant ViTs are never instantiated at full size with real tensors: the checkpoint round trip runs on
a depth-reduced copy of the same architecture, which has the same key layout.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emo.errors import EmoError
from emo.models import create_backbone
from emo.models import encoders
from emo.models.encoders import PRESETS, build_encoder

# Feature dimensions as published on each model card (issue 13), independent of the preset table.
PUBLISHED_DIM = {
    "uni": 1024, "uni2_h": 1536, "conch_v1": 512, "conch_v15": 768, "virchow": 2560, "virchow2": 2560,
    "h_optimus_0": 1536, "h_optimus_1": 1536, "h0_mini": 768, "phikon": 768, "phikon_v2": 1024, "gigapath": 1536,
    "hibou_b": 768, "hibou_l": 1024, "kaiko_vitb8": 768, "lunit_vits8": 384, "ctranspath": 768, "midnight": 3072,
}
SMALL = {"lunit_vits8", "ctranspath"}  # built at full size in the round trip; every other preset at depth 2


def count_parameters(preset) -> int:
    """Parameters of the preset's image tower, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = build_encoder(preset)
    return sum(p.numel() for p in model.parameters())


def test_issue_presets_are_all_registered():
    assert set(PUBLISHED_DIM) <= set(PRESETS)


@pytest.mark.parametrize("name", sorted(PUBLISHED_DIM))
def test_preset_architecture_matches_published_size_and_dim(name):
    preset = PRESETS[name]
    n = count_parameters(preset)
    assert abs(n / 1e6 - preset.params_m) / preset.params_m < 0.05, f"{name}: {n / 1e6:.1f}M parameters"
    with torch.device("meta"):
        y = build_encoder(preset)(torch.empty(2, 3, preset.input_size, preset.input_size))
    assert preset.dim == PUBLISHED_DIM[name] and tuple(y.shape) == (2, PUBLISHED_DIM[name])


# ---- the published layouts, written independently of emo's reader -----------------------------------

def _to_transformers(state: dict[str, torch.Tensor], model, dinov2: bool) -> dict[str, torch.Tensor]:
    """timm ViT keys → a transformers ViTModel (`dinov2=False`) or Dinov2Model checkpoint."""
    trunk, out = model.trunk, {}
    swiglu = dinov2 and type(trunk.blocks[0].mlp).__name__ == "GluMlp"  # DINOv2 ViT-g: weights_in/out
    for key, v in state.items():
        k = key.removeprefix("trunk.")
        parts = k.split(".")
        if parts[0] == "blocks":
            i, rest = parts[1], ".".join(parts[2:])
            base = f"encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                for name, chunk in zip(("query", "key", "value"), v.chunk(3)):
                    out[base + f"attention.attention.{name}.{parts[-1]}"] = chunk.clone()
                continue
            table = ({"norm1.": "norm1.", "norm2.": "norm2.", "ls1.gamma": "layer_scale1.lambda1",
                      "ls2.gamma": "layer_scale2.lambda1", "attn.proj.": "attention.output.dense.",
                      "mlp.fc1.": "mlp.weights_in." if swiglu else "mlp.fc1.",
                      "mlp.fc2.": "mlp.weights_out." if swiglu else "mlp.fc2."} if dinov2 else
                     {"norm1.": "layernorm_before.", "norm2.": "layernorm_after.", "attn.proj.": "attention.output.dense.",
                      "mlp.fc1.": "intermediate.dense.", "mlp.fc2.": "output.dense."})
            src = next(a for a in table if rest.startswith(a))
            out[base + rest.replace(src, table[src], 1)] = v
            continue
        top = {"cls_token": "embeddings.cls_token", "reg_token": "embeddings.register_tokens",
               "pos_embed": "embeddings.position_embeddings", "patch_embed.proj.weight":
               "embeddings.patch_embeddings.projection.weight", "patch_embed.proj.bias":
               "embeddings.patch_embeddings.projection.bias", "norm.weight": "layernorm.weight",
               "norm.bias": "layernorm.bias"}
        out[top[k]] = v
    if getattr(trunk, "no_embed_class", False):  # transformers keeps a CLS position; timm folds it away
        cls_pos = torch.randn(1, 1, trunk.embed_dim)
        out["embeddings.position_embeddings"] = torch.cat([cls_pos, out["embeddings.position_embeddings"]], 1)
        out["embeddings.cls_token"] = out["embeddings.cls_token"] - cls_pos
    out["embeddings.mask_token"] = torch.zeros(1, trunk.embed_dim)
    return out


def _old_swin(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ≥ 0.9 Swin keys → the timm-0.5 layout of CHIEF_CTransPath.pth (downsample at the end of a stage)."""
    import re

    out = {re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample",
                  k.removeprefix("trunk.")): v for k, v in state.items()}
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)  # a buffer old timm saved; dropped on load
    return {"model": out}


def _published(name: str, model) -> tuple[str, object]:
    """(file name, checkpoint object) as the hub publishes it for preset `name`."""
    preset = PRESETS[name]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    file = Path(preset.hub_files[0]).name
    if preset.layout == "timm":
        return file, {k.removeprefix("trunk."): v for k, v in state.items()}
    if preset.layout in ("hf_vit", "hf_dinov2"):
        return file, _to_transformers(state, model, dinov2=preset.layout == "hf_dinov2")
    if preset.layout == "conch_v1":  # the whole CoCa model: text tower and caption pooler come along
        ckpt = {f"visual.{k}": v for k, v in state.items()}
        ckpt |= {"text.token_embedding.weight": torch.zeros(8, 4), "visual.attn_pool_caption.query": torch.zeros(2, 4),
                 "visual.proj_contrast": torch.zeros(512, 512),
                 "logit_scale": torch.zeros(())}
        return file, ckpt
    if preset.layout == "conch_v15":
        return file, state
    assert preset.layout == "ctranspath"
    return file, _old_swin(state)


def _save(obj, path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)


@pytest.mark.parametrize("name", sorted(PUBLISHED_DIM))
def test_published_checkpoint_round_trips_through_a_local_folder(name, monkeypatch, tmp_path):
    preset = PRESETS[name]
    if name not in SMALL:  # same key layout, two blocks: cheap on a 2-core CI runner
        preset = dataclasses.replace(preset, create_kwargs=preset.create_kwargs | {"depth": 2})
        monkeypatch.setitem(encoders.PRESETS, name, preset)
    source = create_backbone(name, "none")
    with torch.no_grad():  # move every tensor off its init (LayerScale 1e-5 would hide a swapped block)
        g = torch.Generator().manual_seed(1)
        for p in source.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    file, ckpt = _published(name, source.model)
    folder = tmp_path / "snapshot"
    folder.mkdir()
    _save(ckpt, folder / file)

    loaded = create_backbone(name, str(folder))
    assert loaded.weights.startswith(f"file:{file}:sha256=") and loaded.pooling == preset.output
    x = torch.randn(2, 3, preset.input_size, preset.input_size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        y_src, y = source(x), loaded(x)
    assert y.shape == (2, PUBLISHED_DIM[name])
    torch.testing.assert_close(y, y_src, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y, create_backbone(name, "none")(x), atol=1e-3)  # the weights did change it


def test_virchow_output_is_cls_then_mean_of_patch_tokens_after_registers(monkeypatch):
    preset = dataclasses.replace(PRESETS["virchow2"], create_kwargs=PRESETS["virchow2"].create_kwargs | {"depth": 1})
    monkeypatch.setitem(encoders.PRESETS, "virchow2", preset)
    model = create_backbone("virchow2", "none")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        tokens = model.model.trunk.forward_features(x)
        y = model(x)
    assert tokens.shape[1] == 1 + 4 + 16 * 16
    torch.testing.assert_close(y, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], -1))


def test_weights_map_and_offline_hub_give_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with pytest.raises(EmoError) as info:
        create_backbone("lunit_vits8")
    msg = str(info.value)
    assert "\n" not in msg and "model.safetensors" in msg and "vit_small_patch8_224.lunit_dino" in msg
    assert "offline (HF_HUB_OFFLINE=1)" in msg and str(tmp_path / "config" / "emo" / "weights.yaml") in msg

    source = create_backbone("lunit_vits8", "none")
    ckpt = tmp_path / "lunit.safetensors"
    _save({k.removeprefix("trunk."): v for k, v in source.model.state_dict().items()}, ckpt)
    (tmp_path / "config" / "emo").mkdir(parents=True)
    (tmp_path / "config" / "emo" / "weights.yaml").write_text(f"lunit_vits8: {ckpt}\n")
    mapped = create_backbone("lunit_vits8")
    assert mapped.weights.startswith("file:lunit.safetensors:sha256=")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(mapped(x), source(x), rtol=0, atol=0)

    (tmp_path / "config" / "emo" / "weights.yaml").write_text(f"lunit: {ckpt}\n")
    with pytest.raises(EmoError, match=r"weights\.yaml: unknown encoder preset\(s\) lunit"):
        create_backbone("lunit_vits8")
    with pytest.raises(EmoError, match=r"empty: no model\.safetensors for lunit_vits8.*huggingface\.co/1aurent"):
        (tmp_path / "empty").mkdir()
        create_backbone("lunit_vits8", str(tmp_path / "empty"))


def test_unreachable_hub_fails_at_once_with_one_line(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    with pytest.raises(EmoError, match=r"hub unreachable \(127\.0\.0\.1: ConnectionRefusedError\)") as info:
        create_backbone("ctranspath")
    assert "\n" not in str(info.value) and "datasets/MahmoodLab/hest-bench" in str(info.value)
    assert "CHIEF_CTransPath.pth" in str(info.value)


def test_wrong_layout_is_refused_with_the_file_named(tmp_path):
    torch.save(create_backbone("resnet18", "none").model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(EmoError, match=r"pytorch_model\.bin: weights do not fit backbone phikon"):
        create_backbone("phikon", str(tmp_path))


def test_info_lists_every_backbone_with_dim_input_size_and_source():
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, "-m", "emo", "info", "--backbones"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()}
    for name, dim in PUBLISHED_DIM.items():
        assert f"dim {dim:>5}  {PRESETS[name].input_size:>3} px" in rows[name]
        assert f"hf:{PRESETS[name].hub_repo}/" in rows[name]
    assert "dim  1280  224 px" in rows["efficientnet_lite0"] and "PyPI wheel" in rows["efficientnet_lite0"]
