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

# Feature dimensions as published on each model card (issues 13, 22), independent of the preset table.
PUBLISHED_DIM = {
    "uni": 1024, "uni2_h": 1536, "conch_v1": 512, "conch_v15": 768, "virchow": 2560, "virchow2": 2560,
    "h_optimus_0": 1536, "h_optimus_1": 1536, "h0_mini": 768, "phikon": 768, "phikon_v2": 1024, "gigapath": 1536,
    "hibou_b": 768, "hibou_l": 1024, "kaiko_vitb8": 768, "lunit_vits8": 384, "ctranspath": 768, "midnight": 3072,
    "kaiko_vitb16": 768, "kaiko_vits8": 384, "kaiko_vits16": 384, "kaiko_vitl14": 1024, "openmidnight": 1536,
    "gpfm": 1024, "keep": 768, "musk": 1024, "genbio_pathfm": 4608,
}
NEW_IN_ISSUE_22 = ("kaiko_vitb16", "kaiko_vits8", "kaiko_vits16", "kaiko_vitl14", "openmidnight", "gpfm", "keep",
                   "musk", "genbio_pathfm")


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


# ---- equality with each published reference ---------------------------------------------------------
# The reference is built the way the published code builds it (TRIDENT's encoder definitions, timm /
# transformers with the published arguments, or a module in encoder_references.py written from the
# published description), every weight is moved off its init, the weights are saved in the hub's
# file format and key layout, and that file is loaded through create_backbone. Every model runs at
# depth 2 on both sides (same key layout, and a 2-core CI runner); the full configs are checked above.

DEPTH = 2
_SWIGLU = {"mlp_layer": "swiglu"}  # resolved to timm's SwiGLUPacked + SiLU in _timm_reference
TIMM_REFERENCES = {  # preset → (timm architecture, kwargs as trident/patch_encoder_models/load.py passes them, read-out)
    "uni": ("vit_large_patch16_224", {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}, "model"),
    "uni2_h": ("vit_giant_patch14_224", {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                                         "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True, **_SWIGLU,
                                         "reg_tokens": 8, "dynamic_img_size": True}, "model"),
    "virchow": ("vit_huge_patch14_224", {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
                                         "dynamic_img_size": True, **_SWIGLU}, "cls+mean@1"),
    "virchow2": ("vit_huge_patch14_224", {"img_size": 224, "init_values": 1e-5, "reg_tokens": 4, "mlp_ratio": 5.3375,
                                          "global_pool": "", "dynamic_img_size": True, **_SWIGLU}, "cls+mean@5"),
    "h_optimus_0": ("vit_giant_patch14_reg4_dinov2", {"img_size": 224, "global_pool": "token", "init_values": 1e-5,
                                                      "dynamic_img_size": True}, "model"),
    "h_optimus_1": ("vit_giant_patch14_reg4_dinov2", {"img_size": 224, "global_pool": "token", "init_values": 1e-5,
                                                      "dynamic_img_size": True}, "model"),
    "h0_mini": ("vit_base_patch14_reg4_dinov2", {"img_size": 224, "mlp_ratio": 2.66667 * 2, "global_pool": "",
                                                 "dynamic_img_size": True, **_SWIGLU}, "cls"),
    "gigapath": ("vit_giant_patch14_dinov2", {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                                              "depth": 40, "num_heads": 24, "mlp_ratio": 5.33334,
                                              "dynamic_img_size": True}, "model"),
    "kaiko_vitb8": ("vit_base_patch8_224", {"img_size": 224, "dynamic_img_size": True}, "model"),
    "kaiko_vits8": ("vit_small_patch8_224", {"img_size": 224, "dynamic_img_size": True}, "model"),
    "kaiko_vits16": ("vit_small_patch16_224", {"img_size": 224, "dynamic_img_size": True}, "model"),
    "kaiko_vitb16": ("vit_base_patch16_224", {"img_size": 224, "dynamic_img_size": True}, "model"),
    "kaiko_vitl14": ("vit_large_patch14_reg4_dinov2", {"img_size": 518, "dynamic_img_size": True}, "model"),
    "lunit_vits8": ("vit_small_patch8_224", {"img_size": 224, "dynamic_img_size": True}, "model"),
    "gpfm": ("vit_large_patch14_dinov2", {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True}, "model"),
}
TRANSFORMERS_REFERENCES = {  # preset → (config class, config, read-out, hub file); TRIDENT's forward for each
    "phikon": ("ViT", {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                       "image_size": 224, "patch_size": 16}, "cls"),
    "phikon_v2": ("Dinov2", {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 224,
                             "patch_size": 16, "layerscale_value": 1e-5}, "cls"),
    "hibou_b": ("Dinov2WithRegisters", {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                        "image_size": 224, "patch_size": 14, "num_register_tokens": 4}, "cls"),
    "hibou_l": ("Dinov2WithRegisters", {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                        "image_size": 224, "patch_size": 14, "num_register_tokens": 4}, "cls"),
    "midnight": ("Dinov2", {"hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24,
                            "use_swiglu_ffn": True, "image_size": 224, "patch_size": 14}, "cls+mean@1"),
}
MODULE_REFERENCES = ("conch_v15", "openmidnight", "keep", "musk", "genbio_pathfm")
ROUND_TRIP_ONLY = ("conch_v1", "ctranspath")  # the reference code is no pip package: checked by round trip
_MAX_DELTA: dict[str, float] = {}


