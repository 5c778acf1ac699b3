"""Semantic segmentation on the pretrained image tower, at label fractions of the train split.

CNN towers: segmentation-models-pytorch's U-Net decoder and head on the tower's own feature
pyramid (every stage of the timm trunk, stride 2 to 32, plus the image), so the encoder *is* the
pretrained tower, whatever its width, rather than a copy of it loaded into a second network.
ViT towers: a SETR-PUP decoder on the patch tokens (MGCA's ViT segmenter, research/mgca.md §4.3):
a linear layer, the tokens as a grid, then conv-BN-ReLU and bilinear x2 until the image size.

The encoder is frozen by default and then kept in eval mode (``FrozenEncoder``): MGCA froze the
weights but left BatchNorm in train mode, so its statistics drifted during "frozen" training.
Loss: MGCA's 10 x focal loss - log(soft Dice). Metric: per-image Dice of the thresholded
prediction, an empty mask predicted empty scoring 1, averaged over images.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn
from torchvision.ops import sigmoid_focal_loss

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
from medgrain.evaluation.metrics import dice_per_image

UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)  # smp's defaults
SETR_CHANNELS = (512, 256, 128, 64)  # MGCA's ViT segmenter


class CNNPyramid(nn.Module):
    """Every stage of a timm CNN trunk (``features_only``), finest first: a U-Net's skips."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        info = trunk.feature_info.info
        self.stages = [i["module"].replace(".", "_") for i in info]  # timm flattens "stages.0" to "stages_0"
        self.channels = [i["num_chs"] for i in info]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features, x = [], images
        for name, module in self.trunk.items():
            x = module(x)
            if name in self.stages:
                features.append(x)
        return features


class UNetSegmenter(nn.Module):
    def __init__(self, visual: nn.Module, in_chans: int, freeze: bool, n_classes: int = 1):
        super().__init__()
        pyramid = CNNPyramid(visual.trunk)
        channels = [in_chans, *pyramid.channels]
        self.encoder = FrozenEncoder(pyramid) if freeze else pyramid
        decoder_channels = UNET_DECODER_CHANNELS[: len(pyramid.channels)]
        self.decoder = UnetDecoder(channels, decoder_channels, n_blocks=len(decoder_channels))
        self.head = SegmentationHead(decoder_channels[-1], n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder([images, *self.encoder(images)]))


class _PatchTokens(nn.Module):
    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.visual(images, tokens=True)
        h, w = out.grid
        return out.tokens.transpose(1, 2).reshape(len(images), -1, h, w)


