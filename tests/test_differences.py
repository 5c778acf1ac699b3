"""Which differences are larger than their intervals: the demo's marks (medgrain.report.differences)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medgrain.evaluation.results import PerImageScores
from medgrain.report.differences import (
    APART,
    LARGER,
    WITHIN,
    compared_columns,
    differences,
    intervals_separate,
    sentences,
    task_entries,
)

NAMES = ["Effusion", "Nodule", "Edema"]


def _labels(n=150, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(NAMES))) < 0.3).astype(int)
    labels[0], labels[1] = 1, 0  # every finding has positives and negatives
    return labels


def _scores(labels, signal, seed):
    rng = np.random.default_rng(seed)
    values = signal * labels + rng.normal(size=labels.shape)
    return PerImageScores([f"r{i}" for i in range(len(labels))], NAMES, values, labels, "test").to_dict()


def _macro_auroc_loop(scores: dict) -> float:
    """The reference: scikit-learn's AUROC per finding in a loop, float64, averaged."""
    s, y = np.asarray(scores["scores"], dtype=np.float64), np.asarray(scores["labels"])
    return float(np.mean([roc_auc_score(y[:, j], s[:, j]) for j in range(y.shape[1])]))


def _zero_shot(scores: dict) -> dict:
    """A zero-shot result as a suite stores it (the AP, F1 and accuracy are not what is compared here)."""
    macro = {"auroc": _macro_auroc_loop(scores), "ap": 0.5, "f1": 0.4, "accuracy": 0.7}
    return {"metrics": {"mode": "pairs", "macro": macro}, "scores": scores}


def _compared(scores: dict[str, dict]) -> tuple[dict, dict]:
    """The results dict (as collect_results writes it) and each method's results per task."""
    methods = {m: {"metrics": {"zero-shot": {"AUROC": _macro_auroc_loop(s)}}} for m, s in scores.items()}
    entries = {m: task_entries([{"task": "all", "metrics": {"zero-shot": _zero_shot(s)}}]) for m, s in scores.items()}
    return {"methods": methods, "baseline": "random"}, entries


def _find(rows, method, against, column):
    return next(d for d in rows if d.method == method and d.against == against and d.column == column)


def test_a_difference_whose_paired_interval_excludes_0_is_marked_and_one_that_includes_0_is_not():
    labels = _labels()
    scores = {"random": _scores(labels, 0.0, 1), "clip": _scores(labels, 1.5, 2), "mgll": _scores(labels, 1.5, 3)}
    rows = differences(*_compared(scores), resamples=300)
    assert {(d.method, d.against) for d in rows} == {("clip", "random"), ("mgll", "random"), ("mgll", "clip")}

    gain = _find(rows, "mgll", "random", "AUROC")
    assert gain.difference == pytest.approx(_macro_auroc_loop(scores["mgll"]) - _macro_auroc_loop(scores["random"]))
    assert gain.difference_ci[0] > 0 and gain.marked and gain.better and gain.verdict == LARGER
    assert gain.how.startswith("paired bootstrap over 150 test images")

    same = _find(rows, "mgll", "clip", "AUROC")  # the same signal, other noise: no real difference
    low, high = same.difference_ci
    assert low < 0 < high and not same.marked and same.better is None and same.verdict == WITHIN


def test_a_marked_loss_says_the_method_is_worse():
    labels = _labels()
    scores = {"random": _scores(labels, 2.0, 1), "mgca": _scores(labels, 0.0, 2)}
    rows = differences(*_compared(scores), resamples=300)
    loss = _find(rows, "mgca", "random", "AUROC")
    assert loss.difference_ci[1] < 0 and loss.marked and loss.better is False


def test_without_scores_only_separated_intervals_over_seeds_are_marked():
    def lp(mean, cis):
        return {"linear probe": {"AUROC 100%": {"mean": mean, "ci": cis[0]},
                                 "AUROC 10%": {"mean": mean, "std": 0.01, "values": [mean] * len(cis),
                                               "seed_cis": cis}}}

    results = {"methods": {
        "random": {"metrics": lp(0.55, [[0.50, 0.60], [0.52, 0.61]])},
        "clip": {"metrics": lp(0.58, [[0.55, 0.62], [0.54, 0.63]])},  # overlaps random
        "mgll": {"metrics": lp(0.75, [[0.70, 0.80], [0.71, 0.79]])},  # above both
    }, "baseline": "random"}
    rows = differences(results, {}, resamples=100)
    assert {d.column for d in rows} == {"AUROC 100%", "AUROC 10%"}
    for column in ("AUROC 100%", "AUROC 10%"):
        assert _find(rows, "mgll", "random", column).marked
        assert _find(rows, "mgll", "clip", column).marked
        overlapping = _find(rows, "clip", "random", column)
        assert not overlapping.marked and overlapping.verdict == APART
        assert overlapping.difference == pytest.approx(0.03)
    assert _find(rows, "mgll", "random", "AUROC 10%").how == "the runs' intervals (2 seeds each)"


