"""`ExtractionConfig`: what the features stage computes (`emo features`, a study's `features:`)."""

from __future__ import annotations

from pydantic import Field

from emo.config import StageConfig
from emo.models.backbone_specs import BackboneName


class ExtractionConfig(StageConfig):
    """Backbone and loader settings of one feature extraction: `extract_features(tiles, out_dir, config)`."""

    backbone: BackboneName = Field("efficientnet_lite0", description="Registered name (efficientnet_lite0, …, or a pathology encoder preset such as "
                                        "uni, uni2_h, virchow2, h_optimus_1, conch_v15; `emo info --backbones` lists "
                                        "them) or timm:<arch> / torchvision:<arch>.")
    weights: str = Field("default", description="default | imagenet (downloaded once and cached) | none (random init) | "
                                      "hf-hub:<repo id> (token from HF_TOKEN) | path to .pth/.pt/.bin/.safetensors, or for an "
                                      "encoder preset the folder holding its published checkpoint "
                                      "(default for presets: ~/.config/emo/weights.yaml, then the HF cache).")
    batch_size: int = Field(64, ge=1, description="tiles per forward pass")
    device: str | None = Field(None, description="cpu or cuda (null: cuda when available)")
    workers: int = Field(2, ge=0, description="loader processes reading and normalising tiles (0: in-process)")
    pooling: str | None = Field(None, description="avg, or multistage (timm only); null: the backbone's own")
    input_size: int | None = Field(None, gt=0, description="resize tiles to this many px (null: the backbone's input size)")
    slides_per_job: int = Field(8, ge=1, description="slides per ray/slurm job")
