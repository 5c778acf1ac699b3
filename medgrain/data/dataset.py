"""Image-text dataset over a manifest, the collate that tokenizes a batch, and the data loader.

Records are checked when the dataset is built (that files exist) so that a bad manifest fails before
training starts; a text or report may be absent (the batch carries ``present`` masks for them); files that exist but cannot be decoded are found
only when read, and with ``on_error="skip"`` they become ``LoadFailure`` items that the collate counts per reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from .imageio import ImageReadError
from .manifest import Manifest, ManifestError, OnError, Record, Skipped, read_manifest
from .skips import LoadFailure
from .text import Tokenizer, text_ids

log = logging.getLogger(__name__)


class ImageTextDataset(Dataset):
    """Items are dicts: ``id``, ``image`` (after ``transform``), ``labels`` (float multi-hot over
    ``finding_names``), ``texts`` ({granularity: str, or None where the record has no text at it}),
    ``report`` (str or None); with
    ``return_masks``: ``masks`` (F, H, W) bool in finding order, zeros where a finding has no mask;
    with ``return_boxes``: ``boxes`` (B, 4) float xyxy pixels and ``box_labels`` (B,) long indices
    into ``finding_names``.

    ``split=None`` takes every split. Records without an image are left out (their number is in
    ``text_only_left_out``) unless ``text_only=True``, which never reads images and gives items
    without ``image``. Labels outside ``finding_names`` are ignored, so a subset of findings can be
    evaluated. ``on_error="skip"`` leaves out records that fail the construction checks (listed in
    ``skipped``) and turns a load failure into a ``LoadFailure`` (where, reason) item; ``"raise"`` raises, naming the record.
    """

    def __init__(
        self,
        manifest: Manifest | str | Path,
        split: str | None,
        transform=None,
        granularities: Sequence[str] | None = None,
        with_report: bool = True,
        finding_names: Sequence[str] | None = None,
        return_masks: bool = False,
        return_boxes: bool = False,
        on_error: OnError = "raise",
        text_only: bool = False,
        max_image_pixels: int | None = None,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        if text_only and (return_masks or return_boxes):
            raise ValueError("text_only datasets read no images, so they cannot return masks or boxes")
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, on_error=on_error)
        self.split, self.transform, self.on_error, self.text_only = split, transform, on_error, text_only
        self.return_masks, self.return_boxes = return_masks, return_boxes
        self.max_image_pixels = max_image_pixels
        self.granularities = list(self.manifest.granularities if granularities is None else granularities)
        self.finding_names = list(self.manifest.finding_names if finding_names is None else finding_names)
        if (return_masks or return_boxes) and not self.finding_names:
            raise ValueError(f"{self.manifest.path}: masks and boxes need finding names, and there are none")
        self._finding_index = {name: i for i, name in enumerate(self.finding_names)}

        records = self.manifest.records if split is None else self.manifest.split(split)
        if not text_only:
            self.text_only_left_out = sum(r.image is None for r in records)
            records = [r for r in records if r.image is not None]
        else:
            self.text_only_left_out = 0
        # a record without a report (or without a text at a granularity) is kept: its text is absent
        self.with_report = with_report and any(r.report is not None for r in records)
        self.skipped: list[Skipped] = []
        self.records: list[Record] = [r for r in records if self._usable(r)]
        if self.skipped:
            first = self.skipped[0]
            log.warning("%s: left out %d record(s) of split %r; first, line %s: %s",
                        self.manifest.path, len(self.skipped), split, first.line, first.reason)
        if not self.records:
            raise ValueError(
                f"{self.manifest.path}: no usable records in split {split!r} "
                f"({len(self.skipped)} skipped, {self.text_only_left_out} without an image)"
            )
        self.labels = self._multi_hot()

    def _usable(self, record: Record) -> bool:
        try:
            self._check(record)
            return True
        except ManifestError as e:
            if self.on_error == "raise":
                raise
            self.skipped.append(Skipped(e.line or 0, e.field, e.message, e.kind))
            return False

    def _error(self, record: Record, field: str, message: str, kind: str | None = None) -> ManifestError:
        return ManifestError(self.manifest.path, record.line, field, f"record '{record.id}': {message}", kind)

    def _check(self, record: Record) -> None:
        if self.text_only:
            return
        files = [("image", record.image)]
        if self.return_masks:
            files += [(f"findings.{k}.mask", f.mask) for k, f in enumerate(record.findings) if f.mask]
        for field, relative in files:
            if not self.manifest.has_file(relative):
                raise self._error(record, field, f"file not found: {self.manifest.resolve(relative)}",
                                  "image file not found" if field == "image" else "mask file not found")

    def _multi_hot(self) -> torch.Tensor:
        pairs = [(i, self._finding_index[name]) for i, r in enumerate(self.records) for name in r.labels
                 if name in self._finding_index]
        labels = torch.zeros(len(self.records), len(self.finding_names))
        if pairs:
            labels[tuple(torch.tensor(pairs).T)] = 1.0
        return labels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | LoadFailure:
        record = self.records[index]
        item = {
            "id": record.id,
            "labels": self.labels[index].clone(),  # not a view: a view would carry the whole table along
            "texts": {g: record.texts.get(g) for g in self.granularities},
            "report": record.report if self.with_report else None,
        }
        if self.text_only:
            return item
        try:
            item.update(self._load(record))
        except (ImageReadError, ManifestError) as e:
            if self.on_error == "skip":
                log.warning("skipped record '%s': %s", record.id, e)
                return LoadFailure(f"{self.manifest.path}:{record.line}", e.kind)
            if isinstance(e, ImageReadError):
                raise ImageReadError(e.path, f"{e.reason} (record '{record.id}', {self.manifest.path}:{record.line})",
                                     e.kind) from None
            raise
        return item

    def _load(self, record: Record) -> dict[str, Any]:
        image = self.manifest.read_image(record.image, self.max_image_pixels)
        if not (self.return_masks or self.return_boxes):
            return {"image": self.transform(image) if self.transform else image}
        height, width = image.shape[-2:]
        sample: dict[str, Any] = {"image": tv_tensors.Image(image)}
        if self.return_masks:
            sample["masks"] = tv_tensors.Mask(self._masks(record, (height, width)))
        if self.return_boxes:
            boxes, box_labels = self._boxes(record, (height, width))
            sample["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
            sample["box_labels"] = box_labels
        if self.transform:
            sample = self.transform(sample)
        out = {"image": sample["image"].as_subclass(torch.Tensor)}
        if self.return_masks:
            out["masks"] = sample["masks"].as_subclass(torch.Tensor).bool()
        if self.return_boxes:
            out["boxes"], out["box_labels"] = _visible_boxes(sample["boxes"], sample["box_labels"])
        return out

    def _masks(self, record: Record, size: tuple[int, int]) -> torch.Tensor:
        # uint8, not bool: the resize kernels that move masks with the image do not take bool
        masks = torch.zeros(len(self.finding_names), *size, dtype=torch.uint8)
        for finding in record.findings:
            if finding.mask and finding.name in self._finding_index:
                mask = self.manifest.read_mask(finding.mask, size, self.max_image_pixels)
                masks[self._finding_index[finding.name]] |= mask.to(torch.uint8)
        return masks

    def _boxes(self, record: Record, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = size
        kept = [(k, f) for k, f in enumerate(record.findings) if f.box and f.name in self._finding_index]
        for k, f in kept:
            if f.box[2] > width or f.box[3] > height:
                raise self._error(record, f"findings.{k}.box", f"box {list(f.box)} reaches outside the {width}x{height} image")
        boxes = torch.tensor([f.box for _, f in kept], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self._finding_index[f.name] for _, f in kept], dtype=torch.long)
        return boxes, labels


def _visible_boxes(boxes: tv_tensors.BoundingBoxes, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp boxes to the transformed image and drop those a crop left with no area."""
    height, width = boxes.canvas_size
    xyxy = boxes.as_subclass(torch.Tensor).float().clone()
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    return xyxy[keep], labels[keep]


