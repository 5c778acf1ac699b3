"""Named model configs, model creation, and the checkpoint directory.

``create_model("tiny")`` builds a DualEncoder (``get_tokenizer``, ``create_model_and_transforms``) from a preset
(open_clip's factory, in medgrain's words). ``save_pretrained`` / ``load_pretrained`` write and read
a directory that rebuilds the same model with nothing else: no network, no original text-tower
folder, nothing unpickled.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from medgrain.data.text import Tokenizer
from medgrain.data.transforms import CLIP_MEAN, CLIP_STD, PreprocessConfig
from medgrain.errors import CheckpointError, loading
from medgrain.io import replace_directory
from medgrain.models.dual import DualEncoder
from medgrain.models.image import create_image_tower
from medgrain.models.text import create_text_tower, create_tokenizer, text_tower_from_config
from medgrain.registry import Registry

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageTowerConfig(_Strict):
    source: Literal["timm", "open_clip"] = "timm"
    name: str
    # None: random; a local weights file; or a hub tag ("default": timm's default tag; "openai" for open_clip).
    pretrained: str | None = None
    image_size: int = Field(224, ge=8)
    kwargs: dict[str, Any] = {}  # passed to timm.create_model / open_clip.create_model (depth, embed_dim, ...)


class TextTowerConfig(_Strict):
    # "open_clip": open_clip's own causal text transformer (CLIP's); ``config`` then holds its text_cfg,
    # embed_dim and quick_gelu (medgrain.models.openclip_text.OpenCLIPTextConfig) and the tokenizer is CLIP's.
    source: Literal["transformers", "open_clip"] = "transformers"
    name_or_path: str = "minilm"  # local folder, hub name, "minilm" (bundled) or "tiny-bert" (random, tests)
    pretrained: bool = True  # False: random weights of the same architecture
    num_hidden_layers: int | None = Field(None, ge=1)  # keep only the first layers (MGCA: 6 of 12)
    pooling: Literal["cls", "mean", "flair", "flair-masked"] = "cls"  # see medgrain.models.text.TextTower
    max_length: int = Field(77, ge=2)  # tokenizer truncation
    config: dict[str, Any] = {}  # overrides of the transformers config


class PreprocessSpec(_Strict):
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    in_chans: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> PreprocessSpec:
        if not len(self.mean) == len(self.std) == self.in_chans:
            raise ValueError(
                f"mean ({len(self.mean)} values) and std ({len(self.std)}) need one value per channel "
                f"(in_chans={self.in_chans})"
            )
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        return self


class ModelConfig(_Strict):
    image: ImageTowerConfig
    text: TextTowerConfig = TextTowerConfig()
    embed_dim: int = Field(512, ge=1)
    head: Literal["linear", "mlp", "gelu-mlp", "identity"] = "linear"
    # The global image and text heads, when they differ from ``head`` ("identity" over open_clip's own
    # projection, "gelu-mlp" for open_clip's Hugging Face text projection); token heads always use ``head``.
    image_head: Literal["linear", "mlp", "gelu-mlp", "identity"] | None = None
    text_head: Literal["linear", "mlp", "gelu-mlp", "identity"] | None = None
    head_hidden: int = Field(2048, ge=1)  # hidden width of the "mlp" heads
    token_heads: bool = False  # token-level heads for MGCA's local alignment
    init_logit_scale: float = math.log(1 / 0.07)  # log of the initial multiplier, as in open_clip
    preprocess: PreprocessSpec = PreprocessSpec()

    def preprocess_config(self) -> PreprocessConfig:
        p = self.preprocess
        return PreprocessConfig(image_size=self.image.image_size, mean=p.mean, std=p.std, in_chans=p.in_chans)


class Pretrained(NamedTuple):
    model: DualEncoder
    tokenizer: Tokenizer
    transform: Any  # eval_transform(preprocess)
    config: ModelConfig


# ---------------------------------------------------------------------------------------------------
# Presets

# Named model configs, timm-style: ``register_model`` adds one next to its definition below,
# ``list_models`` lists them (the command line's ``--model`` choices come from here) and
# ``get_model_config`` is the one place a name is resolved.
MODEL_PRESETS: Registry[dict[str, Any]] = Registry("model preset")

TINY_VIT = {"source": "timm", "name": "vit_tiny_patch16_224", "image_size": 64,
            "kwargs": {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}}
TINY_BERT = {"name_or_path": "tiny-bert", "pretrained": False, "max_length": 64, "pooling": "mean"}
BIO_CLINICAL_BERT = "emilyalsentzer/Bio_ClinicalBERT"
HALF_STATS = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # MGCA's normalisation
MGCA_TEXT = {"name_or_path": BIO_CLINICAL_BERT, "num_hidden_layers": 6, "max_length": 112}
MGCA_HEADS = {"embed_dim": 128, "head": "mlp", "head_hidden": 2048, "token_heads": True}


def _validate(config: ModelConfig | dict[str, Any]) -> ModelConfig:
    return config if isinstance(config, ModelConfig) else ModelConfig.model_validate(config)


def register_model(name: str, config: ModelConfig | dict[str, Any], *, help: str = "") -> None:
    """Add (or replace) a named config; it is validated now, so a bad preset fails where it is defined."""
    MODEL_PRESETS.add(name, _validate(config).model_dump(), help=help, replace=True)


def list_models(filter: str | None = None) -> list[str]:
    """Preset names, sorted; ``filter`` is a shell-style pattern (``list_models("mgca*")``), as in timm."""
    return sorted(MODEL_PRESETS.names(filter))


def get_model_config(name: str) -> ModelConfig:
    """The preset ``name`` as a fresh ModelConfig; an unknown name is a ValueError listing the presets."""
    return ModelConfig.model_validate(copy.deepcopy(MODEL_PRESETS.get(name)))


# Tiny CPU presets. A ResNet-18 at 64 px and a random 2-layer BERT, mean-pooled: from random weights,
# [CLS] pooling of a 2-layer BERT and a 2-layer ViT barely depend on their input, and contrastive training
# on the synthetic data collapsed to uniform logits (loss ln N) in our runs; a CNN and mean pooling learn.
TINY_CNN = {"source": "timm", "name": "resnet18", "image_size": 64}
register_model("tiny", {"image": TINY_CNN, "text": TINY_BERT, "embed_dim": 64, "token_heads": True},
               help="ResNet-18 at 64 px and a random 2-layer BERT, for CPU tests and the demo")
register_model("tiny-mgca", {"image": TINY_CNN, "text": TINY_BERT, **MGCA_HEADS, "head_hidden": 128},
               help="tiny with MGCA's MLP and token heads")
# A 2-layer ViT for the ViT code paths ([CLS] attention, patch tokens) in tests; it does not learn well
# from scratch on small data.
register_model("tiny-vit", {"image": TINY_VIT, "text": TINY_BERT, "embed_dim": 64, "token_heads": True},
               help="a 2-layer ViT and a random 2-layer BERT, for the ViT code paths in tests")
register_model("minilm-vit-small", {
    "image": {"source": "timm", "name": "vit_small_patch16_224", "image_size": 224},
    "text": {"name_or_path": "minilm", "max_length": 128},
    "embed_dim": 256, "token_heads": True,  # token heads too, so one preset serves CLIP, MGLL and MGCA
}, help="ViT-S/16 and the bundled MiniLM, with token heads: one preset for every objective")
# Real pretrained towers that work offline, at a CPU budget where the methods learn and MGCA's token
# alignment has an 8x8 grid to align (EfficientNet-Lite0's stride-16 stage at 128 px): ImageNet
# EfficientNet-Lite0 (medgrain.models.bundled) and MiniLM-L6. Issue 16's ablations run on these.
EFFNET_LITE0 = {"source": "timm", "name": "tf_efficientnet_lite0", "pretrained": "bundled:efficientnet-lite0",
                "image_size": 128}
MINILM = {"name_or_path": "minilm", "max_length": 128}
register_model("effnet-minilm", {"image": EFFNET_LITE0, "text": MINILM, "embed_dim": 128, "token_heads": True},
               help="ImageNet EfficientNet-Lite0 at 128 px and MiniLM-L6, pretrained and offline, with token heads")
register_model("effnet-minilm-mgca", {"image": EFFNET_LITE0, "text": MINILM, **MGCA_HEADS, "head_hidden": 512},
               help="effnet-minilm with MGCA's MLP and token heads")
# MGLL: OpenAI CLIP ViT-L/14 (with the QuickGELU it was trained with) and Bio_ClinicalBERT, 768-d.
# The image embedding is CLIP's own projection (no head on top, as in MGLL's code); the text gets a
# bias-free linear head (FLAIR's projection). MGLL's BERT wrapper (FLAIR's) averages layers 1, 2 and the last, then all
# positions including padding; here over real tokens ("flair-masked"; medgrain/configs/mgll-original-code.yaml
# keeps the padding, "flair").
register_model("mgll-paper", {
    "image": {"source": "open_clip", "name": "ViT-L-14-quickgelu", "pretrained": "openai", "image_size": 224},
    "text": {"name_or_path": BIO_CLINICAL_BERT, "pooling": "flair-masked", "max_length": 77},
    "embed_dim": 768, "head": "linear", "image_head": "identity",
}, help="MGLL's paper: OpenAI CLIP ViT-L/14 and Bio_ClinicalBERT, 768-d")
# MGCA: DeiT-B/16 from ImageNet-1k, the first 6 layers of Bio_ClinicalBERT, MLP heads 2048 -> 128.
register_model("mgca-vit-paper", {
    "image": {"source": "timm", "name": "deit_base_patch16_224", "pretrained": "fb_in1k", "image_size": 224},
    "text": MGCA_TEXT, **MGCA_HEADS, "preprocess": HALF_STATS,
}, help="MGCA's paper: DeiT-B/16 (ImageNet-1k) and 6 layers of Bio_ClinicalBERT, 128-d")
# MGCA's ResNet-50 (torchvision's IMAGENET1K_V2 weights are timm's tv2_in1k). The paper upsamples
# 224 -> 299 inside the encoder for a 19x19 layer3 grid; here images are prepared at 299 directly.
register_model("mgca-resnet50-paper", {
    "image": {"source": "timm", "name": "resnet50", "pretrained": "tv2_in1k", "image_size": 299},
    "text": MGCA_TEXT, **MGCA_HEADS, "preprocess": HALF_STATS,
}, help="MGCA's paper: ResNet-50 (torchvision ImageNet weights) at 299 px and 6 layers of Bio_ClinicalBERT")


# ---------------------------------------------------------------------------------------------------
# Creation


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in ("kwargs", "config"):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_config(name_or_config: str | ModelConfig | dict[str, Any], **overrides) -> ModelConfig:
    """A preset name, a ModelConfig or a dict, with ``overrides`` merged in (nested dicts merge key by key,
    except the free-form ``kwargs`` and ``config`` which are replaced)."""
    if isinstance(name_or_config, str):
        base = get_model_config(name_or_config).model_dump()
    elif isinstance(name_or_config, ModelConfig):
        base = name_or_config.model_dump()
    else:
        base = dict(name_or_config)
    return ModelConfig.model_validate(_deep_merge(base, overrides))


def _build(config: ModelConfig, text_config: dict[str, Any] | None = None) -> DualEncoder:
    """The model of ``config``: with pretrained tower weights, or (``text_config`` given, for loading a
    checkpoint) random towers of the saved architecture, to be filled by the checkpoint's weights."""
    image = config.image
    visual = create_image_tower(
        image.source,
        image.name,
        pretrained=None if text_config is not None else image.pretrained,
        image_size=image.image_size,
        in_chans=config.preprocess.in_chans,
        **copy.deepcopy(image.kwargs),
    )
    t = config.text
    if t.source == "open_clip":
        from medgrain.models.openclip_text import openclip_text_tower_from_config

        text = openclip_text_tower_from_config(text_config or t.config)
    elif text_config is None:
        text = create_text_tower(t.name_or_path, t.pretrained, t.num_hidden_layers, t.pooling, t.config)
    else:
        text = text_tower_from_config(text_config, t.pooling)
    return DualEncoder(
        visual,
        text,
        embed_dim=config.embed_dim,
        head=config.head,
        image_head=config.image_head,
        text_head=config.text_head,
        head_hidden=config.head_hidden,
        token_heads=config.token_heads,
        init_logit_scale=config.init_logit_scale,
        config=config,
    )


