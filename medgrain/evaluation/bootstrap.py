"""Bootstrap 95% intervals over test images, and the paired bootstrap test of two runs.

Every number medgrain reports is a statistic of a finite test set; how far it would move on another
draw of that set is estimated by resampling the test images with replacement (Efron & Tibshirani,
"An Introduction to the Bootstrap", 1993) and taking the 2.5th and 97.5th percentiles of the
statistic over the resamples (the percentile interval, as CheXzero reports its intervals: Tiu et al.,
Nature Biomedical Engineering 2022). Two runs scored on the same images are compared on the *same*
resamples (paired bootstrap), so image difficulty cancels out of their difference.

Everything here is vectorised over resamples: a statistic receives arrays whose first axis is the
resample (``(B, n, ...)``) and returns ``(B,)``; resamples come in chunks so that memory stays
bounded by ``chunk * n`` values, not ``B * n``.

Where a class is rare, a plain resample of a small test set can hold no positive of it at all and its
AUROC is undefined; the resample is then *stratified*: images are drawn with replacement within each
stratum (e.g. positives and negatives of the rarest class), so every resample keeps the stratum sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95
# A class is rare, and the resampling stratified on it, below this share of positives (or negatives).
RARE_SHARE = 0.1

Statistic = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: ``resamples`` (B), the ``seed`` of the resampling and the ``level``."""

    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    level: float = LEVEL
    chunk: int = 100

    def __post_init__(self):
        if self.resamples < 1:
            raise ValueError(f"--bootstrap needs at least 1 resample, got {self.resamples}")
        if not 0 < self.level < 1:
            raise ValueError(f"the interval level must be in (0, 1), got {self.level}")


def resample_indices(n: int, resamples: int, seed: int, strata=None, chunk: int = 100) -> Iterator[np.ndarray]:
    """Chunks ``(b, n)`` of image indices drawn with replacement, within each stratum if given.

    ``strata`` is one integer per image; the draw keeps each stratum's size. The same ``(n, resamples,
    seed, strata)`` always gives the same indices, which is what makes a paired comparison of two
    result files possible."""
    if n == 0:
        raise ValueError("no images to resample: the test split is empty")
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else _groups(np.asarray(strata), n)
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        parts = [g[rng.integers(0, len(g), size=(b, len(g)))] for g in groups]  # one draw per stratum, not per image
        yield np.concatenate(parts, axis=1)


def _groups(strata: np.ndarray, n: int) -> list[np.ndarray]:
    if strata.shape != (n,):
        raise ValueError(f"strata must hold one value per image ({n}), got shape {strata.shape}")
    order = np.argsort(strata, kind="stable")
    _, starts = np.unique(strata[order], return_index=True)
    return np.split(order, starts[1:])


def rare_class_strata(targets, rare_share: float = RARE_SHARE) -> np.ndarray | None:
    """Strata for multi-label or multi-class targets ``(n, C)`` where some class is rare.

    Multi-class targets (one positive per row) stratify by class when any class is rare. Multi-label
    targets put each image in the stratum of the rarest rare class it is positive for (-1 if none), so
    each rare class keeps about its count of positives in every resample. ``None`` when no class is rare."""
    targets = np.asarray(targets, dtype=bool)
    if targets.ndim == 1:
        targets = targets[:, None]
    n = len(targets)
    share = targets.sum(0) / max(n, 1)
    rare = np.flatnonzero((np.minimum(share, 1 - share) < rare_share) & (share > 0) & (share < 1))
    if len(rare) == 0:
        return None
    if (targets.sum(1) == 1).all():
        return targets.argmax(1)
    strata = np.full(n, -1)
    for c in rare[np.argsort(-targets[:, rare].sum(0), kind="stable")]:  # rarest last, so it wins
        strata[targets[:, c]] = c
    return strata