class Collator:
    """Turns dataset items into the batch of docs/architecture.md. Each granularity (and the report)
    is tokenized with one call on the whole batch; ``LoadFailure`` items (load failures under
    ``on_error="skip"``) are dropped and counted in ``skipped``.

    A text may be absent. ``present[g]`` (and ``report_present``) is a bool (N,) mask; only the present
    texts are tokenized, in batch order, so ``texts[g]`` has ``present[g].sum()`` rows (``None`` when
    no text of the batch is present) and the text tower never runs on an absent text. ``text_ids[g]``
    (and ``report_ids``) are equal for equal texts and -1, no id, for an absent one.

    A batch in which every record failed raises, unless ``allow_empty``: then it is the empty batch
    ``{"ids": [], "skipped": n}`` (see ``num_samples``), which the training loop counts and steps over."""

    def __init__(self, tokenizer: Tokenizer, granularities: Sequence[str], with_report: bool = True,
                 allow_empty: bool = False):
        self.tokenizer = tokenizer
        self.granularities = list(granularities)
        self.with_report = with_report
        self.allow_empty = allow_empty

    def __call__(self, batch: Sequence[dict[str, Any] | LoadFailure | None]) -> dict[str, Any]:
        items = [item for item in batch if isinstance(item, dict)]
        # what failed to load, and why: the training loop counts them per reason
        failures = [(f.where, f.kind) if isinstance(f, LoadFailure) else ("?", "unreadable image")
                    for f in batch if not isinstance(f, dict)]
        if not items:
            if self.allow_empty:
                return {"ids": [], "skipped": len(batch), "failures": failures}
            raise RuntimeError(
                f"every record of this batch ({len(batch)}) failed to load and was skipped; "
                "the log names each file and reason: fix or remove them from the manifest"
            )
        missing = [g for g in self.granularities if g not in items[0]["texts"]]
        if missing:
            raise KeyError(f"granularities {missing} are not in the dataset's texts {list(items[0]['texts'])}")
        out: dict[str, Any] = {"ids": [item["id"] for item in items]}
        if "image" in items[0]:
            out["images"] = _stack_images(items)
        out["labels"] = torch.stack([item["labels"] for item in items])
        out["texts"], out["text_ids"], out["present"] = {}, {}, {}
        for g in self.granularities:
            out["texts"][g], out["text_ids"][g], out["present"][g] = self._tokenize([item["texts"][g] for item in items])
        reports = [item["report"] for item in items]
        if self.with_report and any(r is not None for r in reports):
            out["report"], out["report_ids"], out["report_present"] = self._tokenize(reports)
        if "masks" in items[0]:
            out["masks"] = torch.stack([item["masks"] for item in items])
        if "boxes" in items[0]:
            out["boxes"] = [item["boxes"] for item in items]
            out["box_labels"] = [item["box_labels"] for item in items]
        out["skipped"], out["failures"] = len(batch) - len(items), failures
        return out

    def _tokenize(self, texts: list[str | None]):
        """(tokens of the present texts or None, ids with -1 where absent, present mask)."""
        present = torch.tensor([t is not None for t in texts], dtype=torch.bool)
        kept = [t for t in texts if t is not None]
        ids = torch.full((len(texts),), -1, dtype=torch.long)
        if not kept:
            return None, ids, present
        ids[present] = text_ids(kept)
        return self.tokenizer(kept), ids, present