def test_a_value_without_any_interval_cannot_be_told_apart():
    results = {"methods": {"random": {"metrics": {"segmentation": {"Dice 10%": 0.2}}},
                           "mgll": {"metrics": {"segmentation": {"Dice 10%": 0.9}}}}}
    (row,) = differences(results, {}, resamples=100)
    assert row.verdict == APART and not row.marked and row.how == "no interval to compare"
    assert row.difference == pytest.approx(0.7)


def test_lower_is_better_columns_turn_the_direction():
    results = {"methods": {"random": {"metrics": {"retrieval": {"median rank": {"mean": 30.0, "ci": [25, 35]}}}},
                           "clip": {"metrics": {"retrieval": {"median rank": {"mean": 5.0, "ci": [4, 6]}}}}}}
    (row,) = differences(results, {}, resamples=100)
    assert row.marked and row.better is True and row.difference == -25.0


@pytest.mark.parametrize(("a", "b", "expected"), [
    ([[0.7, 0.8]], [[0.5, 0.6]], True),
    ([[0.5, 0.6]], [[0.7, 0.8]], False),
    ([[0.5, 0.71]], [[0.7, 0.8]], None),
    ([[0.75, 0.8], [0.55, 0.9]], [[0.5, 0.6]], None),  # one seed's interval reaches the other's span
    ([], [[0.5, 0.6]], None),
])
def test_intervals_separate(a, b, expected):
    assert intervals_separate(a, b) is expected


def test_compared_columns_are_the_headline_at_every_fraction():
    row = {"AUROC 100%": 0.8, "AUROC 10%": 0.7, "AUROC 1%": 0.6, "AP 100%": 0.5, "F1 10%": 0.4}
    assert compared_columns(row) == ["AUROC 100%", "AUROC 10%", "AUROC 1%"]
    assert compared_columns({"i→t R@1": 0.1, "i→t R@5": 0.3}) == ["i→t R@1"]
    assert compared_columns({}) == []


def test_runs_on_different_images_are_refused():
    labels = _labels()
    scores = {"random": _scores(labels, 0.0, 1), "mgll": _scores(labels, 1.0, 2)}
    results, entries = _compared(scores)
    entries["mgll"]["zero-shot"]["scores"]["ids"] = [f"other{i}" for i in range(len(labels))]
    with pytest.raises(ValueError, match="not scored on the same test set"):
        differences(results, entries, resamples=10)


def test_stored_values_pair_a_column_only_when_they_give_its_values():
    labels = _labels()
    scores = {"random": _scores(labels, 0.0, 1), "mgll": _scores(labels, 2.0, 2)}
    results, entries = _compared(scores)
    results["methods"]["mgll"]["metrics"]["zero-shot"]["AUROC"] -= 0.01  # e.g. another seed than the scores'
    (row,) = differences(results, entries, resamples=50)
    assert row.how == "no interval to compare" and not row.marked


def test_a_task_without_per_image_values_falls_back_to_the_intervals():
    def detection(value, ci):
        macro = {"map_40_75": {"mean": value, "std": 0.0, "values": [value]}, "map_40_75_ci": ci}
        return {"task": "detect", "metrics": {"fractions": {"100%": {"macro": macro}}}}

    entries = {"mgll": {"detect": detection(0.6, [0.55, 0.65])}, "random": {"detect": detection(0.2, [0.15, 0.25])}}
    column = "mAP .40–.75 100%"
    results = {"methods": {"mgll": {"metrics": {"detection": {column: {"mean": 0.6, "ci": [0.55, 0.65]}}}},
                           "random": {"metrics": {"detection": {column: {"mean": 0.2, "ci": [0.15, 0.25]}}}}}}
    (row,) = differences(results, entries, resamples=50)
    assert row.marked and row.how == "the runs' intervals"


def test_sentences_name_what_is_ahead_behind_and_unclear():
    results = {"methods": {"random": {"metrics": {"seg": {"Dice": {"mean": 0.5, "ci": [0.45, 0.55]}}}},
                           "clip": {"metrics": {"seg": {"Dice": {"mean": 0.7, "ci": [0.65, 0.75]}}}},
                           "mgca": {"metrics": {"seg": {"Dice": {"mean": 0.3, "ci": [0.25, 0.35]}}}},
                           "mgll": {"metrics": {"seg": {"Dice": {"mean": 0.52, "ci": [0.47, 0.57]}}}}}}
    rows = [d.to_dict() for d in differences(results, {}, against=("random",))]
    (text,) = sentences(rows)
    assert text == ("Against random, 2 of 3 differences are larger than their 95% intervals; ahead: clip on seg Dice "
                    "(+0.200); behind: mgca on seg Dice (-0.200). The other 1 cannot be told apart at this budget.")
