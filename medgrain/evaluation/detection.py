"""Object detection on the frozen pretrained ResNet, at label fractions of the train split.

MGCA (Wang et al., NeurIPS 2022, arXiv:2210.06044; its code's ``mgca_detector.py``) trains a YOLOv3 head on C3-C5 of its frozen
ResNet-50. Here the same
stages feed torchvision's FCOS (a feature pyramid P3-P7 and FCOS's head). FCOS is anchor-free:
its size ranges scale with the pyramid's strides, so it needs no anchor tuning for small images
or small findings, where YOLOv3's COCO anchors (scaled by 224/416) would. The backbone is frozen
and kept in eval mode (MGCA's code let its BatchNorm statistics drift).

Reported: mAP averaged over IoU 0.40..0.75 (MGCA's number) and COCO's mAP@[.50:.95], mAP@.5,
mAP@.75. MGCA filtered detections at objectness 0.5 before computing AP and skipped images
without boxes; both truncate the precision-recall curve, so neither is done here: every image is
scored, with detections down to ``score_threshold`` (0.05 by default).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from medgrain.data.transforms import segmentation_train_transform
from medgrain.evaluation.context import EvalContext
from medgrain.evaluation.data import image_dataset, image_loader, require_split, subset
from medgrain.evaluation.fitting import FrozenEncoder, fit_with_early_stopping
from medgrain.evaluation.fractions import fraction_name, fraction_plan
from medgrain.evaluation.metrics import (
    COCO_IOU_THRESHOLDS,
    MGCA_IOU_THRESHOLDS,
    detection_map,
    detection_map_interval,
    require_coco_evaluation,
)
from medgrain.evaluation.present import fraction_console, fraction_headline, fraction_report
from medgrain.evaluation.registry import evaluate, register_task
from medgrain.evaluation.results import TaskResult, by_fraction
from medgrain.evaluation.segmentation import CNNPyramid


class PyramidBackbone(nn.Module):
    """C3, C4, C5 of the frozen tower through a feature pyramid (P3-P7), as FCOS expects."""

    def __init__(self, visual: nn.Module, out_channels: int = 256):
        super().__init__()
        pyramid = CNNPyramid(visual.trunk)
        self.encoder = FrozenEncoder(pyramid)
        in_channels = pyramid.channels[-3:]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict:
        c3, c4, c5 = self.encoder(images)[-3:]
        return self.fpn(OrderedDict([("c3", c3), ("c4", c4), ("c5", c5)]))


def build_detector(encoder, n_classes: int, score_threshold: float, fpn_channels: int = 256) -> FCOS:
    size = encoder.preprocess.image_size
    channels = encoder.preprocess.in_chans
    # Images arrive normalised and at the model's size: FCOS's own resize and normalisation are identities.
    return FCOS(PyramidBackbone(copy.deepcopy(encoder.model.visual), fpn_channels), n_classes,
                min_size=size, max_size=size, image_mean=[0.0] * channels, image_std=[1.0] * channels,
                score_thresh=score_threshold)


class DetectOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # What `evaluate all` sizes for the data when the user does not set it (suite.sized_defaults).
    sized: ClassVar[tuple[str, ...]] = ("epochs", "patience", "batch_size")
    finding: str | None = Field(None, description="detect one finding's boxes (default: every finding's, one class)")
    epochs: int = Field(50, description="at most this many epochs")
    patience: int = Field(10, description="early stopping: epochs without a better validation mAP")
    lr: float = Field(5e-4, description="AdamW learning rate")
    weight_decay: float = Field(1e-6, description="AdamW weight decay (MGCA's)")
    batch_size: int = Field(16, description="training and scoring batch size")
    score_threshold: float = Field(0.05, description="detections below this score are dropped before mAP")
    fpn_channels: int = Field(256, description="width of the feature pyramid")


def _can_detect(ctx: EvalContext) -> str | None:
    """Why detection cannot run on this data and encoder, or None."""
    if not any(f.box for r in ctx.manifest.records if r.image is not None for f in r.findings):
        return "no finding has a box"
    if not ctx.encoder.is_cnn:
        return f"detection needs a ResNet (CNN) image tower; this one is {ctx.encoder.config.image.name}"
    try:
        require_coco_evaluation()
    except ModuleNotFoundError as e:
        return str(e)
    return None


def _check_boxes(ctx: EvalContext, finding: str | None) -> None:
    manifest, encoder = ctx.manifest, ctx.encoder
    with_boxes = {f.name for r in manifest.records for f in r.findings if f.box}
    if not with_boxes:
        raise ValueError(f"{manifest.path}: no finding has a box; detection needs boxes "
                         "(findings[].box in the manifest, docs/manifest.md)")
    if finding is not None and finding not in with_boxes:
        raise ValueError(f"{manifest.path}: finding {finding!r} has no boxes; findings with boxes: {sorted(with_boxes)}")
    for s in ("train", ctx.split):
        if not _has_boxes(manifest, s, finding):
            raise ValueError(f"{manifest.path}: split '{s}' has no {finding or 'finding'} box to "
                             f"{'train on' if s == 'train' else 'score'}")
    if not encoder.is_cnn:
        raise ValueError(f"detection needs a ResNet (CNN) image tower: its C3-C5 feature maps feed the detector; "
                         f"{encoder.checkpoint} has a {type(encoder.model.visual).__name__} "
                         f"({encoder.config.image.name}). Use a ResNet checkpoint, or segment/linear-probe for ViTs.")
    require_coco_evaluation()  # before hours of training, not after


def _has_boxes(manifest, split: str, finding: str | None) -> bool:
    return any(f.box and (finding is None or f.name == finding) for r in manifest.split(split) for f in r.findings)


class _BoxData:
    """The one-class targets of a batch, and mAP of a detector over a loader."""

    def __init__(self, ctx: EvalContext, finding: str | None):
        self.device = ctx.device
        self.finding_index = ctx.manifest.finding_names.index(finding) if finding else None

    def targets(self, batch) -> list[dict]:
        targets = []
        for boxes, labels in zip(batch["boxes"], batch["box_labels"]):
            keep = torch.ones_like(labels, dtype=torch.bool) if self.finding_index is None else labels == self.finding_index
            targets.append({"boxes": boxes[keep].to(self.device),
                            "labels": torch.zeros(int(keep.sum()), dtype=torch.long, device=self.device)})
        return targets

    @torch.no_grad()
    def evaluate(self, detector, loader, intervals=None) -> dict:
        """mAP of the detector on ``loader``; with ``intervals`` (a ``Bootstrap``), MGCA's mAP@[.40:.75] and
        COCO's mAP@[.50:.95] get their intervals over test images."""
        detector.eval()
        predictions, targets = [], []
        for batch in loader:
            predictions += [{k: v.cpu() for k, v in p.items()} for p in detector(batch["images"].to(self.device))]
            targets += [{k: v.cpu() for k, v in t.items()} for t in self.targets(batch)]
        metrics = detection_map(predictions, targets)
        if intervals is not None:
            for key, thresholds in (("map_40_75", MGCA_IOU_THRESHOLDS), ("map_coco", COCO_IOU_THRESHOLDS)):
                metrics[f"{key}_ci"] = detection_map_interval(predictions, targets, intervals, thresholds)[1]
        return metrics


