"""Object detection on the frozen pretrained ResNet, at label fractions of the train split.

MGCA trains a YOLOv3 head on C3-C5 of its frozen ResNet-50 (research/mgca.md §4.2). Here the same
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

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from medgrain.data.transforms import segmentation_train_transform
from medgrain.evaluation.common import (
    FrozenEncoder,
    Result,
    by_fraction,
    fit_with_early_stopping,
    image_dataset,
    image_loader,
    load_encoder,
    note,
    open_manifest,
    print_fraction_table,
    require_split,
    subset,
    write_result,
)
from medgrain.evaluation.fractions import FRACTIONS, fraction_name, fraction_plan
from medgrain.evaluation.metrics import detection_map, require_coco_evaluation
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


def detect(checkpoint: str, data, *, model: str = "tiny", finding: str | None = None, fractions=FRACTIONS,
           seeds=(0, 1, 2), epochs: int = 50, patience: int = 10, lr: float = 5e-4, weight_decay: float = 1e-6,
           batch_size: int = 16, score_threshold: float = 0.05, fpn_channels: int = 256, split: str = "test",
           valid_split: str = "valid", fractions_dir=None, workers: int = 0, device=None,
           imagenet_weights: str | None = None, out=None, encoder=None) -> dict:
    """Train FCOS on the frozen tower per label fraction and seed; mAP on ``split``. One class: every
    finding's box ("abnormality", as RSNA's pneumonia boxes), or only the boxes of ``finding``."""
    manifest = open_manifest(data)
    for s in ("train", split):
        require_split(manifest, s, "detection")
    with_boxes = {f.name for r in manifest.records for f in r.findings if f.box}
    if not with_boxes:
        raise ValueError(f"{manifest.path}: no finding has a box; detection needs boxes "
                         "(findings[].box in the manifest, docs/manifest.md)")
    if finding is not None and finding not in with_boxes:
        raise ValueError(f"{manifest.path}: finding {finding!r} has no boxes; findings with boxes: {sorted(with_boxes)}")
    for s in ("train", split):
        if not any(f.box and (finding is None or f.name == finding) for r in manifest.split(s) for f in r.findings):
            raise ValueError(f"{manifest.path}: split '{s}' has no {finding or 'finding'} box to "
                             f"{'train on' if s == 'train' else 'score'}")
    seeds = list(seeds)
    encoder = encoder or load_encoder(checkpoint, model, seeds[0], device, imagenet_weights)
    if not encoder.is_cnn:
        raise ValueError(f"detection needs a ResNet (CNN) image tower: its C3-C5 feature maps feed the detector; "
                         f"{encoder.checkpoint} has a {type(encoder.model.visual).__name__} "
                         f"({encoder.config.image.name}). Use a ResNet checkpoint, or segment/linear-probe for ViTs.")
    require_coco_evaluation()  # before hours of training, not after
    options = {"model": model, "finding": finding, "target": finding or "every finding's box, one class",
               "detector": "FCOS on a frozen C3-C5 pyramid", "fractions": [fraction_name(f) for f in fractions],
               "seeds": seeds, "epochs": epochs, "patience": patience, "lr": lr, "weight_decay": weight_decay,
               "batch_size": batch_size, "score_threshold": score_threshold, "split": split,
               "valid_split": valid_split, "early_stopping": "validation mAP@[.40:.75]"}
    result = Result("detect", encoder, manifest, options, seeds)
    finding_index = manifest.finding_names.index(finding) if finding else None
    device = next(encoder.model.parameters()).device

    def targets_of(batch) -> list[dict]:
        targets = []
        for boxes, labels in zip(batch["boxes"], batch["box_labels"]):
            keep = torch.ones_like(labels, dtype=torch.bool) if finding_index is None else labels == finding_index
            targets.append({"boxes": boxes[keep].to(device), "labels": torch.zeros(int(keep.sum()), dtype=torch.long,
                                                                                     device=device)})
        return targets

    @torch.no_grad()
    def evaluate(detector, loader) -> dict:
        detector.eval()
        predictions, targets = [], []
        for batch in loader:
            predictions += [{k: v.cpu() for k, v in p.items()} for p in detector(batch["images"].to(device))]
            targets += [{k: v.cpu() for k, v in t.items()} for t in targets_of(batch)]
        return detection_map(predictions, targets)

    train_set = image_dataset(manifest, "train", segmentation_train_transform(encoder.preprocess), boxes=True)
    test_loader = image_loader(image_dataset(manifest, split, encoder.transform, boxes=True), batch_size,
                               workers=workers)
    valid_loader = None
    if any(r.image for r in manifest.split(valid_split)):
        valid_loader = image_loader(image_dataset(manifest, valid_split, encoder.transform, boxes=True), batch_size,
                                    workers=workers)
        if not any(f.box and (finding is None or f.name == finding) for r in manifest.split(valid_split)
                   for f in r.findings):
            valid_loader = None
    if valid_loader is None:
        note(f"split '{valid_split}' has no boxes: every epoch runs and the last weights are scored", result.warnings)

    runs = []
    for fraction, seed, ids in fraction_plan(manifest, fractions, seeds, fractions_dir):
        torch.manual_seed(seed)
        detector = build_detector(encoder, 1, score_threshold, fpn_channels).to(device)
        records = subset(train_set, ids)
        loader = image_loader(records, min(batch_size, len(records)), shuffle=True, workers=workers, seed=seed)
        trainable = [p for p in detector.parameters() if p.requires_grad]

        def batch_loss(batch, detector=detector):
            losses = detector(list(batch["images"].to(device)), targets_of(batch))
            return sum(losses.values())

        def validate(detector=detector):
            return -(evaluate(detector, valid_loader)["map_40_75"] or 0.0)

        fit = fit_with_early_stopping(detector, trainable, loader, batch_loss, validate if valid_loader else None,
                                      epochs, patience, lr, weight_decay,
                                      f"detect {fraction_name(fraction)} seed {seed}")
        runs.append({"fraction": fraction, "seed": seed, "n_train": len(records), **fit,
                     "metrics": {"macro": evaluate(detector, test_loader)}})

    result.metrics = {"fractions": by_fraction(runs)}
    print_fraction_table(f"detection ({options['target']}) on {split}: {manifest.path}", result.metrics["fractions"],
                         ["map_40_75", "map_coco", "map_50", "map_75"])
    return write_result(result.to_dict(), out)