def create_model(name_or_config: str | ModelConfig | dict[str, Any], **overrides) -> DualEncoder:
    """Build the DualEncoder of a preset (``list_models()``), a ModelConfig or a dict, as timm and
    open_clip's ``create_model`` do; its tokenizer is ``get_tokenizer`` and its preprocessing
    ``model.config.preprocess_config()`` (or ``create_model_and_transforms``).

    ``overrides`` are ModelConfig fields, e.g. ``create_model("tiny", embed_dim=32, text={"max_length": 32})``.
    Pretrained weights come from local paths in the config; a hub name that cannot be fetched raises
    PretrainedUnavailableError saying what to pass instead.
    """
    if _is_source_ref(name_or_config):
        return _create_from_source(name_or_config, overrides)[0]
    return _build(resolve_config(name_or_config, **overrides))


def get_tokenizer(name_or_config: str | ModelConfig | dict[str, Any], **overrides) -> Tokenizer:
    """The tokenizer of a preset, a ModelConfig or a dict (open_clip's ``get_tokenizer``): the text
    tower's vocabulary, truncating at the config's ``text.max_length``. For ``"<source>:<ref>"`` it is
    the source's own tokenizer (which reads the source checkpoint)."""
    if _is_source_ref(name_or_config):
        return import_model(name_or_config).tokenizer
    return _tokenizer_of(resolve_config(name_or_config, **overrides))