@register_task("detect", options=DetectOptions, title="detection",
               context=("valid_split", "seeds", "fractions", "fractions_dir"),
               help="FCOS on the frozen ResNet's C3-C5, mAP", available=_can_detect,
               tables=fraction_report("detection", (("map_40_75", "mAP .40–.75"), ("map_50", "mAP@.5"),
                                                    ("map_coco", "mAP COCO"))),
               console=fraction_console("detection", ["map_40_75", "map_coco", "map_50", "map_75"]),
               headline=lambda metrics: fraction_headline(metrics, "map_40_75"))
def detect_task(ctx: EvalContext, options: DetectOptions) -> TaskResult:
    """Train FCOS on the frozen tower per label fraction and seed; mAP on the context's split. One class:
    every finding's box ("abnormality", as RSNA's pneumonia boxes), or only the boxes of ``finding``."""
    manifest, split, encoder, finding = ctx.manifest, ctx.split, ctx.encoder, options.finding
    for s in ("train", split):
        require_split(manifest, s, "detection")
    _check_boxes(ctx, finding)
    result = TaskResult({**options.model_dump(mode="json"), "target": finding or "every finding's box, one class",
                         "detector": "FCOS on a frozen C3-C5 pyramid",
                         "early_stopping": "validation mAP@[.40:.75]"}, {})
    data = _BoxData(ctx, finding)

    def loader(s: str):
        return image_loader(image_dataset(manifest, s, encoder.transform, boxes=True), options.batch_size,
                            workers=ctx.workers)

    train_set = image_dataset(manifest, "train", segmentation_train_transform(encoder.preprocess), boxes=True)
    test_loader = loader(split)
    valid_loader = None
    if ctx.has_images(ctx.valid_split) and _has_boxes(manifest, ctx.valid_split, finding):
        valid_loader = loader(ctx.valid_split)
    else:
        result.warn(f"split '{ctx.valid_split}' has no boxes: every epoch runs and the last weights are scored")

    runs = []
    for fraction, seed, ids in fraction_plan(manifest, ctx.fractions, ctx.seeds, ctx.fractions_dir):
        torch.manual_seed(seed)
        detector = build_detector(encoder, 1, options.score_threshold, options.fpn_channels).to(ctx.device)
        records = subset(train_set, ids)
        train_loader = image_loader(records, min(options.batch_size, len(records)), shuffle=True,
                                    workers=ctx.workers, seed=seed)
        trainable = [p for p in detector.parameters() if p.requires_grad]

        def batch_loss(batch, detector=detector):
            return sum(detector(list(batch["images"].to(ctx.device)), data.targets(batch)).values())

        def validate(detector=detector):
            return -(data.evaluate(detector, valid_loader)["map_40_75"] or 0.0)

        fit = fit_with_early_stopping(detector, trainable, train_loader, batch_loss,
                                      validate if valid_loader else None, options.epochs, options.patience,
                                      options.lr, options.weight_decay, f"detect {fraction_name(fraction)} seed {seed}")
        runs.append({"fraction": fraction, "seed": seed, "n_train": len(records), **fit,
                     "metrics": {"macro": data.evaluate(detector, test_loader, ctx.intervals)}})

    result.metrics = {"fractions": by_fraction(runs)}
    return result


def detect(checkpoint: str, data, *, out=None, encoder=None, **kwargs) -> dict:
    """``evaluate("detect", ...)``: ``kwargs`` are the context's fields and ``DetectOptions``'."""
    return evaluate("detect", checkpoint, data, out=out, encoder=encoder, **kwargs)