def test_every_preset_has_an_equality_test():
    covered = set(TIMM_REFERENCES) | set(TRANSFORMERS_REFERENCES) | set(MODULE_REFERENCES) | set(ROUND_TRIP_ONLY)
    assert covered == set(PRESETS)


def _perturb(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Move every weight off its init so no layer is near identity (LayerScale 1e-5 would hide a block)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _reduced(monkeypatch, name: str, **overrides) -> object:
    """emo's side of a depth-reduced comparison: the same preset with `overrides` (e.g. depth=2)."""
    preset = dataclasses.replace(PRESETS[name], create_kwargs=PRESETS[name].create_kwargs | overrides)
    monkeypatch.setitem(encoders.PRESETS, name, preset)
    return preset


def _save(obj, path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)


def _assert_equal_through_emo(name: str, reference, ckpt, tmp_path: Path, *, file: str | None = None) -> None:
    """Save `ckpt` as the hub's file, load it through create_backbone, compare with `reference` on one batch."""
    preset = PRESETS[name]
    path = tmp_path / (file or Path(preset.hub_files[0]).name)
    _save(ckpt, path)
    backbone = create_backbone(name, str(path))
    assert backbone.weights.startswith(f"file:{path.name}:sha256=")
    x = torch.randn(2, 3, preset.input_size, preset.input_size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want, got = reference(x), backbone(x)
    assert got.shape == (2, PUBLISHED_DIM.get(name, preset.dim)) == want.shape
    delta = float((got - want).abs().max())
    _MAX_DELTA[name] = delta
    print(f"RESULT preset={name} max_abs_delta={delta:.3g}")
    assert delta < 1e-5, f"{name}: max |Δ| {delta:.3g}"
    assert float(want.abs().max()) > 1e-3  # a real embedding, not a vanishing one


def _readout(tokens: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return tokens[:, 0]
    start = int(how.split("@")[1])  # cls+mean@k: patch tokens from index k, as the published forward slices
    return torch.cat([tokens[:, 0], tokens[:, start:].mean(1)], dim=-1)


def _timm_reference(name: str):
    import timm

    arch, kwargs, how = TIMM_REFERENCES[name]
    kwargs = {k: v for k, v in kwargs.items() if k != "depth"} | {"num_classes": 0}
    if kwargs.pop("mlp_layer", None):
        kwargs |= {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}
    model = _perturb(timm.create_model(arch, pretrained=False, **kwargs, depth=DEPTH))
    return (model if how == "model" else lambda x: _readout(model(x), how)), model


@pytest.mark.parametrize("name", sorted(TIMM_REFERENCES))
def test_timm_preset_equals_its_published_reference(name, monkeypatch, tmp_path):
    reference, model = _timm_reference(name)
    _reduced(monkeypatch, name, depth=DEPTH)
    _assert_equal_through_emo(name, reference, dict(model.state_dict()), tmp_path)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS_REFERENCES))
def test_transformers_preset_equals_its_published_reference(name, monkeypatch, tmp_path):
    transformers = pytest.importorskip("transformers")
    from encoder_references import transformers_v4_layout

    kind, config, how = TRANSFORMERS_REFERENCES[name]
    config = dict(config, num_hidden_layers=DEPTH)
    _reduced(monkeypatch, name, depth=DEPTH)
    cfg = getattr(transformers, f"{kind}Config")(**config)
    extra = {"add_pooling_layer": False} if kind == "ViT" else {}
    model = _perturb(getattr(transformers, f"{kind}Model")(cfg, **extra))
    _assert_equal_through_emo(name, lambda x: _readout(model(pixel_values=x).last_hidden_state, how),
                              transformers_v4_layout(model.state_dict()), tmp_path)


def test_conch_v15_equals_published_code_with_a_checkpoint_of_another_grid(monkeypatch, tmp_path):
    from encoder_references import ConchV15Reference

    _reduced(monkeypatch, "conch_v15", depth=DEPTH)
    reference = _perturb(ConchV15Reference(depth=DEPTH))
    ckpt = {k: v.clone() for k, v in reference.state_dict().items()}
    g = torch.Generator().manual_seed(3)  # a checkpoint trained on a 28×28 grid (448 px)
    ckpt["trunk.pos_embed"] = torch.randn(1, 1 + 28 * 28, 1024, generator=g) * 0.5
    reference.load_published(ckpt)
    _assert_equal_through_emo("conch_v15", reference, ckpt, tmp_path)
    native = {**ckpt, "trunk.pos_embed": reference.trunk.pos_embed.detach().clone()}  # a 14×14 checkpoint
    _assert_equal_through_emo("conch_v15", reference, native, tmp_path, file="native.bin")


def test_openmidnight_equals_dinov2_with_registers(monkeypatch, tmp_path):
    transformers = pytest.importorskip("transformers")
    from encoder_references import dinov2_layout

    _reduced(monkeypatch, "openmidnight", depth=DEPTH)
    cfg = transformers.Dinov2WithRegistersConfig(hidden_size=1536, num_hidden_layers=DEPTH, num_attention_heads=24,
                                                 use_swiglu_ffn=True, image_size=224, patch_size=14,
                                                 num_register_tokens=4, layerscale_value=1e-5)
    model = _perturb(transformers.Dinov2WithRegistersModel(cfg))
    _assert_equal_through_emo("openmidnight", lambda x: model(pixel_values=x).last_hidden_state[:, 0],
                              dinov2_layout(model.state_dict()), tmp_path)


def test_keep_equals_its_image_encoder(monkeypatch, tmp_path):
    import timm

    _reduced(monkeypatch, "keep", depth=DEPTH)
    visual = timm.create_model("vit_large_patch16_224", pretrained=False, img_size=224, patch_size=16,
                               init_values=1e-5, num_classes=0, dynamic_img_size=True, depth=DEPTH)
    head = torch.nn.Sequential(torch.nn.Linear(1024, 768), torch.nn.GELU(), torch.nn.Linear(768, 768))
    _perturb(visual), _perturb(head, seed=4)
    ckpt = {f"visual.{k}": v for k, v in visual.state_dict().items()} | \
        {f"visual_head.{k}": v for k, v in head.state_dict().items()} | \
        {"text.embeddings.word_embeddings.weight": torch.zeros(8, 4), "logit_scale": torch.zeros(())}
    _assert_equal_through_emo("keep", lambda x: torch.nn.functional.normalize(head(visual(x)), dim=-1), ckpt, tmp_path)


def test_musk_equals_beit3_vision_path(monkeypatch, tmp_path):
    from encoder_references import MuskReference

    _reduced(monkeypatch, "musk", depth=DEPTH)
    reference = _perturb(MuskReference(depth=DEPTH))
    _assert_equal_through_emo("musk", reference, dict(reference.state_dict()), tmp_path)


def test_genbio_pathfm_equals_its_rope_vit(monkeypatch, tmp_path):
    from encoder_references import GenBioReference

    _reduced(monkeypatch, "genbio_pathfm", depth=DEPTH)
    reference = _perturb(GenBioReference(depth=DEPTH))
    _assert_equal_through_emo("genbio_pathfm", reference, dict(reference.state_dict()), tmp_path)


# ---- round trip for the two presets whose reference code is no pip package ------------------------------

def _old_swin(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ≥ 0.9 Swin keys → the timm-0.5 layout of CHIEF_CTransPath.pth (downsample at the end of a stage)."""
    import re

    out = {re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample",
                  k.removeprefix("trunk.")): v for k, v in state.items()}
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)  # a buffer old timm saved; dropped on load
    return {"model": out}


def _published(name: str, model) -> object:
    """The checkpoint object the hub publishes for a round-trip preset."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if name == "conch_v1":  # the whole CoCa model: text tower and caption pooler come along
        return {f"visual.{k}": v for k, v in state.items()} | {
            "text.token_embedding.weight": torch.zeros(8, 4), "visual.attn_pool_caption.query": torch.zeros(2, 4),
            "visual.proj_contrast": torch.zeros(512, 512), "logit_scale": torch.zeros(())}
    return _old_swin(state)


@pytest.mark.parametrize("name", ROUND_TRIP_ONLY)
def test_published_checkpoint_round_trips_through_a_local_folder(name, monkeypatch, tmp_path):
    preset = _reduced(monkeypatch, name, **({"depth": DEPTH} if name == "conch_v1" else {}))
    source = create_backbone(name, "none")
    _perturb(source.model)
    folder = tmp_path / "snapshot"
    folder.mkdir()
    file = Path(preset.hub_files[0]).name
    _save(_published(name, source.model), folder / file)
    loaded = create_backbone(name, str(folder))
    assert loaded.weights.startswith(f"file:{file}:sha256=") and loaded.pooling == preset.output
    x = torch.randn(2, 3, preset.input_size, preset.input_size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        y_src, y = source(x), loaded(x)
    assert y.shape == (2, PUBLISHED_DIM[name])
    torch.testing.assert_close(y, y_src, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y, create_backbone(name, "none")(x), atol=1e-3)  # the weights did change it


# ---- checkpoints as people have them --------------------------------------------------------------------

def _write_shards(state: dict[str, torch.Tensor], folder: Path, stem: str, suffix: str) -> Path:
    """Split `state` into two shards plus the transformers-style `<stem><suffix>.index.json`."""
    import json

    keys = list(state)
    shards = {f"{stem}-0000{i + 1}-of-00002{suffix}": dict((k, state[k]) for k in part)
              for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:]))}
    for file, part in shards.items():
        _save(part, folder / file)
    index = folder / f"{stem}{suffix}.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: f for f, part in shards.items() for k in part}}))
    return index