def bootstrap_intervals(statistic: Statistic, data: Sequence, bootstrap: Bootstrap = Bootstrap(),
                        strata=None) -> list[list[float] | None]:
    """Intervals of several statistics at once: ``statistic`` returns (B, K), one column per statistic
    (e.g. every class's AUROC and their macro mean); each column gets ``[low, high]`` or ``None``."""
    values = _statistic_over(statistic, [np.asarray(d) for d in data], bootstrap, strata)
    values = values.reshape(len(values), -1)
    out = []
    for column in values.T:
        interval = _percentiles(column, bootstrap.level)
        out.append(None if interval is None else list(interval))
    return out


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float] | None:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _statistic_over(statistic: Statistic, data: Sequence[np.ndarray], bootstrap: Bootstrap, strata) -> np.ndarray:
    n = len(data[0])
    if any(len(d) != n for d in data):
        raise ValueError(f"every array must hold one row per image; got lengths {[len(d) for d in data]}")
    out = [statistic(*(d[idx] for d in data)) for idx in
           resample_indices(n, bootstrap.resamples, bootstrap.seed, strata, bootstrap.chunk)]
    return np.concatenate(out).astype(np.float64)


def bootstrap_interval(statistic: Statistic, data: Sequence, bootstrap: Bootstrap = Bootstrap(),
                       strata=None) -> list[float] | None:
    """``[low, high]``, the percentile interval of ``statistic`` over resamples of the images.

    ``data`` holds arrays whose first axis is the image; ``statistic(*resampled)`` gets them with a
    leading resample axis and returns one value per resample (NaN where undefined; such resamples are
    left out, and ``None`` is returned when none is defined)."""
    values = _statistic_over(statistic, [np.asarray(d) for d in data], bootstrap, strata)
    interval = _percentiles(values, bootstrap.level)
    return None if interval is None else list(interval)


def clustered_mean_interval(values, clusters, bootstrap: Bootstrap = Bootstrap()) -> list[float] | None:
    """Interval of the mean of per-item ``values`` when items come in clusters (several phrase-box
    pairs of one image): the *clusters* are resampled and each item counts as often as its cluster was
    drawn, so the interval is over test images, as the items of one image are not independent.
    NaN values are left out of each resample's mean."""
    values = np.asarray(values, dtype=np.float64)
    _, cluster = np.unique(np.asarray(clusters), return_inverse=True)
    n = int(cluster.max()) + 1 if len(cluster) else 0
    finite = np.isfinite(values)
    v = np.where(finite, values, 0.0)
    out = []
    for idx in resample_indices(n, bootstrap.resamples, bootstrap.seed, None, bootstrap.chunk):
        counts = np.zeros((len(idx), n))
        np.add.at(counts, (np.arange(len(idx))[:, None], idx), 1)  # draws of each cluster, per resample
        weights = counts[:, cluster] * finite  # (b, items)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((weights * v).sum(1) / weights.sum(1))
    interval = _percentiles(np.concatenate(out), bootstrap.level)
    return None if interval is None else list(interval)


def paired_bootstrap(statistic: Statistic, data_a: Sequence, data_b: Sequence,
                     bootstrap: Bootstrap = Bootstrap(), strata=None) -> dict:
    """The difference ``statistic(A) - statistic(B)`` of two runs on the same images (and ``a``, ``b``
    themselves), with its percentile interval and a two-sided p-value for "no difference".

    Both runs are scored on the same resamples. The p-value is twice the smaller share of resampled
    differences on either side of 0, with the +1 correction that keeps it above 0 for a finite B
    (Davison & Hinkley, "Bootstrap Methods and their Application", 1997, §4.4)."""
    data_a, data_b = [np.asarray(d) for d in data_a], [np.asarray(d) for d in data_b]
    if len(data_a[0]) != len(data_b[0]):
        raise ValueError(f"the runs scored different numbers of images ({len(data_a[0])} vs {len(data_b[0])}); "
                         "a paired comparison needs the same test set")
    k = len(data_a)

    def difference(*arrays):
        return statistic(*arrays[:k]) - statistic(*arrays[k:])

    values = _statistic_over(difference, data_a + data_b, bootstrap, strata)
    value_a = float(statistic(*(d[None] for d in data_a))[0])
    value_b = float(statistic(*(d[None] for d in data_b))[0])
    observed = {"a": value_a, "b": value_b, "difference": value_a - value_b}
    defined = values[np.isfinite(values)]
    if len(defined) == 0:
        return {**observed, "difference_ci": None, "p_value": None, "resamples": 0}
    below, above = (defined <= 0).sum(), (defined >= 0).sum()
    p_value = min(1.0, 2 * (min(below, above) + 1) / (len(defined) + 1))
    return {**observed, "difference_ci": list(_percentiles(defined, bootstrap.level)),
            "p_value": float(p_value), "resamples": int(len(defined))}


