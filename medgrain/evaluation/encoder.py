"""The encoder under test: a checkpoint directory, or a baseline (``random``, ``imagenet``) built from a
preset, with a key that identifies its weights for the feature cache."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

BASELINES = ("random", "imagenet")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Encoder:
    """The dual encoder under test and how it was obtained.

    ``checkpoint`` is what the user named (a directory, ``random`` or ``imagenet``); ``key``
    identifies its weights for the feature cache (a content hash for a checkpoint)."""

    model: Any  # medgrain.models.DualEncoder
    tokenizer: Any  # medgrain.data.text.Tokenizer
    preprocess: Any  # medgrain.data.transforms.PreprocessConfig
    config: Any  # medgrain.models.ModelConfig
    checkpoint: str
    key: str

    @property
    def transform(self):
        from medgrain.data.transforms import eval_transform

        return eval_transform(self.preprocess)

    @property
    def is_cnn(self) -> bool:
        from medgrain.models import TimmCNNTower

        return isinstance(self.model.visual, TimmCNNTower)


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_encoder(checkpoint: str | Path, model: str = "tiny", seed: int = 0, device: str | torch.device | None = None,
                 imagenet_weights: str | None = None) -> Encoder:
    """The encoder to evaluate.

    - a checkpoint directory (``save_pretrained``/the trainer's output), an open_clip model
      (``open_clip:local-dir:DIR``, ``open_clip:hf-hub:ORG/NAME``) or an ``hf`` export: ``load_pretrained``;
    - ``random``: preset ``model`` with its random initialisation (seeded by ``seed``);
    - ``imagenet``: preset ``model`` with its image tower's ImageNet weights, from timm's default tag
      (needs the weights in the local hub cache) or from ``imagenet_weights``, a local weights file.
    """
    from medgrain.models import PretrainedUnavailableError, load_pretrained
    from medgrain.models.factory import CONFIG_NAME, create_model_and_tokenizer, foreign_source, source_files

    device = torch.device(device) if device is not None else default_device()
    checkpoint = str(checkpoint)
    if checkpoint not in BASELINES:
        directory = Path(checkpoint)
        foreign = foreign_source(checkpoint)
        if foreign is None and not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"checkpoint {directory} is not a medgrain model directory (no {CONFIG_NAME}); "
                f"pass a directory written by save_pretrained or the trainer, an open_clip model "
                f"(open_clip:local-dir:DIR), a folder written by `medgrain export --format hf`, or one of {BASELINES}"
            )
        torch.manual_seed(seed)  # an open_clip built-in name without a tag is its random initialisation
        loaded = load_pretrained(foreign or directory, device=device)
        # an open_clip built-in name has no files: its random weights are the seed's
        files = source_files(checkpoint) or [f"{checkpoint} seed {seed}"]
        key = hashlib.sha256("".join(file_sha256(f) if isinstance(f, Path) else f for f in files)
                             .encode()).hexdigest()
        return Encoder(loaded.model, loaded.tokenizer, loaded.config.preprocess_config(), loaded.config,
                       checkpoint, key)

    overrides: dict[str, Any] = {}
    if checkpoint == "imagenet":
        overrides = {"image": {"pretrained": imagenet_weights or "default"}}
    torch.manual_seed(seed)
    try:
        encoder, tokenizer = create_model_and_tokenizer(model, **overrides)
    except (PretrainedUnavailableError, RuntimeError, FileNotFoundError) as e:
        if checkpoint != "imagenet":
            raise
        raise RuntimeError(
            f"the imagenet baseline of preset {model!r} needs ImageNet weights for its image tower, which could "
            f"not be loaded: {e}. Pass a local weights file with --imagenet-weights FILE."
        ) from e
    config = encoder.config
    key = hashlib.sha256(json.dumps({"baseline": checkpoint, "seed": seed, "weights": imagenet_weights,
                                     "config": config.model_dump(mode="json"), "torch": torch.__version__},
                                    sort_keys=True).encode()).hexdigest()
    return Encoder(encoder.to(device).eval(), tokenizer, config.preprocess_config(), config, checkpoint, key)