def create_model_and_tokenizer(name_or_config: str | ModelConfig | dict[str, Any],
                               **overrides) -> tuple[DualEncoder, Tokenizer]:
    """``(create_model(...), get_tokenizer(...))`` from one build, for callers that need both (the
    trainer, evaluation): a ``"<source>:<ref>"`` checkpoint is then read once."""
    if _is_source_ref(name_or_config):
        return _create_from_source(name_or_config, overrides)
    config = resolve_config(name_or_config, **overrides)
    return _build(config), _tokenizer_of(config)


def _is_source_ref(name_or_config: Any) -> bool:
    return isinstance(name_or_config, str) and name_or_config.split(":", 1)[0] in MODEL_SOURCES


def _tokenizer_of(config: ModelConfig) -> Tokenizer:
    if config.text.source == "open_clip":
        from medgrain.models.openclip_text import clip_bpe_tokenizer

        return clip_bpe_tokenizer(config.text.max_length)
    return create_tokenizer(config.text.name_or_path, config.text.max_length)


# A preset name "<source>:<ref>" builds the model from another library's checkpoint: the source's
# function (imported when first used, so the factory does not import it) returns an Imported.
MODEL_SOURCES = {"open_clip": "medgrain.export.openclip:import_open_clip", "hf": "medgrain.export.hf:import_hf"}