# --- statistics vectorised over resamples -------------------------------------------------------------
# Each takes arrays with a leading resample axis: scores and targets (B, n), or (B, n, C) for a macro mean.


def auroc_rows(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AUROC of each row, by the Mann-Whitney rank sum with mid-ranks for ties (what scikit-learn's
    trapezoidal ROC area equals); NaN for a row without positives or negatives."""
    targets = targets.astype(bool)
    ranks = rankdata(scores, axis=-1)
    positives = targets.sum(-1)
    negatives = targets.shape[-1] - positives
    rank_sum = np.where(targets, ranks, 0).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def average_precision_rows(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Average precision of each row as scikit-learn defines it (precision at each distinct threshold,
    weighted by the recall gained there); NaN for a row without positives."""
    order = np.argsort(-scores, axis=-1, kind="stable")
    s = np.take_along_axis(scores, order, -1)
    t = np.take_along_axis(targets.astype(bool), order, -1)
    tp = np.cumsum(t, -1)
    n = s.shape[-1]
    # all images tied at a score share the precision at the last of them: the threshold's precision
    last = np.concatenate([s[..., 1:] != s[..., :-1], np.ones(s.shape[:-1] + (1,), bool)], -1)
    end = np.where(last, np.arange(n), n - 1)
    end = np.flip(np.minimum.accumulate(np.flip(end, -1), -1), -1)
    precision = np.take_along_axis(tp, end, -1) / (end + 1)
    positives = t.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = np.where(t, precision, 0).sum(-1) / positives
    return np.where(positives > 0, ap, np.nan)


def f1_rows(predicted: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """F1 of each row of hard predictions; NaN where the row has no positive (as the point metric)."""
    predicted, targets = predicted.astype(bool), targets.astype(bool)
    tp = (predicted & targets).sum(-1)
    denominator = predicted.sum(-1) + targets.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * tp / denominator
    return np.where((targets.sum(-1) > 0) & (denominator > 0), f1, np.nan)


def macro(per_class_rows: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Statistic:
    """A macro mean over classes of a row statistic, for arrays (B, n, C): the mean over the classes
    defined in that resample (as the point metric leaves undefined classes out)."""
    def statistic(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return nanmean_rows(per_class_rows(np.moveaxis(scores, -1, -2), np.moveaxis(targets, -1, -2)))  # (B, C)
    return statistic


def nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite values; NaN for a row with none (no warning)."""
    finite = np.isfinite(values)
    count = finite.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, np.where(finite, values, 0).sum(-1) / count, np.nan)


def mean_rows(values: np.ndarray) -> np.ndarray:
    """Mean of per-image values (accuracy of 0/1 hits, Dice, recall@K of a query, CNR...), NaN ignored."""
    return nanmean_rows(values.reshape(values.shape[0], -1).astype(np.float64))


def top1_accuracy(probabilities: np.ndarray, target_index: np.ndarray) -> np.ndarray:
    return (probabilities.argmax(-1) == target_index).mean(-1)


def macro_f1_multiclass(n_classes: int) -> Statistic:
    """Macro F1 over classes of top-1 predictions, for (B, n, C) probabilities and (B, n) targets."""
    def statistic(probabilities: np.ndarray, target_index: np.ndarray) -> np.ndarray:
        eye = np.eye(n_classes, dtype=bool)
        return macro(f1_rows)(eye[probabilities.argmax(-1)], eye[target_index])
    return statistic
