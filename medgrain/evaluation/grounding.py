"""Phrase grounding: where in the image does the model put a phrase, against where a radiologist did.

For every (image, phrase, region) of the data (MS-CXR's boxes and ``label_text``, or any manifest whose
findings carry a ``phrase`` with a box or mask, as the synthetic data does) the model's
phrase-to-patch similarity map is scored with MS-CXR's metrics (Boecking et al., "Making the Most of
Text Semantics to Improve Biomedical Vision-Language Processing", ECCV 2022, arXiv 2204.09817):

- the map is the cosine similarity between the phrase embedding and every patch embedding, brought
  to the model's input size by nearest-neighbour up-sampling (each patch covers its pixels);
- ``cnr``: contrast-to-noise ratio between the region and the rest, ``|mu_in - mu_out| /
  sqrt(var_in + var_out)`` (no threshold needed);
- ``miou``: IoU of the map thresholded at 0.1, 0.2, 0.3, 0.4, 0.5 with the region, averaged.

Regions are scored where the model looked: the eval transform resizes the shorter side and crops the
centre square, and the region goes through the same resize (nearest) and crop. Boxes of one phrase in
one image are one region (their union), as MS-CXR pairs a phrase with all its boxes.

Which embeddings: ``level="global"`` projects the tower's dense features with the global image head
and compares them with the global text embedding (CLIP and MGLL, whose only shared space is the
global one); ``"token"`` uses the token heads (MGCA's local space, the phrase as its words' [CLS]-
attention-weighted mean); ``"auto"`` picks token heads when the model has them. Comparing both on an
MGCA model is how the claim "token-level alignment localises better" gets measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from medgrain.evaluation.bootstrap import Bootstrap, clustered_mean_interval
from medgrain.evaluation.metrics import GROUNDING_IOU_THRESHOLDS, box_region, contrast_to_noise, grounding_iou
from medgrain.evaluation.registry import evaluate, register_task

LEVELS = ("auto", "token", "global")


@dataclass(frozen=True)
class GroundingPair:
    """One phrase of one image with its ground-truth boxes and masks."""

    record_id: str
    finding: str
    phrase: str
    boxes: tuple[tuple[float, float, float, float], ...]
    masks: tuple[str, ...]


def grounding_pairs(records) -> list[GroundingPair]:
    """Every (record, finding, phrase) that has a box or a mask, boxes and masks of a pair merged."""
    grouped: dict[tuple[str, str, str], tuple[list, list]] = {}
    for record in records:
        for f in record.findings:
            if f.phrase and (f.box is not None or f.mask is not None):
                boxes, masks = grouped.setdefault((record.id, f.name, f.phrase), ([], []))
                if f.box is not None:
                    boxes.append(tuple(f.box))
                if f.mask is not None:
                    masks.append(f.mask)
    return [GroundingPair(rid, name, phrase, tuple(b), tuple(m)) for (rid, name, phrase), (b, m) in grouped.items()]


class GroundingDataset(Dataset):
    """Items ``(image, region)``: the eval-transformed image and the pair's region on the same grid."""

    def __init__(self, manifest, pairs: list[GroundingPair], transform, image_size: int):
        self.manifest, self.pairs, self.transform, self.size = manifest, pairs, transform, image_size
        self.records = {r.id: r for r in manifest.records}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        pair = self.pairs[i]
        record = self.records[pair.record_id]
        raw = self.manifest.read_image(record.image)
        height, width = raw.shape[-2:]
        region = box_region(pair.boxes, height, width) if pair.boxes else torch.zeros(height, width, dtype=torch.bool)
        for mask in pair.masks:
            region |= self.manifest.read_mask(mask, (height, width)).bool()
        # the eval transform's geometry: shorter side to image_size, centre square
        region = TF.resize(region[None].to(torch.uint8), [self.size], interpolation=InterpolationMode.NEAREST)
        region = TF.center_crop(region, [self.size, self.size])[0].bool()
        return self.transform(raw), region


