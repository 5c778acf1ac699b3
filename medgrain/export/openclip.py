"""open_clip in both directions: start from an open_clip model, hand a medgrain model to open_clip.

Import (``create_model("open_clip:<ref>")``, ``model.preset=open_clip:<ref>``): ``<ref>`` is
``local-dir:PATH``, ``hf-hub:ORG/NAME``, a built-in open_clip model name (random weights) or
``NAME:TAG`` (``NAME:/path/to/weights``), as open_clip's ``create_model(NAME, pretrained=TAG)``.
open_clip builds the model; its towers, projections, logit scale, tokenizer and preprocessing become a
medgrain DualEncoder's with the same weights:

- a native CLIP (Radford et al., ICML 2021, arXiv:2103.00020): open_clip's VisionTransformer and its causal
  text transformer, each keeping its own projection (``image_head``/``text_head`` "identity");
- a custom-text CLIP (a timm image tower and a Hugging Face text tower: BiomedCLIP, Zhang et al., NEJM AI
  2024, arXiv:2303.00915): timm's ViT and medgrain's Hugging Face text tower, with open_clip's projections
  as medgrain heads ("linear", "gelu-mlp").

MGCA's token heads do not exist in these models and are added fresh.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from medgrain.data.text import Tokenizer
from medgrain.models.factory import Imported, ModelConfig
from medgrain.models.hub import PretrainedUnavailableError, fetching

LOCAL_DIR, HF_HUB = "local-dir:", "hf-hub:"
CONFIG_FILE = "open_clip_config.json"
# open_clip's Hugging Face text poolers that are medgrain poolings ("cls_pooler" may use BERT's pooler layer).
HF_POOLERS = {"cls_last_hidden_state_pooler": "cls", "mean_pooler": "mean"}
HF_PROJECTIONS = {"linear": "linear", "mlp": "gelu-mlp"}


def _split_ref(ref: str) -> tuple[str, str | None]:
    """open_clip's model name and ``pretrained`` for ``ref`` (schemas keep their colon)."""
    if not ref:
        raise ValueError("open_clip: needs a reference: local-dir:PATH, hf-hub:ORG/NAME, NAME or NAME:TAG")
    if ref.startswith((LOCAL_DIR, HF_HUB)):
        return ref, None
    name, _, tag = ref.partition(":")
    return name, tag or None


def _hub_hint(model_id: str) -> str:
    return (f"download the repository elsewhere (e.g. `hf download {model_id} --local-dir DIR`: "
            f"{CONFIG_FILE}, the weights and the tokenizer files) and pass open_clip:local-dir:DIR")


def _model_cfg(name: str) -> dict[str, Any]:
    """open_clip's model config of ``name`` (read here too: open_clip does not keep it on the model)."""
    import open_clip
    from open_clip.factory import _get_hf_config

    if name.startswith(LOCAL_DIR):
        path = Path(name[len(LOCAL_DIR):]).expanduser() / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"open_clip local-dir: no {CONFIG_FILE} in {path.parent}")
        config = json.loads(path.read_text())
    elif name.startswith(HF_HUB):
        model_id = name[len(HF_HUB):]
        with fetching("open_clip model", name, _hub_hint(model_id)):
            config = _get_hf_config(model_id)
    else:
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise ValueError(f"unknown open_clip model {name!r}; open_clip.list_models() lists the built-in ones")
        return cfg
    if "model_cfg" not in config:
        raise ValueError(f"open_clip {name}: {CONFIG_FILE} has no model_cfg")
    return config["model_cfg"]


def _create(name: str, pretrained: str | None, model_cfg: dict[str, Any]) -> torch.nn.Module:
    """open_clip's own model, weights loaded; failed downloads say which local directory to pass."""
    import open_clip

    from medgrain.models.image import _without_log

    hf_text = model_cfg.get("text_cfg", {}).get("hf_model_name")
    hint = (f"the text tower's config {hf_text!r} is needed too: download it and set text_cfg.hf_model_name in "
            f"{CONFIG_FILE} to that local folder" if hf_text else "")
    instead = _hub_hint(name[len(HF_HUB):]) if name.startswith(HF_HUB) else (
        f"download the weights elsewhere and pass open_clip:{name}:/path/to/weights or open_clip:local-dir:DIR")
    try:
        with fetching("open_clip model", f"{name}{':' + pretrained if pretrained else ''}",
                      "; ".join(filter(None, [instead, hint]))), _without_log("No pretrained weights loaded"):
            return open_clip.create_model(name, pretrained=pretrained, pretrained_text=False).eval()
    except RuntimeError as e:  # open_clip wraps failed downloads in RuntimeError
        if "Failed" not in str(e) or isinstance(e, PretrainedUnavailableError):
            raise
        raise PretrainedUnavailableError(f"could not fetch open_clip model {name!r} ({e}). {instead}") from e