def num_samples(batch: dict[str, Any]) -> int:
    """The number of samples in a batch from ``Collator`` (0 for the empty batch)."""
    return len(batch["ids"])


def take_rows(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` samples of a batch from ``Collator``: every entry is per sample (tensors along
    dim 0, lists, and the tokenised texts' dicts of them) except the ``skipped`` count, kept as is.
    Tokenised texts hold the present texts only, so they keep as many rows as the first ``n`` samples
    have present texts. Tokenised texts keep their padded length (padding is masked everywhere it is
    read). ``n=0`` gives the empty batch."""
    if n == 0:
        return {"ids": [], "skipped": batch.get("skipped", 0)} | ({"failures": batch["failures"]} if "failures" in batch else {})
    return slice_rows(batch, 0, n)


def slice_rows(batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Samples ``start:stop`` (a non-empty range) of a batch from ``Collator``, as ``take_rows`` takes
    the first ``n``: the tokenised texts keep the rows of the present texts among those samples
    (gradient caching embeds a batch in such chunks)."""
    out = _take(batch, start, stop, skip=("skipped", "failures", "texts", "report"))
    if "texts" in batch:
        present = batch.get("present", {})
        out["texts"] = {g: _take_present(tokens, present.get(g), start, stop) for g, tokens in batch["texts"].items()}
    if "report" in batch:
        out["report"] = _take_present(batch["report"], batch.get("report_present"), start, stop)
    return out


def _take(value, start: int, stop: int, skip=()):
    if isinstance(value, dict):
        return {k: (v if k in skip else _take(v, start, stop)) for k, v in value.items()}
    return value[start:stop]


def _take_present(tokens: dict[str, torch.Tensor] | None, present: torch.Tensor | None, start: int, stop: int):
    if present is not None:  # rows of the present texts only
        start, stop = int(present[:start].sum()), int(present[:stop].sum())
    return None if tokens is None or stop == start else _take(tokens, start, stop)


def _stack_images(items: list[dict[str, Any]]) -> torch.Tensor:
    shapes = {tuple(item["image"].shape) for item in items}
    if len(shapes) > 1:
        raise ValueError(
            f"images in a batch differ in shape {sorted(shapes)}; give the dataset a transform that "
            "resizes (medgrain.data.transforms.eval_transform or pretrain_transform)"
        )
    return torch.stack([item["image"] for item in items])


def build_dataloader(
    dataset: Dataset,
    collator: Collator,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A single-process DataLoader with a seeded shuffle (evaluation, benchmarks, notebooks).

    It does not shard across ranks: the trainer shards with ``medgrain.training.sampling.
    ShardedBatchSampler``, whose global batch does not depend on the number of processes and which
    resumes mid-epoch exactly; a DistributedSampler here would be a second, different way."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collator,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
