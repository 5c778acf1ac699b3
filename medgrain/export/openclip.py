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
from medgrain.export import EXPORT_FORMATS
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


def _check_timm_pooling(trunk: torch.nn.Module, name: str) -> None:
    """medgrain's timm towers pool a ViT's [CLS] after the final norm and average a CNN's last stage."""
    from timm.models import is_model_in_modules

    from medgrain.models.image import TIMM_VIT_MODULES

    pool = trunk.global_pool
    if is_model_in_modules(name, TIMM_VIT_MODULES):
        ok = pool == "token" and isinstance(getattr(trunk, "fc_norm", torch.nn.Identity()), torch.nn.Identity)
        want = "[CLS] after the final norm (timm_pool '' or 'token')"
    else:
        ok = getattr(pool, "pool_type", None) == "avg" and isinstance(getattr(trunk, "fc", None), torch.nn.Identity)
        want = "the average of the last stage (timm_pool 'avg')"
        pool = getattr(pool, "pool_type", pool)
    if not ok:
        raise ValueError(f"open_clip timm tower {name!r} pools with {pool!r}; medgrain's timm tower for it pools {want}")


def _timm_size(trunk: torch.nn.Module, size: int) -> int:
    """open_clip builds a timm ViT at timm's default size whatever vision_cfg's image_size says: the input
    size is the trunk's (a CNN takes any)."""
    patch_embed = getattr(trunk, "patch_embed", None)
    return int(patch_embed.img_size[0]) if getattr(patch_embed, "img_size", None) else size


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
    if not isinstance(trunk.get_classifier(), torch.nn.Identity):
        raise ValueError(f"open_clip timm tower: timm_proj={vision.get('timm_proj')!r} projects with the trunk's "
                         "own classifier (with bias); medgrain's heads are 'linear' (bias-free) or none")
    _check_timm_pooling(trunk, vision["timm_model_name"])
    image = {"source": "timm", "name": vision["timm_model_name"]}
    weights = {f"visual.{k}": v for k, v in state.items() if k.startswith("trunk.")}
    if len(head) == 0:  # timm_proj "none": the trunk's pooled feature is the embedding
        return {**image, "image_size": _timm_size(trunk, size)}, "identity", weights
    proj = getattr(head, "proj", None)
    if not isinstance(proj, torch.nn.Linear) or proj.bias is not None or len(head) != 2:
        raise ValueError(f"open_clip timm tower: timm_proj={vision.get('timm_proj')!r} "
                         f"(bias {vision.get('timm_proj_bias', False)}) has no medgrain head; only a bias-free "
                         "'linear' projection maps onto one")
    weights["image_proj.weight"] = proj.weight
    return {**image, "image_size": _timm_size(trunk, size)}, "linear", weights


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


# ---------------------------------------------------------------------------------------------------
# Export: a medgrain model as an open_clip local-dir

WEIGHTS_FILE = "open_clip_model.safetensors"
POOLINGS_TO_HF = {v: k for k, v in HF_POOLERS.items()}
HEADS_TO_HF = {"linear": "linear", "gelu-mlp": "mlp"}


class NotExpressibleError(ValueError):
    """A medgrain model part that open_clip has no way to express."""


def _head_kind(config: ModelConfig, side: str) -> str:
    return getattr(config, f"{side}_head") or config.head


