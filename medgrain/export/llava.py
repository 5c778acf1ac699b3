"""``medgrain export --format llava-vision``: the image tower as a transformers vision model that drops into
``LlavaForConditionalGeneration`` as its ``vision_tower`` (Liu et al., "Visual Instruction Tuning", NeurIPS 2023,
arXiv:2304.08485).

LLaVA feeds its projector ``hidden_states[vision_feature_layer]`` of the vision tower (without the [CLS] token under
the "default" strategy). An open_clip CLIP ViT becomes ``CLIPVisionModel`` (LLaVA's own tower class); a timm ViT
becomes ``ViTModel``, whose layer layout is timm's ViT one for one (pre-norm blocks, fused qkv split into
query/key/value, final norm). ``vision_hidden_states`` gives the same hidden states from medgrain's tower, so a
user (and the test) can check what the projector will receive. MGLL's MLLM results (Table 6 of the paper: LLaVA,
LLaVA-Med, InstructBLIP, Qwen-VL...) are not reproduced here; docs/interop.md says how to swap a tower in.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from medgrain.export import EXPORT_FORMATS
from medgrain.export.hf import clip_vision_config, open_clip_to_hf_vision
from medgrain.export.openclip import NotExpressibleError, _empty_out

README = """# medgrain vision tower for LLaVA

`{cls}` ({layers} layers, {width} wide, {size} px, patch {patch}) exported from a medgrain checkpoint.

```python
from transformers import AutoConfig, AutoModel, LlavaForConditionalGeneration
llava = LlavaForConditionalGeneration.from_pretrained("llava-hf/llava-1.5-7b-hf")
llava.config.vision_config = AutoConfig.from_pretrained("DIR")
llava.model.vision_tower = AutoModel.from_pretrained("DIR")
# the projector's input width is now {width}: re-create and re-train llava.model.multi_modal_projector
```

Image preprocessing: `preprocessor_config.json` (mean {mean}, std {std}). See medgrain's docs/interop.md for
which layers to re-train and which `vision_feature_layer` to pick.
"""


def vision_blocks(tower: nn.Module) -> nn.ModuleList:
    """The transformer blocks of medgrain's ViT towers (timm's ``blocks``, open_clip's ``resblocks``)."""
    from medgrain.models.image import OpenCLIPVisionTower, TimmViTTower

    if isinstance(tower, TimmViTTower):
        return tower.trunk.blocks
    if isinstance(tower, OpenCLIPVisionTower):
        return tower.trunk.transformer.resblocks
    raise NotExpressibleError(f"{type(tower).__name__}: LLaVA's vision tower is a ViT (a token sequence with [CLS])")