def similarity_maps(model, tokenizer, images: torch.Tensor, phrases: list[str], level: str = "auto",
                    with_grid: bool = False):
    """(N, S, S) cosine similarity of each phrase with every patch of its image, up-sampled to the
    input size S (nearest: each patch covers its pixels); ``with_grid``: also the (N, h, w) patch maps."""
    device = images.device
    tokens = {k: v.to(device) for k, v in tokenizer(phrases).items()}
    patches, (h, w) = model.patch_embeddings(images, level)
    phrase = model.phrase_embeddings(tokens, level)
    sims = torch.einsum("nme,ne->nm", patches.float(), phrase.float()).reshape(-1, 1, h, w)
    maps = F.interpolate(sims, size=images.shape[-2:], mode="nearest")[:, 0]
    return (maps, sims[:, 0]) if with_grid else maps


def ground(encoder, manifest, split: str = "test", level: str = "auto", batch_size: int = 32, workers: int = 0,
           keep_maps: int = 0) -> dict:
    """Per pair ``cnr`` and ``miou`` (NaN where undefined), the pairs, and the first ``keep_maps`` maps
    and regions (for the report's pictures)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    records = manifest.split(split)
    pairs = grounding_pairs(records)
    if not pairs:
        raise ValueError(f"{manifest.path}: split '{split}' has no finding with a phrase and a box or mask; phrase "
                         "grounding needs findings[].phrase (MS-CXR: `medgrain prepare ms-cxr`)")
    model = encoder.model
    if level == "token" and not model.token_heads:
        raise ValueError("level 'token' needs a model with token heads (MGCA); use 'global' or 'auto'")
    size = encoder.preprocess.image_size
    loader = DataLoader(GroundingDataset(manifest, pairs, encoder.transform, size), batch_size=batch_size,
                        num_workers=workers)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # BatchNorm heads use their running statistics
    cnr, miou, kept = [], [], {"maps": [], "regions": [], "grid_maps": []}
    try:
        with torch.no_grad():
            for start, (images, regions) in zip(range(0, len(pairs), batch_size), loader):
                phrases = [p.phrase for p in pairs[start:start + len(images)]]
                maps, grid_maps = similarity_maps(model, encoder.tokenizer, images.to(device), phrases, level,
                                                  with_grid=True)
                maps = maps.cpu()
                cnr.append(contrast_to_noise(maps, regions))
                miou.append(grounding_iou(maps, regions))
                if len(kept["maps"]) * batch_size < keep_maps:
                    kept["maps"].append(maps.numpy())
                    kept["regions"].append(regions.numpy())
                    kept["grid_maps"].append(grid_maps.cpu().numpy())
    finally:
        model.train(was_training)
    out = {"pairs": pairs, "cnr": torch.cat(cnr).numpy(), "miou": torch.cat(miou).numpy(),
           "level": level if level != "auto" else ("token" if model.token_heads else "global")}
    if keep_maps:
        out["maps"] = np.concatenate(kept["maps"])[:keep_maps]
        out["regions"] = np.concatenate(kept["regions"])[:keep_maps]
        out["grid_maps"] = np.concatenate(kept["grid_maps"])[:keep_maps]
    return out


def _summary(values: np.ndarray, images: np.ndarray, bootstrap: Bootstrap | None):
    """Mean of the defined values, its interval over test images (pairs of one image resampled together)
    and the count of defined values."""
    defined = np.isfinite(values)
    if not defined.any():
        return None, None, 0
    interval = clustered_mean_interval(values, images, bootstrap) if bootstrap is not None else None
    return float(values[defined].mean()), interval, int(defined.sum())


def grounding_metrics(scored: dict, bootstrap: Bootstrap | None = None) -> dict:
    """``cnr``, ``miou`` and, with ``bootstrap``, their ``_ci`` overall and per finding; ``undefined``
    counts the pairs whose CNR is undefined (a region covering all or none of the input, a constant map).
    The intervals resample test images, each with all its pairs."""
    findings = np.array([p.finding for p in scored["pairs"]])
    images = np.array([p.record_id for p in scored["pairs"]])
    overall: dict = {"pairs": len(findings)}
    per_finding: dict = {}
    for name, select in [(None, np.ones(len(findings), bool))] + [(n, findings == n) for n in sorted(set(findings))]:
        row = {"pairs": int(select.sum())}
        for metric in ("cnr", "miou"):
            value, ci, n = _summary(scored[metric][select], images[select], bootstrap)
            row[metric] = value
            if bootstrap is not None:
                row[f"{metric}_ci"] = ci
            row[f"{metric}_undefined"] = int(select.sum()) - n
        if name is None:
            overall.update(row)
        else:
            per_finding[name] = row
    return {"macro": {k: overall[k] for k in ("cnr", "cnr_ci", "miou", "miou_ci") if k in overall}, "overall": overall,
            "per_finding": per_finding, "level": scored["level"],
            "iou_thresholds": list(GROUNDING_IOU_THRESHOLDS)}


# --- the task ---------------------------------------------------------------------------------------

class GroundingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Literal["auto", "token", "global"] = Field(
        "auto", description="embeddings: 'token' heads (MGCA), the 'global' heads (CLIP, MGLL), or 'auto' (token "
                            "heads when the model has them)")
    batch_size: int = Field(32, ge=1, description="images per batch")
    examples: int = Field(4, ge=0, description="similarity maps stored in the result for the report's pictures")


def _has_pairs(ctx) -> str | None:
    if grounding_pairs(ctx.manifest.split(ctx.split)):
        return None
    return f"split '{ctx.split}' has no finding with a phrase and a box or mask"


def grounding_tables(metrics: dict) -> dict:
    from medgrain.evaluation.present import with_ci

    macro = metrics.get("macro", {})
    return {"grounding": {"CNR": with_ci(macro, "cnr"), "mIoU": with_ci(macro, "miou")}}


def grounding_console(record: dict) -> list:
    from medgrain.evaluation.present import Table, record_title, with_ci

    metrics = record["metrics"]
    rows = [[name, row["pairs"], with_ci(row, "cnr"), with_ci(row, "miou")]
            for name, row in metrics["per_finding"].items()]
    rows.append(["all", metrics["overall"]["pairs"], with_ci(metrics["overall"], "cnr"),
                 with_ci(metrics["overall"], "miou")])
    return [Table(record_title(f"phrase grounding ({metrics['level']} embeddings)", record),
                  ["finding", "pairs", "CNR", "mIoU"], rows)]


def _examples(scored: dict, n: int) -> list[dict]:
    """The first ``n`` pairs' maps on the patch grid, for pictures: the report redraws image and region."""
    out = []
    for pair, grid_map, cnr, miou in zip(scored["pairs"][:n], scored.get("grid_maps", [])[:n], scored["cnr"][:n],
                                         scored["miou"][:n]):
        out.append({"record_id": pair.record_id, "finding": pair.finding, "phrase": pair.phrase,
                    "boxes": [list(b) for b in pair.boxes], "masks": list(pair.masks),
                    "map": np.round(grid_map, 4).tolist(),
                    "cnr": float(cnr) if np.isfinite(cnr) else None, "miou": float(miou) if np.isfinite(miou) else None})
    return out