class ModelNames:
    """What ``create_model`` takes by name: a preset, or ``"<source>:<ref>"`` for a source of MODEL_SOURCES.
    The config's ``model.preset`` and the command line's ``--model`` check names against it."""

    def names(self) -> list[str]:
        return [*MODEL_PRESETS.names(), *(f"{source}:<ref>" for source in MODEL_SOURCES)]

    def __contains__(self, name: object) -> bool:
        return name in MODEL_PRESETS or (isinstance(name, str) and name.partition(":")[0] in MODEL_SOURCES)

    def __len__(self) -> int:
        return len(self.names())

    def check(self, name: str) -> str:
        if name not in self:
            raise ValueError(f"unknown model preset {name!r}; known: {', '.join(self.names())}")
        return name


MODEL_NAMES = ModelNames()


class Imported(NamedTuple):
    """Another library's model in medgrain's terms: the config, the text tower's saved config, the
    weights under medgrain's names (token heads excepted: they are new), the tokenizer."""

    config: ModelConfig
    text_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    tokenizer: Tokenizer


def import_model(ref: str) -> Imported:
    """The Imported of ``"<source>:<ref>"`` (a key of MODEL_SOURCES)."""
    import importlib

    source, _, rest = ref.partition(":")
    module, _, function = MODEL_SOURCES[source].partition(":")
    return getattr(importlib.import_module(module), function)(rest)


def _create_from_source(ref: str, overrides: dict[str, Any]) -> tuple[DualEncoder, Tokenizer]:
    imported = import_model(ref)
    config = resolve_config(imported.config, **overrides)
    model = _build(config, text_config=imported.text_config)
    changed = f"{ref}: the overrides {overrides} change the architecture the weights were made for"
    try:
        missing, unexpected = model.load_state_dict(imported.state_dict, strict=False)
    except RuntimeError as e:  # shapes
        raise ValueError(f"{changed}: {e}") from e
    fresh = ("image_token_proj.", "text_token_proj.")  # MGCA's token heads do not exist in the source
    missing = [k for k in missing if not k.startswith(fresh)]
    if missing or unexpected:
        raise ValueError(f"{changed} (missing {sorted(missing)}, unexpected {sorted(unexpected)})")
    return model, imported.tokenizer


def create_model_and_transforms(name_or_config: str | ModelConfig | dict[str, Any], **overrides):
    """open_clip's convention: ``(model, preprocess_train, preprocess_val)``, the model with its
    pretraining augmentation and its evaluation transform (``medgrain.data.transforms``)."""
    from medgrain.data.transforms import eval_transform, pretrain_transform

    model = create_model(name_or_config, **overrides)
    preprocess = model.config.preprocess_config()
    return model, pretrain_transform(preprocess), eval_transform(preprocess)


# ---------------------------------------------------------------------------------------------------
# Checkpoint directory


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
        model = model.module
    return getattr(model, "_orig_mod", model)  # torch.compile


