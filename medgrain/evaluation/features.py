"""Frozen image features of a split, extracted once and cached on disk.

The cache key covers everything the features depend on: the weights (a content hash of the
checkpoint, or the baseline's description), the manifest (path and content hash), the split, the
preprocessing and the kind of feature. Files are safetensors (nothing pickled); a changed
checkpoint or manifest gets a new key, so a stale file is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from medgrain.data.manifest import Manifest
from medgrain.evaluation.data import image_dataset, image_loader
from medgrain.evaluation.encoder import Encoder, file_sha256
from medgrain.evaluation.progress import progress
from medgrain.io import atomic_write

logger = logging.getLogger(__name__)

# "backbone": the image tower's pooled output, what MGCA (arXiv:2210.06044) and MGLL
# (arXiv:2511.15943) probe;
# "embedding": the projected, L2-normalised joint-space embedding, what zero-shot and retrieval use.
FeatureKind = Literal["backbone", "embedding"]


@dataclass
class Features:
    ids: list[str]
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N, F) float32 multi-hot in manifest.finding_names order


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEDGRAIN_CACHE", Path.home() / ".cache" / "medgrain")) / "features"


def cache_key(encoder: Encoder, manifest: Manifest, split: str, kind: str) -> str:
    description = {
        "weights": encoder.key,
        "manifest": str(manifest.path.resolve()),
        "manifest_sha256": file_sha256(manifest.path),
        "split": split,
        "preprocess": encoder.preprocess.to_dict(),
        "kind": kind,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def compute_features(encoder: Encoder, dataset, kind: FeatureKind, batch_size: int = 64, workers: int = 0,
                     description: str = "features") -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Run the frozen image tower (eval mode) over ``dataset``: ids, features (N, D), labels (N, F)."""
    model = encoder.model.eval()
    device = next(model.parameters()).device
    ids, features, labels = [], [], []
    loader = image_loader(dataset, batch_size, workers=workers)
    for batch in progress(loader, description, total=len(loader)):
        images = batch["images"].to(device, non_blocking=True)
        out = model.encode_image(images) if kind == "embedding" else model.visual(images).pooled
        ids += batch["ids"]
        features.append(out.float().cpu())
        labels.append(batch["labels"])
    return ids, torch.cat(features), torch.cat(labels)


def extract_features(encoder: Encoder, manifest: Manifest, split: str, kind: FeatureKind = "backbone",
                     batch_size: int = 64, workers: int = 0, cache_dir: str | Path | None = None) -> Features:
    """Features of every image of ``split``: read from the cache, or computed and written there."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"{cache_key(encoder, manifest, split, kind)}.safetensors"
    dataset = image_dataset(manifest, split, encoder.transform)
    labels = dataset.labels.numpy()
    cached = _read_cache(path)
    if cached is not None and cached[0] == [r.id for r in dataset.records]:
        return Features(cached[0], cached[1], labels)
    ids, features, _ = compute_features(encoder, dataset, kind, batch_size, workers, f"{kind} features: {split}")
    meta = {"ids": json.dumps(ids), "split": split, "kind": kind}
    atomic_write(path, lambda tmp: save_file({"features": features.numpy()}, str(tmp), metadata=meta))
    return Features(ids, features.numpy(), labels)


def _read_cache(path: Path) -> tuple[list[str], np.ndarray] | None:
    """``(ids, features)`` of a cache file, or None when there is none or it cannot be read (a write
    that was cut short, an edited file): the cache is only a cache, so it is then computed again."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np") as f:
            ids = json.loads(f.metadata()["ids"])
        return ids, load_file(str(path))["features"]
    except (SafetensorError, OSError, KeyError, TypeError, ValueError):
        logger.warning("feature cache %s is unreadable; computing the features again", path)
        return None


@torch.no_grad()
def encode_texts(encoder: Encoder, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings (N, E) of ``texts``, on the CPU; each distinct text is encoded once."""
    unique = list(dict.fromkeys(texts))
    model = encoder.model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(unique), batch_size):
        tokens = encoder.tokenizer(unique[start:start + batch_size])
        chunks.append(model.encode_text({k: v.to(device) for k, v in tokens.items()}).float().cpu())
    embeddings = torch.cat(chunks)
    row = {text: i for i, text in enumerate(unique)}
    return embeddings[torch.tensor([row[t] for t in texts])]