@pytest.mark.parametrize(("name", "stem", "suffix"), [("lunit_vits8", "model", ".safetensors"),
                                                      ("h_optimus_0", "pytorch_model", ".bin")])
def test_sharded_checkpoint_loads_from_its_index(name, stem, suffix, monkeypatch, tmp_path):
    reference, model = _timm_reference(name)
    _reduced(monkeypatch, name, depth=DEPTH)
    folder = tmp_path / "snapshot"
    folder.mkdir()
    index = _write_shards(dict(model.state_dict()), folder, stem, suffix)
    x = torch.randn(1, 3, 224, 224)
    for where in (folder, index):  # a snapshot folder, or the index itself
        backbone = create_backbone(name, str(where))
        assert backbone.weights.startswith(f"file:{index.name}:sha256=")
        with torch.inference_mode():
            torch.testing.assert_close(backbone(x), reference(x), rtol=0, atol=0)
    next(folder.glob(f"{stem}-00002*")).unlink()
    with pytest.raises(EmoError, match=rf"index\.json: shard {stem}-00002-of-00002{suffix} is missing"):
        create_backbone(name, str(folder))


def _cache_file(cache: Path, repo: str, rel: str) -> Path:
    """A file in the Hugging Face cache layout (refs/main → snapshots/<commit>/rel)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text("0" * 40)
    path = root / "snapshots" / ("0" * 40) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_hub_cache_is_searched_for_every_listed_file_and_its_shards(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    preset = PRESETS["h_optimus_0"]  # lists model.safetensors, then pytorch_model.bin
    second = _cache_file(tmp_path / "hf", preset.hub_repo, "pytorch_model.bin")
    second.write_bytes(b"0")
    assert encoders.hub_checkpoint("h_optimus_0", preset) == second
    index = _write_shards({"a": torch.zeros(1), "b": torch.ones(1)}, second.parent, "model", ".safetensors")
    assert encoders.hub_checkpoint("h_optimus_0", preset) == index  # the first listed file, sharded
    next(second.parent.glob("model-00001*")).unlink()  # an incomplete shard set is not a hit
    assert encoders.hub_checkpoint("h_optimus_0", preset) == second


def _emo(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "emo", *args], capture_output=True, text=True, env=env, timeout=300)


def test_check_weights_reports_keys_identity_and_dim(tmp_path):
    state = {k.removeprefix("trunk."): v for k, v in create_backbone("lunit_vits8", "none").model.state_dict().items()}
    good = tmp_path / "model.safetensors"
    _save(state, good)
    done = _emo("info", "--check-weights", "lunit_vits8", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "missing keys: 0" in done.stdout and "unexpected keys: 0" in done.stdout
    assert "weights file:model.safetensors:sha256=" in done.stdout and "embedding dim 384: ok" in done.stdout

    truncated = tmp_path / "cut" / "model.safetensors"  # a copy that stopped before the last block
    truncated.parent.mkdir()
    _save({k: v for k, v in state.items() if not k.startswith(("blocks.11.", "norm."))}, truncated)
    done = _emo("info", "--check-weights", "lunit_vits8", str(truncated))
    assert done.returncode == 2
    assert "missing keys: 14 (trunk.blocks.11.norm1.weight" in done.stdout and "trunk.norm.bias" in done.stdout
    err = done.stderr.strip()
    assert "\n" not in err and "does not fit encoder lunit_vits8 (14 missing" in err and "Traceback" not in err


def test_check_weights_builds_buffers_no_checkpoint_holds(tmp_path):
    from emo.models.backbones import check_preset_weights

    ckpt = tmp_path / "CHIEF_CTransPath.pth"
    torch.save(_old_swin(create_backbone("ctranspath", "none").model.state_dict()), ckpt)
    report = check_preset_weights("ctranspath", str(ckpt))
    assert (report["missing"], report["unexpected"], report["dim"]) == ([], [], 768)


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
    with pytest.raises(EmoError, match=r"empty: no model\.safetensors for lunit_vits8 .*index\.json.*huggingface\.co/1aurent"):
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
    assert set(NEW_IN_ISSUE_22) <= set(rows)
    for name, dim in PUBLISHED_DIM.items():
        assert f"dim {dim:>5}  {PRESETS[name].input_size:>3} px" in rows[name]
        assert f"hf:{PRESETS[name].hub_repo}/" in rows[name]
    assert "dim  1280  224 px" in rows["efficientnet_lite0"] and "PyPI wheel" in rows["efficientnet_lite0"]
