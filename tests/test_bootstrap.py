"""Bootstrap intervals and the paired test: the vectorised statistics against scikit-learn, the
resampling's strata, coverage of the truth at about the nominal rate on simulated scores, and the
paired test's answers; grounding metrics (CNR, mIoU) against direct loops on hand-made maps."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from medgrain.evaluation.bootstrap import (
    Bootstrap,
    auroc_rows,
    average_precision_rows,
    bootstrap_interval,
    f1_rows,
    macro,
    macro_f1_multiclass,
    mean_rows,
    paired_bootstrap,
    rare_class_strata,
    resample_indices,
    top1_accuracy,
)
from medgrain.evaluation.metrics import box_region, contrast_to_noise, grounding_iou


def _rows(seed=0, b=20, n=30, ties=True):
    g = np.random.default_rng(seed)
    targets = g.random((b, n)) < 0.4
    scores = targets * 0.5 + g.random((b, n))
    if ties:
        scores = np.round(scores, 1)  # many ties, as duplicated images in a resample have
    return scores, targets


def test_row_statistics_match_sklearn_with_ties():
    scores, targets = _rows()
    auc, ap, f1 = auroc_rows(scores, targets), average_precision_rows(scores, targets), f1_rows(scores > 0.7, targets)
    for i in range(len(scores)):
        assert auc[i] == pytest.approx(roc_auc_score(targets[i], scores[i]))
        assert ap[i] == pytest.approx(average_precision_score(targets[i], scores[i]))
        assert f1[i] == pytest.approx(f1_score(targets[i], scores[i] > 0.7))


def test_undefined_rows_are_nan():
    scores = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    targets = np.array([[0, 0, 0], [1, 1, 1]], bool)
    assert np.isnan(auroc_rows(scores, targets)).all()
    assert np.isnan(average_precision_rows(scores, targets)[0])
    assert average_precision_rows(scores, targets)[1] == pytest.approx(1.0)
    assert np.isnan(f1_rows(scores > 0.15, targets)[0])


def test_macro_and_multiclass_statistics_match_sklearn():
    g = np.random.default_rng(1)
    targets = g.random((4, 40, 3)) < 0.3
    scores = targets + g.random((4, 40, 3))
    auc = macro(auroc_rows)(scores, targets)
    for i in range(4):
        assert auc[i] == pytest.approx(roc_auc_score(targets[i], scores[i], average="macro"))
    index = g.integers(0, 3, (4, 40))
    probabilities = np.eye(3)[index] * 0.4 + g.random((4, 40, 3))
    f1 = macro_f1_multiclass(3)(probabilities, index)
    accuracy = top1_accuracy(probabilities, index)
    for i in range(4):
        assert f1[i] == pytest.approx(f1_score(index[i], probabilities[i].argmax(1), average="macro"))
        assert accuracy[i] == pytest.approx((probabilities[i].argmax(1) == index[i]).mean())


def test_resampling_is_seeded_and_keeps_strata_sizes():
    strata = np.array([0] * 5 + [1] * 95)
    a = np.concatenate(list(resample_indices(100, 250, seed=3, strata=strata, chunk=64)))
    b = np.concatenate(list(resample_indices(100, 250, seed=3, strata=strata, chunk=64)))
    assert a.shape == (250, 100)
    # same seed and chunking, same draw; every resample holds exactly 5 images of stratum 0
    np.testing.assert_array_equal(a, b)
    assert ((strata[a] == 0).sum(1) == 5).all()
    c = np.concatenate(list(resample_indices(100, 250, seed=4, strata=strata, chunk=64)))
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="one value per image"):
        next(resample_indices(100, 5, 0, strata=strata[:50]))
    with pytest.raises(ValueError, match="empty"):
        next(resample_indices(0, 5, 0))


def test_rare_class_strata():
    targets = np.zeros((100, 3), bool)
    targets[:50, 0] = True   # common
    targets[:5, 1] = True    # rare
    targets[90:, 2] = True   # rare, 10 positives... share 0.1 is not below 0.1
    strata = rare_class_strata(targets)
    assert (strata[:5] == 1).all() and (strata[5:] == -1).all()
    assert rare_class_strata(np.ones((10, 1), bool)) is None
    assert rare_class_strata(targets[:, :1]) is None
    one_hot = np.eye(3, dtype=bool)[[0] * 95 + [1] * 3 + [2] * 2]
    np.testing.assert_array_equal(rare_class_strata(one_hot), one_hot.argmax(1))


def test_auroc_interval_covers_the_truth_at_about_the_nominal_rate():
    # positives ~ N(d, 1), negatives ~ N(0, 1): the population AUROC is Phi(d / sqrt(2))
    d, n, runs = 1.0, 120, 120
    truth = norm.cdf(d / math.sqrt(2))
    g = np.random.default_rng(0)
    covered = 0
    for run in range(runs):
        targets = np.arange(n) < n // 3
        scores = g.normal(size=n) + d * targets
        low, high = bootstrap_interval(auroc_rows, [scores, targets], Bootstrap(resamples=300, seed=run),
                                       strata=targets.astype(int))
        covered += low <= truth <= high
    assert 0.88 <= covered / runs <= 0.995


def test_accuracy_interval_covers_the_truth_and_shrinks_with_n():
    p, runs = 0.7, 150
    g = np.random.default_rng(1)
    covered = 0
    for run in range(runs):
        hits = g.random(100) < p
        low, high = bootstrap_interval(mean_rows, [hits.astype(float)], Bootstrap(resamples=300, seed=run))
        covered += low <= p <= high
    assert 0.88 <= covered / runs <= 0.99
    small = bootstrap_interval(mean_rows, [(g.random(50) < p).astype(float)], Bootstrap(200))
    large = bootstrap_interval(mean_rows, [(g.random(5000) < p).astype(float)], Bootstrap(200))
    assert large[1] - large[0] < (small[1] - small[0]) / 4


def test_paired_bootstrap():
    g = np.random.default_rng(2)
    n = 300
    targets = g.random(n) < 0.4
    base = g.normal(size=n)
    strong, weak = base + 2.0 * targets, base + 0.3 * targets
    same = paired_bootstrap(auroc_rows, [strong, targets], [strong, targets], Bootstrap(300))
    assert same["difference"] == 0 and same["difference_ci"] == [0.0, 0.0] and same["p_value"] == 1.0
    better = paired_bootstrap(auroc_rows, [strong, targets], [weak, targets], Bootstrap(300))
    assert better["difference"] == pytest.approx(roc_auc_score(targets, strong) - roc_auc_score(targets, weak))
    assert better["difference_ci"][0] > 0 and better["p_value"] < 0.01
    worse = paired_bootstrap(auroc_rows, [weak, targets], [strong, targets], Bootstrap(300))
    assert worse["difference_ci"][1] < 0 and worse["p_value"] < 0.01
    with pytest.raises(ValueError, match="same test set"):
        paired_bootstrap(auroc_rows, [strong, targets], [weak[:10], targets[:10]])


def test_paired_bootstrap_false_positive_rate_under_the_null():
    g = np.random.default_rng(3)
    rejected, runs = 0, 80
    for run in range(runs):
        targets = g.random(150) < 0.5
        a = g.normal(size=150) + targets  # two models of equal quality, independent errors
        b = g.normal(size=150) + targets
        rejected += paired_bootstrap(auroc_rows, [a, targets], [b, targets], Bootstrap(200, seed=run))["p_value"] < 0.05
    assert rejected / runs <= 0.15


# --- grounding -------------------------------------------------------------------------------------


def _cnr_loop(sim, region):
    inside = [float(sim[i, j]) for i in range(sim.shape[0]) for j in range(sim.shape[1]) if region[i, j]]
    outside = [float(sim[i, j]) for i in range(sim.shape[0]) for j in range(sim.shape[1]) if not region[i, j]]
    mi, mo = sum(inside) / len(inside), sum(outside) / len(outside)
    vi = sum((v - mi) ** 2 for v in inside) / len(inside)
    vo = sum((v - mo) ** 2 for v in outside) / len(outside)
    return abs(mi - mo) / math.sqrt(vi + vo)


def _miou_loop(sim, region, thresholds=(0.1, 0.2, 0.3, 0.4, 0.5)):
    ious = []
    for t in thresholds:
        inter = union = 0
        for i in range(sim.shape[0]):
            for j in range(sim.shape[1]):
                p, r = float(sim[i, j]) > t, bool(region[i, j])
                inter += p and r
                union += p or r
        ious.append(inter / union)
    return sum(ious) / len(ious)


def test_box_region_pixel_edges():
    region = box_region([[1, 2, 3, 4]], 6, 5)
    expected = torch.zeros(6, 5, dtype=torch.bool)
    expected[2:4, 1:3] = True
    assert torch.equal(region, expected)
    two = box_region([[0, 0, 1, 1], [4, 5, 5, 6]], 6, 5)
    assert two.sum() == 2 and two[0, 0] and two[5, 4]


def test_cnr_and_miou_on_hand_made_maps():
    # a map that is 0.6 inside a 2x2 box and 0 elsewhere: IoU 1 at every threshold below 0.6;
    # inside and outside are constant, so there is no noise and CNR is undefined
    sim = torch.zeros(1, 4, 4, dtype=torch.float64)
    sim[0, 1:3, 1:3] = 0.6
    region = box_region([[1, 1, 3, 3]], 4, 4)[None]
    assert grounding_iou(sim, region).item() == pytest.approx(1.0)
    assert torch.isnan(contrast_to_noise(sim, region)).all()
    # hand computed: inside [0.4, 0.6, 0.6, 0.6] mean .55 var .0075; outside 12 values: 0 x 11 and 0.2
    sim[0, 1, 1] = 0.4
    sim[0, 0, 0] = 0.2
    mean_out = 0.2 / 12
    var_out = (0.2 - mean_out) ** 2 / 12 + 11 * mean_out ** 2 / 12
    expected = (0.55 - mean_out) / math.sqrt(0.0075 + var_out)
    assert contrast_to_noise(sim, region).item() == pytest.approx(expected)
    # IoU per threshold: t=.1,.2 -> {4 inside, (0,0) is 0.2 > .1 only} ; .1: 4/5, .2: 4/4, .3: 4/4, .4: 3/4, .5: 3/4
    assert grounding_iou(sim, region).item() == pytest.approx((0.8 + 1 + 1 + 0.75 + 0.75) / 5)


def test_cnr_and_miou_match_direct_loops_on_random_maps():
    g = torch.Generator().manual_seed(0)
    sims = torch.rand(5, 9, 7, generator=g, dtype=torch.float64) * 2 - 1
    boxes = [[0, 0, 3, 3], [2, 1, 7, 4], [1, 5, 2, 9], [[0, 0, 2, 2], [5, 6, 7, 9]], [3, 3, 6, 8]]
    regions = torch.stack([box_region(b, 9, 7) for b in boxes])
    cnr, miou = contrast_to_noise(sims, regions), grounding_iou(sims, regions)
    for i in range(5):
        assert cnr[i].item() == pytest.approx(_cnr_loop(sims[i], regions[i]))
        assert miou[i].item() == pytest.approx(_miou_loop(sims[i], regions[i]))


def test_empty_or_full_region_is_undefined():
    sim = torch.rand(2, 3, 3, dtype=torch.float64)
    regions = torch.stack([torch.zeros(3, 3, dtype=torch.bool), torch.ones(3, 3, dtype=torch.bool)])
    assert torch.isnan(contrast_to_noise(sim, regions)).all()
    assert torch.isnan(grounding_iou(sim, regions)[0])


# --- intervals inside the metric functions, against a loop over the same resamples ------------------------


def _loop_interval(values):
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)])
    return list(np.percentile(values, [2.5, 97.5]))


def test_multilabel_metric_intervals_match_a_loop_over_the_same_resamples():
    from medgrain.evaluation.metrics import multilabel_metrics

    g = np.random.default_rng(5)
    targets = g.random((80, 3)) < np.array([0.5, 0.3, 0.06])  # the third finding is rare: stratified
    scores = targets * 0.4 + g.random((80, 3))
    thresholds = np.array([0.6, 0.7, 0.8])
    spec = Bootstrap(resamples=150, seed=7, chunk=40)
    out = multilabel_metrics(scores, targets, ["a", "b", "c"], thresholds, bootstrap=spec)
    strata = rare_class_strata(targets)
    assert strata is not None
    idx = np.concatenate(list(resample_indices(80, 150, 7, strata, chunk=40)))
    macro_auc, macro_f1, auc_c, acc_b = [], [], [], []
    for rows in idx:  # the direct reference: scikit-learn on every resample
        s, t = scores[rows], targets[rows]
        aucs = [roc_auc_score(t[:, c], s[:, c]) for c in range(3) if 0 < t[:, c].sum() < len(t)]
        macro_auc.append(np.mean(aucs))
        f1s = [f1_score(t[:, c], s[:, c] >= thresholds[c]) for c in range(3) if t[:, c].any()]
        macro_f1.append(np.mean(f1s))
        auc_c.append(roc_auc_score(t[:, 2], s[:, 2]))
        acc_b.append(((s[:, 1] >= thresholds[1]) == t[:, 1]).mean())
    assert out["macro"]["auroc_ci"] == pytest.approx(_loop_interval(macro_auc))
    assert out["macro"]["f1_ci"] == pytest.approx(_loop_interval(macro_f1))
    assert out["per_class"]["c"]["auroc_ci"] == pytest.approx(_loop_interval(auc_c))
    assert out["per_class"]["b"]["accuracy_ci"] == pytest.approx(_loop_interval(acc_b))
    low, high = out["macro"]["ap_ci"]
    assert low <= out["macro"]["ap"] <= high
    assert "auroc_ci" not in multilabel_metrics(scores, targets, ["a", "b", "c"])["macro"]


def test_multiclass_and_recall_intervals_match_a_loop():
    from medgrain.evaluation.metrics import multiclass_metrics, recall_metrics

    g = np.random.default_rng(6)
    target = g.integers(0, 3, 60)
    probabilities = np.eye(3)[target] * 0.5 + g.random((60, 3))
    spec = Bootstrap(resamples=120, seed=1)
    out = multiclass_metrics(probabilities, target, ["x", "y", "z"], bootstrap=spec)
    idx = np.concatenate(list(resample_indices(60, 120, 1, None)))
    accuracy = [(probabilities[r].argmax(1) == target[r]).mean() for r in idx]
    f1 = [f1_score(target[r], probabilities[r].argmax(1), average="macro", labels=[0, 1, 2]) for r in idx]
    assert out["macro"]["accuracy_ci"] == pytest.approx(_loop_interval(accuracy))
    assert out["macro"]["f1_ci"] == pytest.approx(_loop_interval(f1))
    ranks = torch.tensor(g.integers(1, 20, 50))
    rec = recall_metrics(ranks, (1, 5), bootstrap=Bootstrap(100, seed=2))
    idx = np.concatenate(list(resample_indices(50, 100, 2, None)))
    assert rec["R@5_ci"] == pytest.approx(_loop_interval([(ranks.numpy()[r] <= 5).mean() for r in idx]))


def test_clustered_interval_resamples_images_with_all_their_pairs():
    from medgrain.evaluation.bootstrap import clustered_mean_interval

    g = np.random.default_rng(8)
    images = np.repeat(np.arange(30), g.integers(1, 4, 30))  # 1 to 3 pairs per image
    values = g.normal(size=len(images)) + images % 3
    values[[2, 7]] = np.nan  # undefined pairs are left out of every mean
    spec = Bootstrap(resamples=120, seed=4, chunk=50)
    got = clustered_mean_interval(values, images.astype(str), spec)
    idx = np.concatenate(list(resample_indices(30, 120, 4, None, chunk=50)))
    labels = np.unique(images.astype(str))  # the clusters in np.unique's order, as the function numbers them
    loop = []
    for drawn in idx:
        picked = np.concatenate([np.flatnonzero(images.astype(str) == labels[c]) for c in drawn])
        v = values[picked]
        loop.append(np.nanmean(v))
    assert got == pytest.approx(_loop_interval(loop))