def _image_side(clip: torch.nn.Module, model_cfg: dict[str, Any], size: int, name: str) -> tuple[dict, str, dict]:
    """medgrain's image tower config, global image head and weights for open_clip's visual tower."""
    from open_clip.timm_model import TimmModel

    vision = model_cfg["vision_cfg"]
    state = clip.visual.state_dict()
    if not isinstance(clip.visual, TimmModel):
        image = {"source": "open_clip", "name": "custom" if name.startswith((LOCAL_DIR, HF_HUB)) else name, "image_size": size,
                 "kwargs": {"embed_dim": model_cfg["embed_dim"], "quick_gelu": model_cfg.get("quick_gelu", False),
                            "vision_cfg": vision}}
        return image, "identity", {f"visual.trunk.{k}": v for k, v in state.items()}
    trunk, head = clip.visual.trunk, clip.visual.head
    pooled_cls = getattr(trunk, "global_pool", None) == "token" and isinstance(
        getattr(trunk, "fc_norm", torch.nn.Identity()), torch.nn.Identity)
    if not pooled_cls:
        raise ValueError(f"open_clip timm tower {vision['timm_model_name']!r} pools with "
                         f"{getattr(trunk, 'global_pool', None)!r}; medgrain's timm ViT tower pools [CLS] after the "
                         "final norm (timm_pool '' or 'token' on a ViT)")
    proj = getattr(head, "proj", None)
    if not isinstance(proj, torch.nn.Linear) or proj.bias is not None or len(head) != 2:
        raise ValueError(f"open_clip timm tower: timm_proj={vision.get('timm_proj')!r} "
                         f"(bias {vision.get('timm_proj_bias', False)}) has no medgrain head; only a bias-free "
                         "'linear' projection maps onto one")
    # open_clip builds the trunk at timm's default size whatever vision_cfg's image_size says: its input size
    # is the trunk's
    size = int(trunk.patch_embed.img_size[0]) if getattr(trunk.patch_embed, "img_size", None) else size
    image = {"source": "timm", "name": vision["timm_model_name"], "image_size": size}
    weights = {f"visual.{k}": v for k, v in state.items() if k.startswith("trunk.")}
    weights["image_proj.weight"] = proj.weight
    return image, "linear", weights


def _text_side(clip: torch.nn.Module, model_cfg: dict[str, Any]) -> tuple[dict, str, dict, dict]:
    """medgrain's text tower config, global text head, saved text config and weights."""
    from medgrain.models.openclip_text import OpenCLIPTextConfig

    text = model_cfg["text_cfg"]
    if not text.get("hf_model_name"):
        text_config = OpenCLIPTextConfig(text, model_cfg["embed_dim"], model_cfg.get("quick_gelu", False)).to_dict()
        tower = {"source": "open_clip", "name_or_path": "clip-bpe", "pretrained": False,
                 "max_length": text.get("context_length", 77), "config": text_config}
        state = {f"text.transformer.{k}": v for k, v in clip.state_dict().items()
                 if not k.startswith(("visual.", "logit_scale", "logit_bias"))}
        return tower, "identity", text_config, state
    encoder = clip.text
    pooler = text.get("hf_pooler_type")
    if pooler not in HF_POOLERS:
        raise ValueError(f"open_clip text_cfg hf_pooler_type={pooler!r} has no medgrain pooling; "
                         f"supported: {sorted(HF_POOLERS)}")
    if isinstance(encoder.proj, torch.nn.Identity):
        head = "identity"
    elif text.get("hf_proj_type") in HF_PROJECTIONS:
        head = HF_PROJECTIONS[text["hf_proj_type"]]
    else:
        raise ValueError(f"open_clip text_cfg hf_proj_type={text.get('hf_proj_type')!r} has no medgrain head")
    tower = {"name_or_path": text["hf_model_name"], "pretrained": False, "pooling": HF_POOLERS[pooler],
             "max_length": text.get("context_length", 77)}
    state = {f"text.{k}": v for k, v in encoder.state_dict().items() if k.startswith("transformer.")}
    state.update({f"text_proj.{k}": v for k, v in encoder.proj.state_dict().items()})
    return tower, head, encoder.config.to_dict(), state


def _preprocess(clip: torch.nn.Module) -> tuple[int, dict[str, Any]]:
    from open_clip.model import get_model_preprocess_cfg

    cfg = get_model_preprocess_cfg(clip)
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"open_clip preprocess size {size}: medgrain's images are square")
        size = size[0]
    return int(size), {"mean": tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                       "std": tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))), "in_chans": 3}


def _tokenizer(name: str, model_cfg: dict[str, Any]) -> Tokenizer:
    import open_clip

    from medgrain.models.openclip_text import clip_bpe_tokenizer

    text = model_cfg["text_cfg"]
    length = text.get("context_length", 77)
    if not text.get("hf_tokenizer_name"):
        return clip_bpe_tokenizer(length)
    with fetching("open_clip tokenizer", name, f"download {text['hf_tokenizer_name']!r} and pass "
                  "open_clip:local-dir:DIR with the tokenizer files in DIR"):
        return Tokenizer(open_clip.get_tokenizer(name).tokenizer, length)


def import_open_clip(ref: str) -> Imported:
    """The open_clip model ``ref`` in medgrain's terms (see the module docstring for ``ref``)."""
    name, pretrained = _split_ref(ref)
    model_cfg = _model_cfg(name)
    clip = _create(name, pretrained, model_cfg)
    if getattr(clip, "logit_bias", None) is not None:
        raise ValueError(f"open_clip {ref}: a SigLIP model (logit_bias); medgrain's objectives are softmax ones")
    size, preprocess = _preprocess(clip)
    image, image_head, image_state = _image_side(clip, model_cfg, size, name)
    text, text_head, text_config, text_state = _text_side(clip, model_cfg)
    config = ModelConfig.model_validate({
        "image": image, "text": text, "embed_dim": model_cfg["embed_dim"], "head": "linear",
        "image_head": image_head, "text_head": text_head, "token_heads": True,
        "init_logit_scale": float(clip.logit_scale.detach().reshape(-1)[0]), "preprocess": preprocess,
    })
    state = {**image_state, **text_state, "logit_scale": clip.logit_scale.detach().reshape(())}
    return Imported(config, text_config, {k: v.detach().clone() for k, v in state.items()}, _tokenizer(name, model_cfg))
