"""Image towers (timm, open_clip), text towers (transformers), heads, the dual encoder, and presets."""

from medgrain.models.dual import DualEncoder
from medgrain.models.factory import (
    ImageTowerConfig,
    ModelConfig,
    PreprocessSpec,
    Pretrained,
    TextTowerConfig,
    create_model,
    create_model_and_transforms,
    get_model_config,
    get_tokenizer,
    list_models,
    load_pretrained,
    register_model,
    resolve_config,
    save_pretrained,
)
from medgrain.models.heads import MLPHead, TokenHead, create_head
from medgrain.models.hub import PretrainedUnavailableError
from medgrain.models.image import (
    ImageOutput,
    ImageTower,
    OpenCLIPVisionTower,
    TimmCNNTower,
    TimmViTTower,
    create_image_tower,
)
from medgrain.models.text import TextOutput, TextTower, create_text_tower, create_tokenizer, merge_wordpieces

__all__ = [
    "DualEncoder",
    "ImageOutput",
    "ImageTower",
    "ImageTowerConfig",
    "MLPHead",
    "ModelConfig",
    "OpenCLIPVisionTower",
    "PreprocessSpec",
    "Pretrained",
    "PretrainedUnavailableError",
    "TextOutput",
    "TextTower",
    "TextTowerConfig",
    "TimmCNNTower",
    "TimmViTTower",
    "TokenHead",
    "create_head",
    "create_image_tower",
    "create_model",
    "create_model_and_transforms",
    "create_text_tower",
    "create_tokenizer",
    "get_model_config",
    "get_tokenizer",
    "list_models",
    "load_pretrained",
    "merge_wordpieces",
    "register_model",
    "resolve_config",
    "save_pretrained",
]