def _timm_vision(model, config: ModelConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A timm tower: open_clip's TimmModel (pooling and projection from medgrain's tower and head)."""
    from medgrain.models.image import TimmViTTower

    image = config.image
    if image.kwargs:
        raise NotExpressibleError(f"the timm image tower's kwargs {image.kwargs}: open_clip's timm_model_name "
                                  "builds timm's registered architecture only")
    default = model.visual.trunk.pretrained_cfg.get("input_size", (3, image.image_size, image.image_size))[-1]
    vit = isinstance(model.visual, TimmViTTower)
    if vit and default != image.image_size:
        raise NotExpressibleError(f"a timm ViT at {image.image_size} px: open_clip builds timm towers at their "
                                  f"default size ({default} px for {image.name})")
    head = _head_kind(config, "image")
    if head not in ("linear", "identity"):
        raise NotExpressibleError(f"image head {head!r}: open_clip's timm projections are 'linear' and timm's Mlp, "
                                  "not MGCA's BatchNorm MLP")
    vision = {"timm_model_name": image.name, "timm_model_pretrained": False, "timm_pool": "token" if vit else "avg",
              "timm_proj": "linear" if head == "linear" else "none", "image_size": image.image_size}
    state = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    if head == "linear":
        state["visual.head.proj.weight"] = model.image_proj.weight
    return vision, state


def _native_vision(model, config: ModelConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool]:
    import open_clip

    image = config.image
    if _head_kind(config, "image") != "identity":
        raise NotExpressibleError(f"a {_head_kind(config, 'image')!r} image head over open_clip's projected [CLS]: "
                                  "open_clip has one projection (use image_head: identity)")
    base = open_clip.get_model_config(image.name) or {}
    vision = dict(image.kwargs.get("vision_cfg", base.get("vision_cfg", {})))
    vision["image_size"] = image.image_size
    quick_gelu = image.kwargs.get("quick_gelu", base.get("quick_gelu", False))
    return vision, {f"visual.{k}": v for k, v in model.visual.trunk.state_dict().items()}, quick_gelu


def _hf_text(model, config: ModelConfig, tokenizer, out: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    pooling = config.text.pooling
    if pooling not in POOLINGS_TO_HF:
        raise NotExpressibleError(f"text pooling {pooling!r}: open_clip's Hugging Face poolers are "
                                  f"{sorted(POOLINGS_TO_HF)} (no layer averaging as in MGLL's 'flair')")
    head = _head_kind(config, "text")
    if head not in (*HEADS_TO_HF, "identity"):
        raise NotExpressibleError(f"text head {head!r}: open_clip's Hugging Face projections are linear and "
                                  "Linear-GELU-Linear ('gelu-mlp'), not MGCA's BatchNorm MLP")
    where = str(out.resolve())  # open_clip reads the text tower's config from hf_model_name
    text = {"hf_model_name": where, "hf_tokenizer_name": where, "hf_proj_type": HEADS_TO_HF.get(head),
            "hf_pooler_type": POOLINGS_TO_HF[pooling], "context_length": tokenizer.max_length}
    state = {f"text.{k}": v for k, v in model.text.state_dict().items()}
    state.update({f"text.proj.{k}": v for k, v in model.text_proj.state_dict().items()})
    return text, state


def _native_text(model, config: ModelConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool]:
    if _head_kind(config, "text") != "identity":
        raise NotExpressibleError(f"a {_head_kind(config, 'text')!r} text head over open_clip's projected text "
                                  "transformer: open_clip has one projection (use text_head: identity)")
    saved = model.text.config
    return dict(saved.text_cfg), dict(model.text.transformer.state_dict()), saved.quick_gelu


def open_clip_model_cfg(pretrained, out: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """open_clip's model_cfg for a medgrain model and its weights under open_clip's names; a part open_clip
    cannot express raises NotExpressibleError naming it."""
    model, config = pretrained.model, pretrained.config
    if config.preprocess.in_chans != 3:
        raise NotExpressibleError(f"in_chans={config.preprocess.in_chans}: open_clip's towers take RGB images")
    gelu = {}
    if config.image.source == "timm":
        vision, state = _timm_vision(model, config)
    else:
        vision, state, gelu["image"] = _native_vision(model, config)
    if config.text.source == "open_clip":
        text, text_state, gelu["text"] = _native_text(model, config)
    else:
        text, text_state = _hf_text(model, config, pretrained.tokenizer, out)
    if len(set(gelu.values())) > 1:
        raise NotExpressibleError(f"quick_gelu differs between the towers ({gelu}); open_clip has one flag")
    model_cfg = {"embed_dim": config.embed_dim, "vision_cfg": vision, "text_cfg": text}
    if any(gelu.values()):
        model_cfg["quick_gelu"] = True
    state = {**state, **text_state, "logit_scale": model.logit_scale.detach().reshape(())}
    return model_cfg, {k: v.detach().contiguous() for k, v in state.items()}


def _empty_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder; choose a new one")


@EXPORT_FORMATS.register("open_clip", help="an open_clip local-dir: open_clip.create_model_and_transforms('local-dir:DIR')")
def export_open_clip(pretrained, checkpoint: Path | None, out: Path) -> Path:
    """Write ``open_clip_config.json``, ``open_clip_model.safetensors`` and (Hugging Face text towers) the text
    tower's ``config.json`` and tokenizer files. MGCA's token heads have no open_clip counterpart: not written."""
    from safetensors.torch import save_file

    _empty_out(out)
    model_cfg, state = open_clip_model_cfg(pretrained, out)
    p = pretrained.config.preprocess
    preprocess = {"size": pretrained.config.image.image_size, "mean": list(p.mean), "std": list(p.std),
                  # medgrain's eval transform: shorter side resized (bilinear), centre crop
                  "interpolation": "bilinear", "resize_mode": "shortest"}
    out.mkdir(parents=True, exist_ok=True)
    if "hf_model_name" in model_cfg["text_cfg"]:
        pretrained.model.text.config.save_pretrained(out)
        pretrained.tokenizer.hf.save_pretrained(out)
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2))
    return out