def save_pretrained(
    model: DualEncoder, tokenizer: Tokenizer, directory: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``tokenizer/`` into ``directory``.

    The files are written to a temporary folder next to it and then moved in with renames, so a crash
    never leaves a half-written model; other files already in ``directory`` (run.yaml, train_state.pt)
    are kept. ``extra`` (JSON-serialisable) is stored under ``config.json["extra"]``.
    """
    from safetensors.torch import save_model

    model = _unwrap(model)
    if not isinstance(getattr(model, "config", None), ModelConfig):
        raise TypeError("save_pretrained needs a DualEncoder built by create_model/load_pretrained (model.config)")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "medgrain",
        "format_version": FORMAT_VERSION,
        "model": model.config.model_dump(mode="json"),
        "text_config": model.text.config.to_dict(),
        "preprocess": model.config.preprocess_config().to_dict(),
        "extra": extra or {},
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        # save_model drops the duplicates of shared tensors, which save_file refuses.
        save_model(model, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        (staging / CONFIG_NAME).write_text(json.dumps(meta, indent=2, default=str))
        tokenizer.save(staging / TOKENIZER_DIR)
        if not directory.exists():
            staging.rename(directory)
            return directory
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            os.replace(staging / name, directory / name)
        replace_directory(staging / TOKENIZER_DIR, directory / TOKENIZER_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"not a medgrain model directory (no {CONFIG_NAME}): {Path(directory)}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(path, "not a medgrain config (the top level is not an object)")
    if meta.get("format") != "medgrain":
        raise ValueError(f"{path}: not a medgrain config (format={meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta['format_version']} is newer than this medgrain reads")
    return meta


HF_EXPORT_MARKER = "medgrain_hf.json"  # written by `medgrain export --format hf` (medgrain.export.hf)


def foreign_source(ref: str | Path) -> str | None:
    """``ref`` as a "<source>:<ref>" model name when it is another library's model rather than a medgrain
    checkpoint: an open_clip reference, or a folder written by ``medgrain export --format hf``."""
    ref = str(ref)
    if ref.split(":", 1)[0] in MODEL_SOURCES and not Path(ref).exists():
        return ref
    if (Path(ref) / HF_EXPORT_MARKER).is_file():
        return f"hf:{ref}"
    return None


def source_files(ref: str | Path) -> list[Path]:
    """The files a checkpoint reference is made of (for cache keys): a medgrain checkpoint's weights and config,
    every file of an open_clip local-dir or hf export; none for a built-in name (random weights)."""
    foreign = foreign_source(ref)
    if foreign is None:
        return [Path(ref) / WEIGHTS_NAME, Path(ref) / CONFIG_NAME]
    source, _, rest = foreign.partition(":")
    folder = rest[len("local-dir:"):] if rest.startswith("local-dir:") else rest if source == "hf" else None
    return sorted(p for p in Path(folder).rglob("*") if p.is_file()) if folder else []


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> Pretrained:
    """Rebuild ``Pretrained(model, tokenizer, transform, config)`` from a save_pretrained directory alone,
    or from another library's model: ``open_clip:local-dir:DIR`` / ``open_clip:hf-hub:ORG/NAME`` (any
    ``create_model`` source) or a folder written by ``medgrain export --format hf``.

    The model comes back in eval mode on ``device``; ``transform`` is ``eval_transform`` of the saved
    preprocessing. Weights are loaded strictly: a missing or unexpected key is an error that names it.
    """
    from safetensors.torch import load_model

    from medgrain.data.transforms import eval_transform

    foreign = foreign_source(directory)
    if foreign is not None:  # another library's model: built as create_model builds it
        model, tokenizer = create_model_and_tokenizer(foreign)
        config = model.config
        return Pretrained(model.to(device).eval(), tokenizer, eval_transform(config.preprocess_config()), config)
    directory = Path(directory)
    meta = read_config(directory)
    with loading(directory / CONFIG_NAME):
        config = ModelConfig.model_validate(meta["model"])
        text_config, preprocess = meta["text_config"], PreprocessConfig.from_dict(meta["preprocess"])
    model = _build(config, text_config=text_config)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")
    try:
        with loading(weights):
            missing, unexpected = load_model(model, str(weights), strict=False)
    except CheckpointError as e:
        if isinstance(e.__cause__, RuntimeError) and "size mismatch" in str(e.__cause__):
            raise CheckpointError(weights, f"does not match the model described by its {CONFIG_NAME}: {e.__cause__}") from None
        raise
    if missing or unexpected:
        raise RuntimeError(
            f"{weights} does not match the model described by its {CONFIG_NAME}: "
            f"missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}"
        )
    tokenizer = Tokenizer.load(directory / TOKENIZER_DIR)
    return Pretrained(model.to(device).eval(), tokenizer, eval_transform(preprocess), config)