@torch.no_grad()
def vision_hidden_states(tower: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """medgrain's tower's hidden states as transformers numbers them: [0] the input of the first block,
    [i] the output of block i (before any final norm); (N, 1 + patches, width) each."""
    blocks = vision_blocks(tower)
    states: list[torch.Tensor] = []
    hooks = [blocks[0].register_forward_pre_hook(lambda m, args: states.append(args[0]))]
    hooks += [b.register_forward_hook(lambda m, args, out: states.append(out)) for b in blocks]
    try:
        tower(images)
    finally:
        for h in hooks:
            h.remove()
    return states


def _check_plain_timm_vit(trunk: nn.Module, name: str) -> None:
    """ViTModel has none of timm's ViT variants: refuse them by name."""
    odd = []
    if trunk.num_prefix_tokens != 1 or getattr(trunk, "no_embed_class", False):
        odd.append("prefix tokens other than one [CLS] with its position embedding")
    if not isinstance(trunk.norm_pre, nn.Identity):
        odd.append("a pre-norm (norm_pre)")
    block = trunk.blocks[0]
    if not all(isinstance(getattr(block, a, nn.Identity()), nn.Identity) for a in ("ls1", "ls2")):
        odd.append("layer scale")
    if not all(isinstance(getattr(block.attn, a, nn.Identity()), nn.Identity) for a in ("q_norm", "k_norm", "norm")):
        odd.append("q/k norm")
    if type(block.mlp).__name__ != "Mlp" or not isinstance(block.mlp.act, nn.GELU) or block.attn.qkv.bias is None:
        odd.append("an MLP other than Linear-GELU-Linear or a qkv without bias")
    if odd:
        raise NotExpressibleError(f"timm {name}: {', '.join(odd)}; transformers' ViTModel has no counterpart")


def timm_vit_to_hf(trunk: nn.Module) -> dict[str, torch.Tensor]:
    """timm VisionTransformer weights -> transformers ViTModel's."""
    s = trunk.state_dict()
    out = {"embeddings.cls_token": s["cls_token"], "embeddings.position_embeddings": s["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": s["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": s["patch_embed.proj.bias"],
           "layernorm.weight": s["norm.weight"], "layernorm.bias": s["norm.bias"]}
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(len(trunk.blocks)):
        for a, b in names.items():
            for p in ("weight", "bias"):
                out[f"encoder.layer.{i}.{b}.{p}"] = s[f"blocks.{i}.{a}.{p}"]
        for p in ("weight", "bias"):
            for part, chunk in zip(("query", "key", "value"), s[f"blocks.{i}.attn.qkv.{p}"].chunk(3)):
                out[f"encoder.layer.{i}.attention.attention.{part}.{p}"] = chunk
    return {k: v.detach().contiguous() for k, v in out.items()}


def _vit_config(trunk: nn.Module, config):
    from transformers import ViTConfig

    block = trunk.blocks[0]
    return ViTConfig(hidden_size=trunk.embed_dim, num_hidden_layers=len(trunk.blocks),
                     num_attention_heads=block.attn.num_heads, intermediate_size=block.mlp.fc1.out_features,
                     hidden_act="gelu", layer_norm_eps=block.norm1.eps, image_size=config.image.image_size,
                     patch_size=trunk.patch_embed.patch_size[0], num_channels=config.preprocess.in_chans, qkv_bias=True)


def llava_vision_model(pretrained) -> tuple[object, dict[str, torch.Tensor]]:
    """The transformers config and weights of the image tower (without its global projection)."""
    from medgrain.models.image import OpenCLIPVisionTower

    model, config = pretrained.model, pretrained.config
    vision_blocks(model.visual)  # refuses CNN towers
    if isinstance(model.visual, OpenCLIPVisionTower):
        hf_config = clip_vision_config(model, config)
        hf_config.architectures = ["CLIPVisionModel"]
        state = open_clip_to_hf_vision(model.visual.trunk.state_dict(), hf_config.num_hidden_layers)
        state.pop("visual_projection.weight")
        return hf_config, state
    trunk = model.visual.trunk
    _check_plain_timm_vit(trunk, config.image.name)
    hf_config = _vit_config(trunk, config)
    hf_config.architectures = ["ViTModel"]
    return hf_config, timm_vit_to_hf(trunk)


@EXPORT_FORMATS.register("llava-vision", help="the image tower as a transformers vision model for "
                                              "LlavaForConditionalGeneration's vision_tower")
def export_llava_vision(pretrained, checkpoint: Path | None, out: Path) -> Path:
    from safetensors.torch import save_file

    _empty_out(out)
    hf_config, state = llava_vision_model(pretrained)
    out.mkdir(parents=True, exist_ok=True)
    hf_config.save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    p, size = pretrained.config.preprocess, pretrained.config.image.image_size
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
        "do_center_crop": True, "crop_size": {"height": size, "width": size}, "resample": 2, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(p.mean), "image_std": list(p.std),
        "do_convert_rgb": True}, indent=2))
    (out / "README.md").write_text(README.format(
        cls=hf_config.architectures[0], layers=hf_config.num_hidden_layers, width=hf_config.hidden_size, size=size,
        patch=hf_config.patch_size, mean=list(p.mean), std=list(p.std)))
    return out
