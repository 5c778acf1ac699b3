"""medgrain: medical vision-language pretraining at several text granularities."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Loaded on first use: `import medgrain` stays cheap (no torch, timm or transformers import).
_LAZY = {
    "create_model": "medgrain.models",
    "create_model_and_transforms": "medgrain.models",
    "get_tokenizer": "medgrain.models",
    "list_models": "medgrain.models",
    "load_pretrained": "medgrain.models",
    "save_pretrained": "medgrain.models",
}

__all__ = [
    "__version__",
    "create_model",
    "create_model_and_transforms",
    "get_tokenizer",
    "list_models",
    "load_pretrained",
    "save_pretrained",
]

if TYPE_CHECKING:
    from medgrain.models import (
        create_model,
        create_model_and_transforms,
        get_tokenizer,
        list_models,
        load_pretrained,
        save_pretrained,
    )


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medgrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
