"""The ablation runner: every variant and task at a toy budget, and the claims' statistics against loops."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medgrain.ablation import ABLATIONS, CEILING, FLOOR, Claim, compare, metric_columns, run_ablation, verdict


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from medgrain.data.synthetic import generate

    return generate("cxr", tmp_path_factory.mktemp("abl"), n=40, seed=5, size=32, workers=1)


@pytest.mark.slow
@pytest.mark.parametrize("suite", ABLATIONS.names())
def test_each_suite_runs_end_to_end_at_a_toy_budget(synth, tmp_path, suite):
    result = run_ablation(suite, synth, tmp_path / suite, seeds=(0,), budget="toy", device="cpu", bootstrap=50)
    stored = json.loads((tmp_path / suite / "ablation.json").read_text())
    names = [v.name for v in ABLATIONS.get(suite).variants]
    assert stored["suite"] == suite and [r["variant"] for r in stored["rows"]] == [*names, FLOOR, CEILING]
    ceiling = stored["rows"][-1]["cells"]
    assert 0 <= ceiling["linear probe 100%"]["mean"] <= 1 and ceiling["zero-shot"]["mean"] is None
    for row in stored["rows"][:-1]:
        assert list(row["cells"]) == result["columns"]
        for column in ("linear probe 100%", "zero-shot", "segmentation 100%"):
            value = row["cells"][column]["mean"]
            assert value is not None and 0 <= value <= 1, (row["variant"], column)
    assert len(stored["claims"]) == len(ABLATIONS.get(suite).claims)
    assert all(c["verdict"] in ("held", "reversed", "cannot be told apart", "did not hold", "not measured")
               for c in stored["claims"])
    table = (tmp_path / suite / "table.md").read_text()
    assert all(v.name in table for v in ABLATIONS.get(suite).variants) and "verdict" in table and "gap closed" in table
    # a second call reuses every finished run instead of training again
    again = run_ablation(suite, synth, tmp_path / suite, seeds=(0,), budget="toy", device="cpu", bootstrap=50)
    assert again["rows"] == stored["rows"]
    # a suite stopped early: only what finished is tabulated, nothing is trained
    first = ABLATIONS.get(suite).variants[0].name
    partial = run_ablation(suite, synth, tmp_path / suite, seeds=(0, 1), budget="toy", bootstrap=50, finished_only=True)
    assert [r["variant"] for r in partial["rows"]] == [r["variant"] for r in stored["rows"]]
    assert partial["rows"][0]["seeds"] == [0] and partial["rows"][0]["variant"] == first
    with pytest.raises(FileNotFoundError, match="no finished run"):
        run_ablation(suite, synth, tmp_path / "empty", budget="toy", finished_only=True)


def _run(scores, labels, ids, column="zero-shot"):
    auroc = np.mean([roc_auc_score(labels[:, j], scores[:, j]) for j in range(labels.shape[1])])
    return {"metrics": {column: auroc},
            "scores": {column: {"ids": ids, "scores": scores.tolist(), "labels": labels.tolist()}}}


def test_paired_comparison_over_seeds_and_images_matches_a_loop():
    rng = np.random.default_rng(0)
    n, f = 80, 3
    labels = (rng.random((n, f)) < 0.4).astype(int)
    ids = [str(i) for i in range(n)]
    a = [_run(labels + rng.normal(0, s, (n, f)), labels, ids) for s in (0.6, 0.7)]
    b = [_run(labels + rng.normal(0, s, (n, f)), labels, ids) for s in (1.5, 1.6)]
    out = compare(a, b, "zero-shot", resamples=400)
    expected = np.mean([x["metrics"]["zero-shot"] - y["metrics"]["zero-shot"] for x, y in zip(a, b)])
    assert out["difference"] == pytest.approx(expected, abs=1e-9)
    assert out["difference_ci"][0] > 0 and verdict(Claim("a", "b", "zero-shot", ""), out) == "held"
    assert verdict(Claim("b", "a", "zero-shot", ""), compare(b, a, "zero-shot", 400)) == "reversed"


def test_seed_only_comparison_is_a_t_interval():
    from scipy import stats

    a = [{"metrics": {"m": v}, "scores": {}} for v in (0.70, 0.74, 0.73)]
    b = [{"metrics": {"m": v}, "scores": {}} for v in (0.60, 0.69, 0.65)]
    out = compare(a, b, "m", resamples=100)
    d = np.array([0.10, 0.05, 0.08])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert out["difference_ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    one = compare(a[:1], b[:1], "m", resamples=100)
    assert one["difference_ci"] is None and verdict(Claim("a", "b", "m", ""), one) == "cannot be told apart"


def test_closeness_claims():
    close = Claim("a", "b", "m", "", kind="close")
    assert verdict(close, {"difference": 0.0, "difference_ci": [-0.01, 0.015]}) == "held"
    assert verdict(close, {"difference": 0.05, "difference_ci": [0.03, 0.07]}) == "did not hold"
    assert verdict(close, {"difference": 0.01, "difference_ci": [-0.01, 0.04]}) == "cannot be told apart"


def test_claims_name_existing_variants_and_columns():
    from medgrain.ablation import BUDGETS

    for suite in (ABLATIONS.get(n) for n in ABLATIONS.names()):
        names = {v.name for v in suite.variants} | {FLOOR}  # the budget's own check compares with the floor
        for claim in suite.claims:
            assert {claim.better, claim.worse} <= names
            assert claim.metric in metric_columns(BUDGETS["cpu"])


def test_gap_closed_is_the_share_of_floor_to_ceiling():
    from medgrain.ablation import _gap_closed

    def row(name, value):
        return {"variant": name, "cells": {"linear probe 100%": {"mean": value}}}

    rows = [row("A", 0.7), row("B", None), row(FLOOR, 0.6), row(CEILING, 0.8)]
    _gap_closed(rows, "linear probe 100%")
    assert [r["gap_closed"] for r in rows] == [pytest.approx(0.5), None, 0.0, 1.0]
    below = [row("A", 0.7), row(FLOOR, 0.6), row(CEILING, 0.55)]  # a "ceiling" under the floor is no reference
    _gap_closed(below, "linear probe 100%")
    assert [r["gap_closed"] for r in below] == [None, None, None]
