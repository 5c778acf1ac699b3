"""Metrics of every downstream task, vectorised, with undefined values named instead of NaN.

A class with no positives (or no negatives) has no AUROC. Such a value is reported as ``None``,
its reason is recorded, and the macro mean is taken over the classes where it is defined, so that
a missing class never turns the headline number into NaN or silently into 0.5.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from medgrain.evaluation.bootstrap import (
    Bootstrap,
    auroc_rows,
    average_precision_rows,
    bootstrap_intervals,
    f1_rows,
    nanmean_rows,
    rare_class_strata,
)

# MGCA reports detection mAP averaged over these IoU thresholds (Wang et al., NeurIPS 2022, arXiv:2210.06044; ``mgca_detector.py``).
MGCA_IOU_THRESHOLDS = tuple(round(0.40 + 0.05 * i, 2) for i in range(8))
COCO_IOU_THRESHOLDS = tuple(round(0.50 + 0.05 * i, 2) for i in range(10))


def _mean(values) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _undefined_reason(positives: int, negatives: int) -> str | None:
    if positives == 0:
        return "no positives"
    if negatives == 0:
        return "no negatives"
    return None


def f1_thresholds(scores, targets) -> np.ndarray:
    """Per class, the score threshold that maximises F1 (chosen on a validation split).

    A class without positives gets 0.5: no threshold can be learned from it."""
    scores, targets = _as_numpy(scores).astype(np.float64), _as_numpy(targets).astype(bool)
    thresholds = np.full(scores.shape[1], 0.5)
    for c in range(scores.shape[1]):
        if not targets[:, c].any():
            continue
        precision, recall, cuts = precision_recall_curve(targets[:, c], scores[:, c])
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        thresholds[c] = cuts[int(np.argmax(f1[:-1]))]  # the last point (recall 0) has no threshold
    return thresholds


CLASSIFICATION_METRICS = ("auroc", "ap", "f1", "accuracy")


def _attach_intervals(per_class: dict, macro: dict, names: list[str], intervals: list) -> None:
    """``<metric>_ci`` beside every per-class and macro metric, from columns ordered metric by metric
    (every class, then the macro means in the same metric order)."""
    n = len(names)
    for k, metric in enumerate(CLASSIFICATION_METRICS):
        for c, name in enumerate(names):
            if metric in per_class[name]:
                per_class[name][f"{metric}_ci"] = intervals[k * n + c]
        macro[f"{metric}_ci"] = intervals[len(CLASSIFICATION_METRICS) * n + k]


def _per_class_statistics(scores, targets, predicted) -> np.ndarray:
    """(B, 4C + 4): AUROC, AP, F1, accuracy of every class, then their macro means; arrays (B, C, n)."""
    per_metric = [auroc_rows(scores, targets), average_precision_rows(scores, targets), f1_rows(predicted, targets),
                  (predicted == targets).mean(-1)]
    return np.concatenate(per_metric + [nanmean_rows(v)[:, None] for v in per_metric], axis=1)


def multilabel_intervals(scores, targets, thresholds, bootstrap: Bootstrap) -> list:
    """Bootstrap intervals (over images, stratified on rare findings) of every ``multilabel_metrics`` value."""
    def statistic(s, t):
        s, t = np.moveaxis(s, -1, -2), np.moveaxis(t, -1, -2)
        return _per_class_statistics(s, t, s >= thresholds[None, :, None])

    return bootstrap_intervals(statistic, [scores, targets], bootstrap, rare_class_strata(targets))


def multiclass_intervals(probabilities, target_index, n_classes: int, bootstrap: Bootstrap) -> list:
    """Bootstrap intervals (stratified by class where one is rare) of every ``multiclass_metrics`` value;
    the last macro column is top-1 accuracy."""
    eye = np.eye(n_classes, dtype=bool)

    def statistic(p, y):
        t = np.moveaxis(eye[y], -1, -2)
        predicted = np.moveaxis(eye[p.argmax(-1)], -1, -2)
        out = _per_class_statistics(np.moveaxis(p, -1, -2), t, predicted)
        out[:, -1] = (p.argmax(-1) == y).mean(-1)
        return out

    return bootstrap_intervals(statistic, [probabilities, target_index], bootstrap,
                               rare_class_strata(eye[target_index]))


def multilabel_metrics(scores, targets, names: list[str], thresholds=None, bootstrap: Bootstrap | None = None) -> dict:
    """AUROC, AP, F1 and accuracy per finding and their macro means, for multi-label scores.

    ``thresholds`` (one per class, e.g. from :func:`f1_thresholds` on the validation split) decide
    F1 and accuracy; without them 0.5 is used. Undefined values are ``None`` and named in
    ``excluded`` with their reason. With ``bootstrap`` each value gets ``<metric>_ci``, its 95%
    interval over test images."""
    scores, targets = _as_numpy(scores).astype(np.float64), _as_numpy(targets).astype(bool)
    if scores.shape != targets.shape or scores.shape[1] != len(names):
        raise ValueError(f"scores {scores.shape}, targets {targets.shape} and {len(names)} names disagree")
    if len(scores) == 0:
        raise ValueError("no samples to score: the split is empty")
    thresholds = np.full(len(names), 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    predicted = scores >= thresholds[None, :]
    positives, negatives = targets.sum(0), (~targets).sum(0)
    tp = (predicted & targets).sum(0)
    fp = (predicted & ~targets).sum(0)
    fn = (~predicted & targets).sum(0)
    accuracy = (predicted == targets).mean(0)

    per_class, excluded = {}, {}
    for c, name in enumerate(names):
        reason = _undefined_reason(int(positives[c]), int(negatives[c]))
        auroc = None if reason else float(roc_auc_score(targets[:, c], scores[:, c]))
        ap = None if positives[c] == 0 else float(average_precision_score(targets[:, c], scores[:, c]))
        # F1 of a class that is absent and never predicted is 0/0; report it as undefined.
        f1_denominator = 2 * tp[c] + fp[c] + fn[c]
        f1 = None if f1_denominator == 0 or positives[c] == 0 else float(2 * tp[c] / f1_denominator)
        if reason:
            excluded[name] = reason
        per_class[name] = {
            "auroc": auroc, "ap": ap, "f1": f1, "accuracy": float(accuracy[c]),
            "threshold": float(thresholds[c]), "positives": int(positives[c]), "negatives": int(negatives[c]),
        }
    macro = {m: _mean(v[m] for v in per_class.values()) for m in ("auroc", "ap", "f1", "accuracy")}
    if bootstrap is not None:
        _attach_intervals(per_class, macro, names, multilabel_intervals(scores, targets, thresholds, bootstrap))
    return {"macro": macro, "per_class": per_class, "excluded": excluded}


def multiclass_metrics(probabilities, target_index, names: list[str], bootstrap: Bootstrap | None = None) -> dict:
    """Top-1 accuracy, and one-vs-rest AUROC, AP and F1 per class with their macro means
    (MGLL's protocol for multi-class data, Li et al., ICLR 2026, arXiv:2511.15943); ``<metric>_ci`` with ``bootstrap``."""
    probabilities = _as_numpy(probabilities).astype(np.float64)
    target_index = _as_numpy(target_index).astype(np.int64)
    if len(probabilities) == 0:
        raise ValueError("no samples to score: the split is empty")
    n_classes = len(names)
    targets = np.eye(n_classes, dtype=bool)[target_index]
    predicted = np.eye(n_classes, dtype=bool)[probabilities.argmax(1)]
    positives, negatives = targets.sum(0), (~targets).sum(0)
    tp, fp, fn = (predicted & targets).sum(0), (predicted & ~targets).sum(0), (~predicted & targets).sum(0)

    per_class, excluded = {}, {}
    for c, name in enumerate(names):
        reason = _undefined_reason(int(positives[c]), int(negatives[c]))
        f1_denominator = 2 * tp[c] + fp[c] + fn[c]
        if reason:
            excluded[name] = reason
        per_class[name] = {
            "auroc": None if reason else float(roc_auc_score(targets[:, c], probabilities[:, c])),
            "ap": None if positives[c] == 0 else float(average_precision_score(targets[:, c], probabilities[:, c])),
            "f1": None if positives[c] == 0 or f1_denominator == 0 else float(2 * tp[c] / f1_denominator),
            "positives": int(positives[c]), "negatives": int(negatives[c]),
        }
    macro = {m: _mean(v[m] for v in per_class.values()) for m in ("auroc", "ap", "f1")}
    macro["accuracy"] = float((probabilities.argmax(1) == target_index).mean())
    if bootstrap is not None:
        intervals = multiclass_intervals(probabilities, target_index, n_classes, bootstrap)
        _attach_intervals(per_class, macro, names, intervals)
    return {"macro": macro, "per_class": per_class, "excluded": excluded}


def classification_metrics(scores, labels, names: list[str], multiclass: bool,
                           valid_scores=None, valid_labels=None, bootstrap: Bootstrap | None = None) -> dict:
    """The metrics of a classifier's test scores: top-1 and one-vs-rest for multi-class data; per
    finding, with F1 thresholds chosen on the validation scores when given, for multi-label data."""
    if multiclass:
        return multiclass_metrics(scores, _as_numpy(labels).argmax(1), names, bootstrap)
    thresholds = None if valid_scores is None else f1_thresholds(valid_scores, valid_labels)
    return multilabel_metrics(scores, labels, names, thresholds, bootstrap)


# ---------------------------------------------------------------------------------------- retrieval


def retrieval_ranks(similarity: torch.Tensor, query_keys, gallery_keys, chunk: int = 4096) -> torch.Tensor:
    """1-based rank of the first correct gallery item for every query.

    An item is correct when its key equals the query's key, so duplicates of a text all count as
    hits. Ties with a wrong item count against the query: a collapsed encoder that scores every
    pair alike gets the worst rank, not the best."""
    query_keys = torch.as_tensor(query_keys)
    gallery_keys = torch.as_tensor(gallery_keys)
    if similarity.shape != (len(query_keys), len(gallery_keys)):
        raise ValueError(f"similarity {tuple(similarity.shape)} does not match {len(query_keys)} queries "
                         f"and {len(gallery_keys)} gallery items")
    ranks = []
    for start in range(0, len(query_keys), chunk):  # chunks of queries bound the memory of the masks
        sim = similarity[start:start + chunk].float()
        correct = query_keys[start:start + chunk, None] == gallery_keys[None, :]
        if not correct.any(1).all():
            raise ValueError("a query has no correct item in the gallery")
        best_correct = sim.masked_fill(~correct, float("-inf")).amax(1, keepdim=True)
        ranks.append(((sim >= best_correct) & ~correct).sum(1) + 1)
    return torch.cat(ranks)


def recall_metrics(ranks: torch.Tensor, ks=(1, 5, 10), bootstrap: Bootstrap | None = None) -> dict:
    """Recall@K (share of queries whose first correct item ranks within K), median and mean rank;
    ``R@K_ci`` over queries with ``bootstrap``."""
    ranks = ranks.double()
    out = {f"R@{k}": float((ranks <= k).double().mean()) for k in ks}
    if bootstrap is not None:
        hits = (ranks.numpy()[:, None] <= np.asarray(ks)[None, :]).astype(np.float64)  # (n, K)
        for k, interval in zip(ks, bootstrap_intervals(lambda h: h.mean(-2), [hits], bootstrap)):
            out[f"R@{k}_ci"] = interval
    out["median_rank"] = float(np.median(ranks.numpy()))
    out["mean_rank"] = float(ranks.mean())
    return out


def precision_at_k(similarity: torch.Tensor, query_classes, gallery_classes, names: list[str], ks=(1, 5, 10),
                   bootstrap: Bootstrap | None = None) -> dict:
    """Retrieval precision by class (GLoRIA's CheXpert 5x200 protocol, Huang et al., ICCV 2021): for each
    query, the share of its top-K gallery items whose class is the query's; ``P@K`` averaged over queries
    and per class, with ``P@K_ci`` over queries (stratified by class) given ``bootstrap``."""
    query_classes = torch.as_tensor(query_classes)
    gallery_classes = torch.as_tensor(gallery_classes)
    k_max = min(max(ks), similarity.shape[1])
    top = similarity.float().topk(k_max, dim=1).indices
    hits = (gallery_classes[top] == query_classes[:, None]).double()  # (n, k_max)
    per_query = np.stack([hits[:, :min(k, k_max)].mean(1).numpy() for k in ks], 1)  # (n, K)
    classes = query_classes.numpy()
    out: dict = {f"P@{k}": float(per_query[:, i].mean()) for i, k in enumerate(ks)}
    out["per_class"] = {name: {f"P@{k}": float(per_query[classes == c, i].mean()) if (classes == c).any() else None
                               for i, k in enumerate(ks)} for c, name in enumerate(names)}
    if bootstrap is not None:
        intervals = bootstrap_intervals(lambda v: v.mean(-2), [per_query], bootstrap, classes)
        out.update({f"P@{k}_ci": ci for k, ci in zip(ks, intervals)})
    return out


# ------------------------------------------------------------------------------------- segmentation


def dice_per_image(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice of each image (N, H, W) bool; an empty mask predicted empty scores 1
    (MGCA's convention, Wang et al., NeurIPS 2022, arXiv:2210.06044; ``mgca_segmenter.py``)."""
    predicted, target = predicted.flatten(1).bool(), target.flatten(1).bool()
    intersection = (predicted & target).sum(1).double()
    total = predicted.sum(1).double() + target.sum(1).double()
    return torch.where(total == 0, torch.ones_like(total), 2 * intersection / total.clamp_min(1))


# ---------------------------------------------------------------------------------------- detection


def require_coco_evaluation() -> None:
    """torchmetrics' mAP runs COCO's own evaluation code, from pycocotools."""
    import importlib.util

    if importlib.util.find_spec("pycocotools") is None:
        raise ModuleNotFoundError("detection mAP uses torchmetrics' COCO evaluation, which needs pycocotools: "
                                  "pip install pycocotools")


def detection_map(predictions: list[dict], targets: list[dict]) -> dict:
    """mAP averaged over IoU 0.40..0.75 (MGCA's number) and COCO's mAP@[0.50:0.95], mAP@0.5.

    ``predictions``: per image ``boxes`` (B, 4) xyxy, ``scores`` (B,), ``labels`` (B,);
    ``targets``: per image ``boxes`` and ``labels``. torchmetrics' COCO evaluation does the
    matching; it needs pycocotools."""
    from torchmetrics.detection import MeanAveragePrecision

    require_coco_evaluation()
    mgca = MeanAveragePrecision(iou_type="bbox", iou_thresholds=list(MGCA_IOU_THRESHOLDS))
    coco = MeanAveragePrecision(iou_type="bbox", iou_thresholds=list(COCO_IOU_THRESHOLDS))
    if not any(len(t["boxes"]) for t in targets):
        raise ValueError("no ground-truth boxes in this split: mAP is undefined")
    mgca.update(predictions, targets)
    coco.update(predictions, targets)
    a, b = mgca.compute(), coco.compute()

    def value(x) -> float | None:  # torchmetrics marks "undefined" as -1
        x = float(x)
        return None if x < 0 else x

    return {"map_40_75": value(a["map"]), "map_coco": value(b["map"]), "map_50": value(b["map_50"]),
            "map_75": value(b["map_75"]), "mar_100": value(b["mar_100"])}


# ------------------------------------------------------------------------------------------- seeds


def summarise_runs(runs: list[dict]) -> dict:
    """Mean, standard deviation (ddof=1; 0 for one run) and the values of every numeric leaf of the
    per-seed results, keeping their nesting: ``{"macro": {"auroc": {"mean", "std", "values"}}}``.
    A value that is undefined in some runs is averaged over the runs where it is defined.

    A bootstrap interval (``<metric>_ci``) describes one run's test set, not the spread over seeds: of a
    single run it is kept as it is; of several, each run's interval is listed under ``values``."""
    def walk(items: list, key: str = ""):
        first = next((x for x in items if x is not None), None)
        if key.endswith("_ci"):
            return items[0] if len(items) == 1 else {"values": items}
        if isinstance(first, dict):
            keys = list(dict.fromkeys(k for x in items if x for k in x))
            return {k: walk([x.get(k) if x else None for x in items], k) for k in keys}
        if isinstance(first, bool) or not isinstance(first, (int, float)):
            return first
        values = [float(x) for x in items if x is not None]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return {"mean": float(np.mean(values)), "std": std, "values": [None if x is None else float(x) for x in items]}

    return walk(runs)


# ---------------------------------------------------------------------------------------- grounding
# Phrase grounding as MS-CXR scores it (Boecking et al., "Making the Most of Text Semantics to Improve
# Biomedical Vision-Language Processing", ECCV 2022, arXiv 2204.09817, §4.3 and hi-ml-multimodal): the
# phrase-to-patch cosine similarity map, brought to the image's size, against the phrase's box(es).

# mIoU thresholds of the similarity map (cosine similarities, in [-1, 1]), as BioViL averages them.
GROUNDING_IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


def box_region(boxes, height: int, width: int) -> torch.Tensor:
    """(H, W) bool: the union of ``boxes`` ([x0, y0, x1, y1] pixel edges, docs/manifest.md) of one phrase.

    A box covers the pixels whose centres lie inside it, so [5, 7, 6, 8] is the one pixel (row 7, col 5)."""
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    cols = torch.arange(width, dtype=torch.float64) + 0.5
    rows = torch.arange(height, dtype=torch.float64) + 0.5
    inside_x = (cols[None, :] > boxes[:, 0:1]) & (cols[None, :] < boxes[:, 2:3])  # (K, W)
    inside_y = (rows[None, :] > boxes[:, 1:2]) & (rows[None, :] < boxes[:, 3:4])  # (K, H)
    return (inside_y[:, :, None] & inside_x[:, None, :]).any(0)


def _region_moments(values: torch.Tensor, region: torch.Tensor):
    weights = region.double()
    count = weights.sum(1)
    mean = (values * weights).sum(1) / count.clamp_min(1)
    variance = (((values - mean[:, None]) ** 2) * weights).sum(1) / count.clamp_min(1)
    return mean, variance, count


def contrast_to_noise(similarity: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """CNR of each map (N, H, W) against its ground-truth region (N, H, W) bool:
    ``|mean_in - mean_out| / sqrt(var_in + var_out)`` with population variances (BioViL's definition).

    NaN where the region is empty or covers the whole image (nothing to contrast), or where both
    variances are 0 (a map constant inside and outside has no noise to measure contrast against)."""
    values = similarity.flatten(1).double()
    region = region.flatten(1).bool()
    mean_in, var_in, n_in = _region_moments(values, region)
    mean_out, var_out, n_out = _region_moments(values, ~region)
    cnr = (mean_in - mean_out).abs() / (var_in + var_out).sqrt()
    return torch.where((n_in > 0) & (n_out > 0) & torch.isfinite(cnr), cnr, torch.full_like(cnr, float("nan")))


def grounding_iou(similarity: torch.Tensor, region: torch.Tensor,
                  thresholds=GROUNDING_IOU_THRESHOLDS) -> torch.Tensor:
    """Mean over ``thresholds`` of the IoU between ``similarity > t`` and the region, per map (N,).

    An empty region is undefined (NaN); a threshold at which neither the map nor the region has a
    pixel cannot happen, because the region is not empty."""
    values = similarity.flatten(1).double()
    region = region.flatten(1).bool()
    t = torch.as_tensor(thresholds, dtype=torch.float64)
    predicted = values[:, None, :] > t[None, :, None]  # (N, T, P)
    intersection = (predicted & region[:, None, :]).sum(-1).double()
    union = (predicted | region[:, None, :]).sum(-1).double()
    iou = (intersection / union.clamp_min(1)).mean(1)
    return torch.where(region.any(1), iou, torch.full_like(iou, float("nan")))


# ------------------------------------------------------------------------------------ detection intervals
# COCO's evaluation matches each image's detections to its boxes once; resampling images only changes how
# often each image's matched detections count. So pycocotools matches (``COCOeval.evaluate``), and the
# accumulation (precision at 101 recall points, averaged) is redone with per-image weights for every
# resample at once: no loop over images or resamples, the same numbers as COCO's on a resampled list.

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _coco_matches(predictions: list[dict], targets: list[dict], iou_thresholds) -> list[dict]:
    """Per category: detections' scores, images, matched-or-not per IoU threshold, ignored flags, and
    each image's count of boxes (pycocotools' ``evalImgs`` for all areas, 100 detections per image)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    categories = sorted({int(c) for t in targets for c in t["labels"]} | {int(c) for p in predictions for c in p["labels"]})
    gt = COCO()
    gt.dataset = {"images": [{"id": i} for i in range(len(targets))], "categories": [{"id": c} for c in categories],
                  "annotations": [{"id": k + 1, "image_id": i, "category_id": int(c), "bbox": xywh(b), "iscrowd": 0,
                                   "area": xywh(b)[2] * xywh(b)[3]}
                                  for k, (i, b, c) in enumerate((i, b, c) for i, t in enumerate(targets)
                                                                for b, c in zip(t["boxes"], t["labels"]))]}
    detections = [{"image_id": i, "category_id": int(c), "bbox": xywh(b), "score": float(s)}
                  for i, p in enumerate(predictions) for b, s, c in zip(p["boxes"], p["scores"], p["labels"])]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt.createIndex()
        dt = gt.loadRes(detections) if detections else COCO()
        if not detections:
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
        evaluator.evaluate()
    n_images, n_areas = len(targets), len(evaluator.params.areaRng)
    out = []
    for k in range(len(categories)):
        scores, images, matched, ignored, boxes = [], [], [], [], np.zeros(n_images)
        for i in range(n_images):
            e = evaluator.evalImgs[k * n_areas * n_images + i]  # area range 0 is 'all'
            if e is None:
                continue
            d = len(e["dtScores"][:100])
            scores.append(np.asarray(e["dtScores"][:100]))
            images.append(np.full(d, i))
            matched.append(np.asarray(e["dtMatches"])[:, :100] > 0)
            ignored.append(np.asarray(e["dtIgnore"])[:, :100].astype(bool))
            boxes[i] = int((np.asarray(e["gtIgnore"]) == 0).sum())
        t = len(iou_thresholds)
        out.append({"scores": np.concatenate(scores) if scores else np.zeros(0),
                    "images": np.concatenate(images) if images else np.zeros(0, int),
                    "matched": np.concatenate(matched, 1) if matched else np.zeros((t, 0), bool),
                    "ignored": np.concatenate(ignored, 1) if ignored else np.zeros((t, 0), bool), "boxes": boxes})
    return out


def _searchsorted_rows(rows: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``np.searchsorted(row, points, side="left")`` for every row of non-decreasing values in [0, 1], in
    one call: row k is shifted by 2k, so the flattened rows stay sorted."""
    shape, width = rows.shape[:-1], rows.shape[-1]
    offsets = 2.0 * np.arange(int(np.prod(shape))).reshape(shape)
    flat = (rows + offsets[..., None]).ravel()
    found = np.searchsorted(flat, (points + offsets[..., None]).ravel(), side="left").reshape(*shape, len(points))
    return found - (offsets[..., None] / 2).astype(np.int64) * width


def _weighted_ap(category: dict, weights: np.ndarray) -> np.ndarray:
    """(b, T) COCO average precision of one category for image weights (b, I); NaN without boxes."""
    order = np.argsort(-category["scores"], kind="mergesort")
    w = weights[:, category["images"][order]][:, None, :]  # (b, 1, D)
    tp = (category["matched"] & ~category["ignored"])[:, order][None]
    fp = (~category["matched"] & ~category["ignored"])[:, order][None]
    tp_sum, fp_sum = np.cumsum(w * tp, -1), np.cumsum(w * fp, -1)  # (b, T, D)
    positives = weights @ category["boxes"]  # (b,)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp_sum / positives[:, None, None]
        precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    envelope = np.flip(np.maximum.accumulate(np.flip(precision, -1), -1), -1)
    first = _searchsorted_rows(np.nan_to_num(recall), RECALL_POINTS)  # (b, T, R)
    padded = np.concatenate([envelope, np.zeros(envelope.shape[:-1] + (1,))], -1)
    ap = np.take_along_axis(padded, first, -1).mean(-1)  # (b, T); beyond the last recall reached: 0
    return np.where(positives[:, None] > 0, ap, np.nan)


def detection_map_interval(predictions: list[dict], targets: list[dict], bootstrap: Bootstrap,
                           iou_thresholds=MGCA_IOU_THRESHOLDS) -> tuple[float | None, list[float] | None]:
    """mAP over ``iou_thresholds`` (mean over thresholds and categories with boxes) and its bootstrap
    interval over test images."""
    from medgrain.evaluation.bootstrap import resample_indices

    categories = _coco_matches(predictions, targets, iou_thresholds)
    n = len(targets)

    def statistic(weights: np.ndarray) -> np.ndarray:
        aps = np.stack([_weighted_ap(c, weights) for c in categories], -1) if categories else np.full((len(weights), 1, 1), np.nan)
        return nanmean_rows(aps.reshape(len(weights), -1))

    point = float(statistic(np.ones((1, n)))[0]) if n else None
    detections = sum(len(c["scores"]) for c in categories)
    chunk = max(1, min(bootstrap.chunk, int(2e7 // max(1, len(iou_thresholds) * detections))))  # bounds memory
    values = []
    for idx in resample_indices(n, bootstrap.resamples, bootstrap.seed, None, chunk):
        counts = np.zeros((len(idx), n))
        np.add.at(counts, (np.arange(len(idx))[:, None], idx), 1)
        values.append(statistic(counts))
    values = np.concatenate(values)
    values = values[np.isfinite(values)]
    if not len(values):
        return point, None
    tail = (1 - bootstrap.level) / 2 * 100
    return point, [float(v) for v in np.percentile(values, [tail, 100 - tail])]
