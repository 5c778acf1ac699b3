"""Data: the manifest, image reading, transforms, text tokenization, the dataset and its collate."""

from .dataset import Collator, ImageTextDataset, build_dataloader
from .imageio import ImageReadError, read_image, read_mask
from .info import format_summary, summarize
from .manifest import (
    Finding,
    Manifest,
    ManifestError,
    Record,
    Skipped,
    json_schema,
    read_manifest,
    write_manifest,
)
from .text import Tokenizer, text_id, text_ids
from .transforms import (
    PreprocessConfig,
    eval_transform,
    pretrain_transform,
    segmentation_train_transform,
)

__all__ = [
    "Collator",
    "Finding",
    "ImageReadError",
    "ImageTextDataset",
    "Manifest",
    "ManifestError",
    "PreprocessConfig",
    "Record",
    "Skipped",
    "Tokenizer",
    "build_dataloader",
    "eval_transform",
    "format_summary",
    "json_schema",
    "pretrain_transform",
    "read_image",
    "read_manifest",
    "read_mask",
    "segmentation_train_transform",
    "summarize",
    "text_id",
    "text_ids",
    "write_manifest",
]
