"""``medgrain export --format hf``: folders ``transformers`` loads without medgrain installed, and back.

Layout::

    OUT/README.md                 model card (YAML metadata: license, tags, training data and objective, metrics)
    OUT/medgrain_hf.json          what medgrain needs to load the folder back (its ModelConfig, the logit scale)
    OUT/image/                    CLIPVisionModelWithProjection (an open_clip CLIP ViT) or a timm_wrapper model
                                  (a timm tower; its classifier head is medgrain's projection), preprocessor_config.json
    OUT/text/                     the text tower's own transformers class (BertModel...), tokenizer files,
                                  projection.safetensors and projection.json (pooling and projection kind);
                                  open_clip's own text transformer as CLIPTextModelWithProjection

CLIP ViT weights follow transformers' CLIP layout (Radford et al., ICML 2021, arXiv:2103.00020): open_clip's
fused ``in_proj`` is split into q/k/v, ``proj`` transposed into ``visual_projection``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from medgrain.export import EXPORT_FORMATS
from medgrain.export.card import model_card
from medgrain.export.openclip import NotExpressibleError, _empty_out
from medgrain.io import atomic_directory
from medgrain.models.factory import HF_EXPORT_MARKER, Imported, ModelConfig

PROJECTION_FILE, PROJECTION_CONFIG = "projection.safetensors", "projection.json"
TEXT_POOLINGS = ("cls", "mean")
TEXT_HEADS = ("linear", "gelu-mlp", "identity")
# open_clip VisionTransformer options that transformers' CLIP vision model has no counterpart for
CLIP_VISION_UNSUPPORTED = ("ls_init_value", "attentional_pool", "no_ln_pre", "final_ln_after_pool", "qk_norm",
                           "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc",
                           "block_type", "norm_kwargs", "act_kwargs")


# ------------------------------------------------------------------------------ CLIP ViT <-> transformers


def _layer_pairs(i: int, prefix: str = "vision_model.encoder.layers.") -> list[tuple[str, str]]:
    oc, hf = f"transformer.resblocks.{i}.", f"{prefix}{i}."
    names = [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]
    return [(f"{oc}{a}.{p}", f"{hf}{b}.{p}") for a, b in names for p in ("weight", "bias")]


def _split_qkv(state: dict[str, torch.Tensor], layers: int, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        w, b = state[f"transformer.resblocks.{i}.attn.in_proj_weight"], state[f"transformer.resblocks.{i}.attn.in_proj_bias"]
        for x, wi, bi in zip("qkv", w.chunk(3), b.chunk(3)):
            out[f"{prefix}{i}.self_attn.{x}_proj.weight"], out[f"{prefix}{i}.self_attn.{x}_proj.bias"] = wi, bi
    return out


def _merge_qkv(state: dict[str, torch.Tensor], layers: int, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        for p in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{p}"] = torch.cat(
                [state[f"{prefix}{i}.self_attn.{x}_proj.{p}"] for x in "qkv"])
    return out


def _clip_pairs(layers: int) -> list[tuple[str, str]]:
    pairs = [("class_embedding", "vision_model.embeddings.class_embedding"),
             ("conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
             ("positional_embedding", "vision_model.embeddings.position_embedding.weight")]
    pairs += [(f"{a}.{p}", f"vision_model.{b}.{p}") for a, b in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm"))
              for p in ("weight", "bias")]
    for i in range(layers):
        pairs += _layer_pairs(i)
    return pairs


def _clip_text_pairs(layers: int) -> list[tuple[str, str]]:
    pairs = [("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
             ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
             ("ln_final.weight", "text_model.final_layer_norm.weight"),
             ("ln_final.bias", "text_model.final_layer_norm.bias")]
    for i in range(layers):
        pairs += _layer_pairs(i, "text_model.encoder.layers.")
    return pairs


# Per tower: the name pairs, the layer prefix and the projection (open_clip's (d_in, d_out) parameter is the
# transpose of transformers' Linear weight).
_TOWERS = {
    "text": (_clip_text_pairs, "text_model.encoder.layers.", "text_projection", "text_projection.weight"),
    "vision": (_clip_pairs, "vision_model.encoder.layers.", "proj", "visual_projection.weight"),
}


def _open_clip_to_hf(tower: str, state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    pairs, prefix, oc_proj, hf_proj = _TOWERS[tower]
    out = {hf: state[oc] for oc, hf in pairs(layers)}
    out.update(_split_qkv(state, layers, prefix))
    out[hf_proj] = state[oc_proj].T
    return {k: v.detach().contiguous() for k, v in out.items()}


def _hf_to_open_clip(tower: str, state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    pairs, prefix, oc_proj, hf_proj = _TOWERS[tower]
    out = {oc: state[hf] for oc, hf in pairs(layers)}
    out.update(_merge_qkv(state, layers, prefix))
    out[oc_proj] = state[hf_proj].T.contiguous()
    return out


def open_clip_to_hf_text(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """open_clip TextTransformer weights -> CLIPTextModelWithProjection's."""
    return _open_clip_to_hf("text", state, layers)


