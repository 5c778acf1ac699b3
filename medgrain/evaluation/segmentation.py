"""Semantic segmentation on the pretrained image tower, at label fractions of the train split.

CNN towers: segmentation-models-pytorch's U-Net decoder and head on the tower's own feature
pyramid (every stage of the timm trunk, stride 2 to 32, plus the image), so the encoder *is* the
pretrained tower, whatever its width, rather than a copy of it loaded into a second network.
ViT towers: a SETR-PUP decoder on the patch tokens (MGCA's ViT segmenter, Wang et al., NeurIPS 2022, arXiv:2210.06044; after
SETR, Zheng et al., CVPR 2021, arXiv:2012.15840):
a linear layer, the tokens as a grid, then conv-BN-ReLU and bilinear x2 until the image size.

The encoder is frozen by default and then kept in eval mode (``FrozenEncoder``): MGCA froze the
weights but left BatchNorm in train mode, so its statistics drifted during "frozen" training.
Loss: MGCA's 10 x focal loss - log(soft Dice). Metric: per-image Dice of the thresholded
prediction, an empty mask predicted empty scoring 1, averaged over images.
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from medgrain.data.transforms import segmentation_train_transform
from medgrain.evaluation.bootstrap import bootstrap_intervals
from medgrain.evaluation.context import EvalContext
from medgrain.evaluation.data import image_dataset, image_loader, require_split, subset
from medgrain.evaluation.fitting import FrozenEncoder, fit_with_early_stopping
from medgrain.evaluation.fractions import fraction_name, fraction_plan
from medgrain.evaluation.metrics import dice_per_image
from medgrain.evaluation.present import fraction_console, fraction_headline, fraction_report
from medgrain.evaluation.registry import evaluate, register_task
from medgrain.evaluation.results import TaskResult, by_fraction

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


class SegmentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # What `evaluate all` sizes for the data when the user does not set it (suite.sized_defaults).
    sized: ClassVar[tuple[str, ...]] = ("epochs", "patience", "batch_size")
    finding: str | None = Field(None, description="segment one finding (default: the union of every finding's mask)")
    freeze: bool = Field(True, description="keep the encoder frozen, in eval mode (--no-freeze trains it too)")
    epochs: int = Field(50, description="at most this many epochs")
    patience: int = Field(10, description="early stopping: epochs without a lower validation loss")
    lr: float = Field(5e-4, description="AdamW learning rate")
    weight_decay: float = Field(0.05, description="AdamW weight decay")
    batch_size: int = Field(16, description="training and scoring batch size")
    threshold: float = Field(0.5, description="probability above which a pixel is predicted positive")


def _has_masks(ctx: EvalContext) -> str | None:
    masked = any(f.mask for r in ctx.manifest.records if r.image is not None for f in r.findings)
    return None if masked else "no finding has a mask"


class _MaskData:
    """The splits' records whose ground truth is complete, and the target each batch is scored on."""

    def __init__(self, ctx: EvalContext, options: SegmentOptions, result: TaskResult):
        self.ctx, self.options, self.result = ctx, options, result
        names = ctx.manifest.finding_names
        self.finding_index = names.index(options.finding) if options.finding else None

    def usable(self, split: str, transform):
        dataset = image_dataset(self.ctx.manifest, split, transform, masks=True)
        keep = mask_records(dataset, self.options.finding)
        if len(keep) < len(dataset):
            self.result.warn(f"split '{split}': {len(dataset) - len(keep)} records left out, labelled with a "
                             "finding that has no mask")
        return dataset, keep

    def loader(self, split: str):
        dataset, keep = self.usable(split, self.ctx.encoder.transform)
        return image_loader(torch.utils.data.Subset(dataset, keep), self.options.batch_size, workers=self.ctx.workers)

    def target(self, batch) -> torch.Tensor:
        masks = batch["masks"]
        target = masks.any(1) if self.finding_index is None else masks[:, self.finding_index]
        return target.unsqueeze(1).float().to(self.ctx.device)

    @torch.no_grad()
    def evaluate(self, segmenter, loader) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Per-image Dice, which images have a positive pixel, and the mean loss over ``loader``."""
        dice, positive, losses = [], [], []
        for batch in loader:
            logits = segmenter(batch["images"].to(self.ctx.device))
            target = self.target(batch)
            losses.append(float(segmentation_loss(logits, target)) * len(target))
            dice.append(dice_per_image(logits.sigmoid()[:, 0].cpu() >= self.options.threshold,
                                       target[:, 0].cpu().bool()))
            positive.append(target.flatten(1).any(1).cpu())
        return torch.cat(dice), torch.cat(positive), sum(losses) / sum(len(d) for d in dice)


def _check_masks(manifest, finding: str | None) -> None:
    with_masks = {f.name for r in manifest.records for f in r.findings if f.mask}
    if not with_masks:
        raise ValueError(f"{manifest.path}: no finding has a mask; segmentation needs masks "
                         "(findings[].mask in the manifest, docs/manifest.md)")
    if finding is not None and finding not in with_masks:
        raise ValueError(f"{manifest.path}: finding {finding!r} has no masks; findings with masks: {sorted(with_masks)}")


@register_task("segment", options=SegmentOptions, title="segmentation",
               context=("valid_split", "seeds", "fractions", "fractions_dir"),
               help="a segmentation decoder on the pretrained tower (U-Net or SETR-PUP), per-image Dice",
               available=_has_masks,
               tables=fraction_report("segmentation", (("dice", "Dice"), ("dice_positive", "Dice (positive)"))),
               console=fraction_console("segmentation", ["dice", "dice_positive", "dice_negative"]),
               headline=lambda metrics: fraction_headline(metrics, "dice"))
def segment_task(ctx: EvalContext, options: SegmentOptions) -> TaskResult:
    """Train a segmentation decoder (and the encoder unless ``freeze``) per label fraction and seed;
    per-image Dice on the context's split. The target is the union of every finding's mask, or the mask
    of ``finding``."""
    manifest, split, encoder, batch_size = ctx.manifest, ctx.split, ctx.encoder, options.batch_size
    for s in ("train", split):
        require_split(manifest, s, "segmentation")
    _check_masks(manifest, options.finding)
    result = TaskResult({**options.model_dump(mode="json"), "target": options.finding or "union of all findings' masks",
                         "decoder": "U-Net (smp)" if encoder.is_cnn else "SETR-PUP",
                         "loss": "10 * focal - log(soft dice)"}, {})
    data = _MaskData(ctx, options, result)
    train_set, train_keep = data.usable("train", segmentation_train_transform(encoder.preprocess))
    test_loader = data.loader(split)
    valid_loader = data.loader(ctx.valid_split) if ctx.has_images(ctx.valid_split) else None
    if valid_loader is None:
        result.warn(f"split '{ctx.valid_split}' has no images: every epoch runs and the last weights are scored")
    train_usable = {train_set.records[i].id for i in train_keep}

    runs, per_image = [], None
    for fraction, seed, ids in fraction_plan(manifest, ctx.fractions, ctx.seeds, ctx.fractions_dir):
        torch.manual_seed(seed)
        segmenter = build_segmenter(encoder, options.freeze).to(ctx.device)
        records = subset(train_set, [i for i in ids if i in train_usable])
        loader = image_loader(records, min(batch_size, len(records)), shuffle=True, workers=ctx.workers, seed=seed,
                              drop_last=len(records) > batch_size)
        trainable = [p for p in segmenter.parameters() if p.requires_grad]

        def batch_loss(batch, segmenter=segmenter):
            return segmentation_loss(segmenter(batch["images"].to(ctx.device)), data.target(batch))

        def validate(segmenter=segmenter):
            return data.evaluate(segmenter, valid_loader)[2]

        fit = fit_with_early_stopping(segmenter, trainable, loader, batch_loss, validate if valid_loader else None,
                                      options.epochs, options.patience, options.lr, options.weight_decay,
                                      f"segment {fraction_name(fraction)} seed {seed}")
        dice, positive, _ = data.evaluate(segmenter, test_loader)
        metrics = {"macro": dice_summary(dice.numpy(), positive.numpy(), ctx.intervals),
                   "images": len(dice), "positive_images": int(positive.sum())}
        runs.append({"fraction": fraction, "seed": seed, "n_train": len(records), **fit, "metrics": metrics})
        if fraction == max(ctx.fractions) and per_image is None:  # what medgrain compare pairs
            subset_of = test_loader.dataset
            ids = [subset_of.dataset.records[i].id for i in subset_of.indices]
            per_image = {"ids": ids, "dice": dice.tolist(), "description": f"{fraction_name(fraction)} labels, seed {seed}"}

    result.metrics = {"fractions": by_fraction(runs), "per_image": per_image}
    if not any(r["metrics"]["positive_images"] for r in runs):
        result.warn(f"split '{split}' has no image with a mask: Dice only measures empty predictions")
    return result


def segment(checkpoint: str, data, *, out=None, encoder=None, **kwargs) -> dict:
    """``evaluate("segment", ...)``: ``kwargs`` are the context's fields and ``SegmentOptions``'."""
    return evaluate("segment", checkpoint, data, out=out, encoder=encoder, **kwargs)


def dice_summary(dice: np.ndarray, positive: np.ndarray, intervals=None) -> dict:
    """Mean Dice over all test images, those with a mask and those without; with ``intervals`` (a
    ``Bootstrap``) each gets ``<metric>_ci`` over images, stratified by positive/negative image."""
    out = {
        "dice": float(dice.mean()),
        "dice_positive": float(dice[positive].mean()) if positive.any() else None,
        "dice_negative": float(dice[~positive].mean()) if (~positive).any() else None,
    }
    if intervals is not None:
        def statistic(d, p):
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.stack([d.mean(-1), (d * p).sum(-1) / p.sum(-1), (d * ~p).sum(-1) / (~p).sum(-1)], 1)

        cis = bootstrap_intervals(statistic, [dice, positive.astype(bool)], intervals, positive.astype(int))
        for key, ci in zip(("dice", "dice_positive", "dice_negative"), cis):
            out[f"{key}_ci"] = ci if out[key] is not None else None
    return out
