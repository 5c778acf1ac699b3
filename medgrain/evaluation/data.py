"""The data side of an evaluation: the manifest, its splits and findings, and loaders of its images."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from medgrain.data.manifest import SPLITS, Manifest, ManifestError, read_manifest

log = logging.getLogger(__name__)


def open_manifest(data: str | Path | Manifest, on_error: str = "raise") -> Manifest:
    return data if isinstance(data, Manifest) else read_manifest(data, on_error=on_error)


def without_unreadable_images(manifest: Manifest):
    """``(manifest, skips)`` for ``on_error="skip"``: every image (and mask) is read once, up front, and
    the records whose image or one of its masks is missing or cannot be decoded, or with a box that reaches
    outside its image, are left out (counted
    per reason in the ``SkipReport``, with the lines the manifest rejected), so that every task sees the
    same records and features, labels and scores stay aligned."""
    from medgrain.data.imageio import ImageReadError
    from medgrain.data.skips import manifest_skips

    skips = manifest_skips(manifest)
    kept = []
    for record in manifest.records:
        if record.image is not None:
            try:
                if not manifest.has_file(record.image):
                    raise ImageReadError(manifest.resolve(record.image), "file not found", "image file not found")
                size = tuple(manifest.read_image(record.image).shape[-2:])
                for k, finding in enumerate(record.findings):  # masks too: segmentation reads them with their image
                    if finding.mask:
                        manifest.read_mask(finding.mask, size)
                    if finding.box and (finding.box[2] > size[1] or finding.box[3] > size[0]):  # detection's check
                        raise ManifestError(manifest.path, record.line, f"findings.{k}.box",
                                            f"box {list(finding.box)} reaches outside the {size[1]}x{size[0]} image")
            except (ImageReadError, ManifestError) as e:
                log.warning("left out record '%s': %s", record.id, e)
                skips.add(e.kind, f"{manifest.path}:{record.line}")
                continue
        kept.append(record)
    log.log(logging.WARNING if skips.total else logging.INFO, skips.format())
    return Manifest(path=manifest.path, records=kept, skipped=manifest.skipped), skips


def split_sizes(manifest: Manifest) -> dict[str, int]:
    """Records with an image per split: what an image task can use."""
    return {s: sum(r.image is not None for r in manifest.split(s)) for s in SPLITS}


def require_split(manifest: Manifest, split: str, what: str) -> None:
    if not any(r.image is not None for r in manifest.split(split)):
        raise ValueError(f"{manifest.path}: split '{split}' has no images; {what} needs it")


def require_findings(manifest: Manifest, what: str) -> list[str]:
    """The manifest's finding names; a clear error when no record has a label."""
    names = manifest.finding_names
    if not names:
        raise ValueError(f"{manifest.path}: no record has a label; {what} needs findings")
    return names


def is_multiclass(labels) -> bool:
    """Multi-class data: every record has exactly one label (no record is "normal" with none)."""
    return len(labels) > 0 and bool((labels.sum(1) == 1).all())


def image_dataset(manifest: Manifest, split: str, transform, masks: bool = False, boxes: bool = False):
    """Images and labels (and masks or boxes) of a split; records without an image are left out."""
    from medgrain.data.dataset import ImageTextDataset

    return ImageTextDataset(manifest, split, transform, granularities=[], with_report=False,
                            return_masks=masks, return_boxes=boxes)


def subset(dataset, ids: list[str]) -> Subset:
    """The records of ``dataset`` whose id is in ``ids`` (a label fraction)."""
    wanted = set(ids)
    return Subset(dataset, [i for i, r in enumerate(dataset.records) if r.id in wanted])


def image_loader(dataset, batch_size: int, shuffle: bool = False, workers: int = 0, seed: int = 0,
                 drop_last: bool = False) -> DataLoader:
    from medgrain.data.dataset import Collator

    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      collate_fn=Collator(None, [], with_report=False), drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False,
                      pin_memory=torch.cuda.is_available())