def hf_to_open_clip_text(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The inverse of open_clip_to_hf_text."""
    return _hf_to_open_clip("text", state, layers)


def clip_text_config(tower, tokenizer):
    """transformers' CLIPTextConfig of open_clip's text transformer (medgrain's OpenCLIPTextTower)."""
    from transformers import CLIPTextConfig

    t = tower.transformer
    cfg = tower.config
    odd = [k for k in CLIP_VISION_UNSUPPORTED if cfg.text_cfg.get(k)]
    if odd or not isinstance(t.text_projection, torch.nn.Parameter):
        raise NotExpressibleError(f"open_clip text_cfg {odd or ['proj_type/proj_bias']}: transformers' CLIP text "
                                  "model has no counterpart")
    hf = tokenizer.hf
    return CLIPTextConfig(
        vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=t.transformer.resblocks[0].mlp.c_fc.out_features,
        num_hidden_layers=t.transformer.layers, num_attention_heads=t.heads, max_position_embeddings=t.context_length,
        hidden_act="quick_gelu" if cfg.quick_gelu else "gelu", layer_norm_eps=t.ln_final.eps,
        projection_dim=cfg.embed_dim, bos_token_id=hf.bos_token_id, pad_token_id=hf.pad_token_id,
        # pooled at the first end-of-text token, as open_clip's argmax (the end-of-text id is the largest)
        eos_token_id=hf.eos_token_id if t.pool_type == "argmax" else t.eos_id,
    )


def open_clip_to_hf_vision(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """open_clip VisionTransformer weights -> CLIPVisionModelWithProjection's."""
    return _open_clip_to_hf("vision", state, layers)


def hf_to_open_clip_vision(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The inverse of open_clip_to_hf_vision."""
    return _hf_to_open_clip("vision", state, layers)


def clip_vision_config(model, config: ModelConfig):
    """transformers' CLIPVisionConfig of medgrain's open_clip ViT tower (refusing what it cannot express)."""
    import open_clip
    from transformers import CLIPVisionConfig

    image = config.image
    base = open_clip.get_model_config(image.name) or {}
    vision = {**image.kwargs.get("vision_cfg", base.get("vision_cfg", {}))}
    odd = [k for k in CLIP_VISION_UNSUPPORTED if vision.get(k)]
    if odd or vision.get("pos_embed_type", "learnable") != "learnable":
        raise NotExpressibleError(f"open_clip vision_cfg {odd or ['pos_embed_type']}: transformers' CLIP vision "
                                  "model has no counterpart")
    trunk = model.visual.trunk
    width = trunk.transformer.width
    quick = image.kwargs.get("quick_gelu", base.get("quick_gelu", False))
    return CLIPVisionConfig(
        hidden_size=width, intermediate_size=trunk.transformer.resblocks[0].mlp.c_fc.out_features,
        num_hidden_layers=trunk.transformer.layers, num_attention_heads=trunk.transformer.resblocks[0].attn.num_heads,
        image_size=image.image_size, patch_size=trunk.patch_size[0], hidden_act="quick_gelu" if quick else "gelu",
        layer_norm_eps=trunk.ln_pre.eps, projection_dim=config.embed_dim,
    )


# ------------------------------------------------------------------------------ image side


def _head(config: ModelConfig, side: str) -> str:
    return getattr(config, f"{side}_head") or config.head


def _timm_classifier(model, config: ModelConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A timm tower as timm's own classifier model whose head (num_classes = embed_dim) is medgrain's
    projection: the pooled feature through ``head``/``fc`` is the image embedding."""
    import timm

    head = _head(config, "image")
    if head not in ("linear", "identity"):
        raise NotExpressibleError(f"image head {head!r}: a timm classifier head is one linear layer")
    args = {"in_chans": config.preprocess.in_chans, **config.image.kwargs}
    if hasattr(model.visual.trunk, "patch_embed"):
        args["img_size"] = config.image.image_size
    classifier = timm.create_model(config.image.name, pretrained=False, num_classes=config.embed_dim, **args)
    pool = getattr(classifier, "global_pool", None)
    if hasattr(classifier, "patch_embed") and (pool != "token" or not isinstance(classifier.fc_norm, torch.nn.Identity)):
        raise NotExpressibleError(f"timm {config.image.name} pools with {pool!r}; medgrain's tower pools [CLS], so its "
                                  "classifier head would see another feature")
    state = classifier.state_dict()
    trunk = model.visual.trunk.state_dict()
    name = classifier.pretrained_cfg.get("classifier", "head")
    state.update({k: trunk[k] for k in trunk})
    weight = model.image_proj.weight if head == "linear" else torch.eye(config.embed_dim)
    state[f"{name}.weight"], state[f"{name}.bias"] = weight.detach(), torch.zeros(config.embed_dim)
    missing = set(classifier.state_dict()) - set(trunk) - {f"{name}.weight", f"{name}.bias"}
    if missing:
        raise NotExpressibleError(f"timm {config.image.name}: weights {sorted(missing)[:3]} of the classifier model "
                                  "are not in medgrain's tower")
    return args, {f"timm_model.{k}": v.detach().contiguous() for k, v in state.items()}


def _preprocess_dict(config: ModelConfig) -> dict[str, Any]:
    p, size = config.preprocess, config.image.image_size
    return {"size": size, "mean": list(p.mean), "std": list(p.std)}


def _write_image(model, config: ModelConfig, out: Path) -> str:
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    pre = _preprocess_dict(config)
    if config.image.source == "open_clip":
        if _head(config, "image") != "identity":
            raise NotExpressibleError(f"a {_head(config, 'image')!r} image head over open_clip's projected [CLS]: "
                                      "CLIPVisionModelWithProjection has one projection (use image_head: identity)")
        hf_config = clip_vision_config(model, config)
        hf_config.architectures = ["CLIPVisionModelWithProjection"]
        hf_config.save_pretrained(out)
        state = open_clip_to_hf_vision(model.visual.trunk.state_dict(), hf_config.num_hidden_layers)
        processor = {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
                     "size": {"shortest_edge": pre["size"]}, "do_center_crop": True,
                     "crop_size": {"height": pre["size"], "width": pre["size"]}, "resample": 2,
                     "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                     "image_mean": pre["mean"], "image_std": pre["std"], "do_convert_rgb": True}
        kind = "clip_vision"
    else:
        from transformers import TimmWrapperConfig

        args, state = _timm_classifier(model, config)
        timm_cfg = {"architecture": config.image.name, "input_size": [config.preprocess.in_chans, pre["size"], pre["size"]],
                    "mean": pre["mean"], "std": pre["std"], "interpolation": "bilinear", "crop_pct": 1.0,
                    "crop_mode": "center", "num_classes": config.embed_dim}
        hf_config = TimmWrapperConfig(architecture=config.image.name, pretrained_cfg=timm_cfg, model_args=args,
                                      num_labels=config.embed_dim)
        hf_config.architectures = ["TimmWrapperForImageClassification"]
        hf_config.save_pretrained(out)
        processor = {"image_processor_type": "TimmWrapperImageProcessor", "architecture": config.image.name,
                     "pretrained_cfg": timm_cfg}
        kind = "timm_wrapper"
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return kind


# ------------------------------------------------------------------------------ text side


def _write_clip_text(model, config: ModelConfig, tokenizer, out: Path) -> None:
    """open_clip's own text transformer as CLIPTextModelWithProjection (its projection included)."""
    from safetensors.torch import save_file

    if _head(config, "text") != "identity":
        raise NotExpressibleError(f"a {_head(config, 'text')!r} text head over open_clip's projected text "
                                  "transformer: CLIPTextModelWithProjection has one projection (use text_head: identity)")
    hf_config = clip_text_config(model.text, tokenizer)
    hf_config.architectures = ["CLIPTextModelWithProjection"]
    out.mkdir(parents=True)
    hf_config.save_pretrained(out)
    save_file(open_clip_to_hf_text(model.text.transformer.state_dict(), hf_config.num_hidden_layers),
              str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(out)
    (out / PROJECTION_CONFIG).write_text(json.dumps(
        {"pooling": "eot", "projection": "included", "embed_dim": config.embed_dim,
         "max_length": tokenizer.max_length}, indent=2))


def _write_text(model, config: ModelConfig, tokenizer, out: Path) -> str:
    from safetensors.torch import save_file

    if config.text.source == "open_clip":
        _write_clip_text(model, config, tokenizer, out)
        return "clip_text"
    head = _head(config, "text")
    if config.text.pooling not in TEXT_POOLINGS or head not in TEXT_HEADS:
        raise NotExpressibleError(f"text pooling {config.text.pooling!r} with head {head!r}: the hf export "
                                  f"describes poolings {TEXT_POOLINGS} and heads {TEXT_HEADS}")
    model.text.transformer.save_pretrained(out)
    tokenizer.save(out)
    save_file({k: v.detach().contiguous() for k, v in model.text_proj.state_dict().items()} or
              {"identity": torch.zeros(0)}, str(out / PROJECTION_FILE))
    (out / PROJECTION_CONFIG).write_text(json.dumps(
        {"pooling": config.text.pooling, "projection": head, "embed_dim": config.embed_dim,
         "max_length": tokenizer.max_length}, indent=2))
    return "transformers"


@EXPORT_FORMATS.register("hf", help="Hugging Face folders: image/ (CLIPVisionModelWithProjection or timm_wrapper), "
                                    "text/ (its own class + projection), README.md model card")
def export_hf(pretrained, checkpoint: Path | None, out: Path) -> Path:
    _empty_out(out)
    model, config = pretrained.model, pretrained.config

    def build(staging: Path) -> None:
        kind = _write_image(model, config, staging / "image")
        text_kind = _write_text(model, config, pretrained.tokenizer, staging / "text")
        meta = {"format": "medgrain-hf", "format_version": 1, "image": kind, "text": text_kind,
                "model": config.model_dump(mode="json"),
                "logit_scale": float(model.logit_scale.detach()), "token_heads_dropped": bool(config.token_heads)}
        (staging / HF_EXPORT_MARKER).write_text(json.dumps(meta, indent=2))
        (staging / "README.md").write_text(model_card(config, kind, text_kind, checkpoint))

    return atomic_directory(out, build)  # ``out`` is absent or empty (_empty_out)


# ------------------------------------------------------------------------------ back into medgrain


def import_hf(folder: str) -> Imported:
    """A folder written by ``export_hf`` as a medgrain model (token heads, which it drops, come back fresh)."""
    from safetensors.torch import load_file

    from medgrain.data.text import Tokenizer
    from medgrain.errors import loading

    root = Path(folder)
    meta = json.loads((root / HF_EXPORT_MARKER).read_text())
    config = ModelConfig.model_validate(meta["model"])
    with loading(root / "image" / "model.safetensors"):
        image = load_file(str(root / "image" / "model.safetensors"))
    if meta["image"] == "clip_vision":
        layers = json.loads((root / "image" / "config.json").read_text())["num_hidden_layers"]
        state = {f"visual.trunk.{k}": v for k, v in hf_to_open_clip_vision(image, layers).items()}
    else:
        state = _timm_back(image, config)
    with loading(root / "text" / "model.safetensors"):
        text = load_file(str(root / "text" / "model.safetensors"))
    text_config = json.loads((root / "text" / "config.json").read_text())
    if meta.get("text") == "clip_text":
        text = hf_to_open_clip_text(text, text_config["num_hidden_layers"])
        text_config = config.text.config  # the OpenCLIPTextConfig the model was built from
    else:
        with loading(root / "text" / PROJECTION_FILE):
            projection = load_file(str(root / "text" / PROJECTION_FILE))
        state.update({f"text_proj.{k}": v for k, v in projection.items() if k != "identity"})
    state.update({f"text.transformer.{k}": v for k, v in text.items()})
    state["logit_scale"] = torch.tensor(meta["logit_scale"])
    return Imported(config, text_config, state, Tokenizer.load(root / "text"))


def _timm_back(image: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    from medgrain.models.image import create_image_tower

    tower = create_image_tower(config.image.source, config.image.name, None, config.image.image_size,
                               config.preprocess.in_chans, **config.image.kwargs)
    trunk = set(tower.trunk.state_dict())
    state = {f"visual.trunk.{k[len('timm_model.'):]}": v for k, v in image.items() if k[len("timm_model."):] in trunk}
    if _head(config, "image") == "linear":
        head = [k for k in image if k.startswith("timm_model.") and k[len("timm_model."):] not in trunk
                and k.endswith(".weight")]
        state["image_proj.weight"] = image[head[0]]
    return state