@register_task("grounding", options=GroundingOptions, title="grounding",
               help="phrase grounding: CNR and mIoU of phrase-to-patch similarity maps against boxes or masks (MS-CXR)",
               available=_has_pairs, tables=grounding_tables, console=grounding_console,
               headline=lambda metrics: ("CNR", metrics["macro"]["cnr"]))
def grounding_task(ctx, options: GroundingOptions):
    """CNR and mIoU overall and per finding, with intervals, of the context's split."""
    from medgrain.evaluation.results import TaskResult

    scored = ground(ctx.encoder, ctx.manifest, ctx.split, options.level, options.batch_size, ctx.workers,
                    keep_maps=options.examples)
    metrics = grounding_metrics(scored, ctx.intervals)
    metrics["examples"] = _examples(scored, options.examples)
    # every pair's values, so that two models can be compared pair by pair (medgrain compare)
    metrics["per_pair"] = {"ids": [f"{p.record_id}|{p.finding}|{p.phrase}" for p in scored["pairs"]],
                           **{k: [float(v) if np.isfinite(v) else None for v in scored[k]] for k in ("cnr", "miou")}}
    result = TaskResult(options.model_dump(mode="json"), metrics)
    undefined = metrics["overall"]["cnr_undefined"]
    if undefined:
        result.warn(f"{undefined} of {metrics['overall']['pairs']} pairs have no CNR (a region covering none or "
                    "all of what the model saw, or a constant map); they are left out of the CNR mean")
    return result


def grounding(checkpoint: str, data, *, out=None, encoder=None, **kwargs) -> dict:
    """``evaluate("grounding", ...)``: ``kwargs`` are the context's fields and ``GroundingOptions``'."""
    return evaluate("grounding", checkpoint, data, out=out, encoder=encoder, **kwargs)