class SETRSegmenter(nn.Module):
    """SETR's progressive upsampling on a ViT's patch tokens; as many x2 steps as the patch size needs."""

    def __init__(self, visual: nn.Module, image_size: int, in_chans: int, freeze: bool, n_classes: int = 1):
        super().__init__()
        tokens = _PatchTokens(visual)
        self.encoder = FrozenEncoder(tokens) if freeze else tokens
        with torch.no_grad():
            probe = torch.zeros(1, in_chans, image_size, image_size, device=next(visual.parameters()).device)
            grid = visual.eval()(probe, tokens=True).grid
        steps = max(1, round(math.log2(image_size / grid[0])))
        channels = (SETR_CHANNELS[0],) * max(0, steps - len(SETR_CHANNELS)) + SETR_CHANNELS[-steps:]
        self.project = nn.Linear(visual.token_width, visual.token_width)
        layers, width = [], visual.token_width
        for out in channels:
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
            width = out
        self.decoder = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, n_classes, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.encoder(images)
        x = self.project(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        logits = self.head(self.decoder(x))
        if logits.shape[-2:] != images.shape[-2:]:  # a patch size that is not a power of two
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def build_segmenter(encoder, freeze: bool) -> nn.Module:
    """A U-Net for CNN towers, SETR-PUP for ViT towers, on a copy of the pretrained tower."""
    visual = copy.deepcopy(encoder.model.visual)
    in_chans = encoder.preprocess.in_chans
    if encoder.is_cnn:
        return UNetSegmenter(visual, in_chans, freeze)
    return SETRSegmenter(visual, encoder.preprocess.image_size, in_chans, freeze)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MGCA's: 10 x focal loss (gamma 2) - log(soft Dice over the batch, smoothing 1)."""
    focal = sigmoid_focal_loss(logits, target, alpha=-1, gamma=2, reduction="mean")
    probabilities = logits.sigmoid()
    dice = (2 * (probabilities * target).sum() + 1) / (probabilities.sum() + target.sum() + 1)
    return 10 * focal - torch.log(dice)


def mask_records(dataset, finding: str | None) -> list[int]:
    """Indices of records whose ground truth is complete: each positive finding (or ``finding``) has
    a mask. A record labelled with a finding but without its mask would be a false negative."""
    keep = []
    for i, record in enumerate(dataset.records):
        wanted = [finding] if finding else record.labels
        masked = {f.name for f in record.findings if f.mask}
        if all(name in masked for name in wanted if name in record.labels):
            keep.append(i)
    return keep


def segment(checkpoint: str, data, *, model: str = "tiny", finding: str | None = None, freeze: bool = True,
            fractions=FRACTIONS, seeds=(0, 1, 2), epochs: int = 50, patience: int = 10, lr: float = 5e-4,
            weight_decay: float = 0.05, batch_size: int = 16, threshold: float = 0.5, split: str = "test",
            valid_split: str = "valid", fractions_dir=None, workers: int = 0, device=None,
            imagenet_weights: str | None = None, out=None, encoder=None) -> dict:
    """Train a segmentation decoder (and the encoder unless ``freeze``) per label fraction and seed;
    per-image Dice on ``split``. The target is the union of every finding's mask, or the mask of
    ``finding``."""
    manifest = open_manifest(data)
    for s in ("train", split):
        require_split(manifest, s, "segmentation")
    with_masks = {f.name for r in manifest.records for f in r.findings if f.mask}
    if not with_masks:
        raise ValueError(f"{manifest.path}: no finding has a mask; segmentation needs masks "
                         "(findings[].mask in the manifest, docs/manifest.md)")
    if finding is not None and finding not in with_masks:
        raise ValueError(f"{manifest.path}: finding {finding!r} has no masks; findings with masks: {sorted(with_masks)}")
    seeds = list(seeds)
    encoder = encoder or load_encoder(checkpoint, model, seeds[0], device, imagenet_weights)
    options = {"model": model, "finding": finding, "target": finding or "union of all findings' masks",
               "freeze": freeze, "decoder": "U-Net (smp)" if encoder.is_cnn else "SETR-PUP",
               "fractions": [fraction_name(f) for f in fractions], "seeds": seeds, "epochs": epochs,
               "patience": patience, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
               "threshold": threshold, "split": split, "valid_split": valid_split,
               "loss": "10 * focal - log(soft dice)"}
    result = Result("segment", encoder, manifest, options, seeds)
    finding_index = manifest.finding_names.index(finding) if finding else None
    device = next(encoder.model.parameters()).device

    def target_of(batch) -> torch.Tensor:
        masks = batch["masks"]
        target = masks.any(1) if finding_index is None else masks[:, finding_index]
        return target.unsqueeze(1).float().to(device)

    def usable(s: str, transform):
        dataset = image_dataset(manifest, s, transform, masks=True)
        keep = mask_records(dataset, finding)
        if len(keep) < len(dataset):
            note(f"split '{s}': {len(dataset) - len(keep)} records left out, labelled with a finding "
                 "that has no mask", result.warnings)
        return dataset, keep

    train_set, train_keep = usable("train", segmentation_train_transform(encoder.preprocess))
    test_set, test_keep = usable(split, encoder.transform)
    test_loader = image_loader(torch.utils.data.Subset(test_set, test_keep), batch_size, workers=workers)
    valid_loader = None
    if any(r.image for r in manifest.split(valid_split)):
        valid_set, valid_keep = usable(valid_split, encoder.transform)
        valid_loader = image_loader(torch.utils.data.Subset(valid_set, valid_keep), batch_size, workers=workers)
    else:
        note(f"split '{valid_split}' has no images: every epoch runs and the last weights are scored", result.warnings)
    train_usable = {train_set.records[i].id for i in train_keep}

    @torch.no_grad()
    def evaluate(segmenter, loader) -> tuple[torch.Tensor, torch.Tensor, float]:
        dice, positive, losses = [], [], []
        for batch in loader:
            logits = segmenter(batch["images"].to(device))
            target = target_of(batch)
            losses.append(float(segmentation_loss(logits, target)) * len(target))
            dice.append(dice_per_image(logits.sigmoid()[:, 0].cpu() >= threshold, target[:, 0].cpu().bool()))
            positive.append(target.flatten(1).any(1).cpu())
        return torch.cat(dice), torch.cat(positive), sum(losses) / sum(len(d) for d in dice)

    runs = []
    for fraction, seed, ids in fraction_plan(manifest, fractions, seeds, fractions_dir):
        torch.manual_seed(seed)
        segmenter = build_segmenter(encoder, freeze).to(device)
        records = subset(train_set, [i for i in ids if i in train_usable])
        loader = image_loader(records, min(batch_size, len(records)), shuffle=True, workers=workers, seed=seed,
                              drop_last=len(records) > batch_size)
        trainable = [p for p in segmenter.parameters() if p.requires_grad]

        def batch_loss(batch, segmenter=segmenter):
            return segmentation_loss(segmenter(batch["images"].to(device)), target_of(batch))

        def validate(segmenter=segmenter):
            return evaluate(segmenter, valid_loader)[2]

        fit = fit_with_early_stopping(segmenter, trainable, loader, batch_loss, validate if valid_loader else None,
                                      epochs, patience, lr, weight_decay,
                                      f"segment {fraction_name(fraction)} seed {seed}")
        dice, positive, _ = evaluate(segmenter, test_loader)
        metrics = {"macro": {
            "dice": float(dice.mean()),
            "dice_positive": float(dice[positive].mean()) if positive.any() else None,
            "dice_negative": float(dice[~positive].mean()) if (~positive).any() else None,
        }, "images": len(dice), "positive_images": int(positive.sum())}
        runs.append({"fraction": fraction, "seed": seed, "n_train": len(records), **fit, "metrics": metrics})

    result.metrics = {"fractions": by_fraction(runs)}
    if not any(r["metrics"]["positive_images"] for r in runs):
        note(f"split '{split}' has no image with a mask: Dice only measures empty predictions", result.warnings)
    print_fraction_table(f"segmentation ({options['decoder']}, {options['target']}) on {split}: {manifest.path}",
                         result.metrics["fractions"], ["dice", "dice_positive", "dice_negative"])
    return write_result(result.to_dict(), out)
