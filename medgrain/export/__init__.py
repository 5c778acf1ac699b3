"""Formats a trained medgrain model is handed to other libraries in, and importing theirs.

One module per format, registered in EXPORT_FORMATS next to its code (timm-style); ``export(checkpoint,
format, out)`` and the ``medgrain export`` command take their names from it. An exporter is a function
``(pretrained: medgrain.models.Pretrained, checkpoint: Path | None, out: Path) -> Path``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from medgrain.registry import Registry

EXPORT_FORMATS: Registry = Registry("export format")

# Modules that register a format; imported on first use so `import medgrain.export` stays light.
_FORMAT_MODULES = ("medgrain.export.openclip", "medgrain.export.hf", "medgrain.export.llava")


def _load_formats() -> Registry:
    for module in _FORMAT_MODULES:
        importlib.import_module(module)
    return EXPORT_FORMATS


def format_names() -> list[str]:
    return _load_formats().names()


def export(checkpoint: str | Path, format: str, out: str | Path) -> Path:
    """Write the model of ``checkpoint`` (anything ``medgrain.load_pretrained`` takes) to ``out`` in ``format``."""
    from medgrain.models import load_pretrained

    exporter = _load_formats().get(format)
    pretrained = load_pretrained(checkpoint)
    source = Path(checkpoint) if Path(str(checkpoint)).is_dir() else None
    return exporter(pretrained, source, Path(out))
