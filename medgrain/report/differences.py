"""Which differences between methods are larger than their intervals.

A comparison table invites reading every gap as a ranking; most gaps on a small test set are not. For each
method against each reference (the random baseline, CLIP), on each table's headline metric (at every label
fraction where the table has several), this module says whether the difference is larger than its 95%
interval, by the strongest test the stored results allow:

- **paired bootstrap over test images** where both runs stored per-image scores of the findings (zero-shot,
  and the linear probe at its scored fraction) and the column is their macro AUROC: the difference of the two
  macro AUROCs on the same resamples of the test images (``medgrain.evaluation.bootstrap.paired_bootstrap``,
  stratified on rare findings as the metrics' own intervals are), so image difficulty cancels out. Marked
  when the difference's 95% interval excludes 0.
- **the runs' own intervals** otherwise (a metric over label draws or seeds, segmentation's Dice, retrieval):
  marked only when the two methods' intervals separate, i.e. the span of one method's intervals (over its
  seeds, or its single run's bootstrap interval) lies wholly above or below the other's. Overlapping
  intervals, or a value without one, cannot be told apart. This is deliberately conservative: two intervals
  can overlap while the paired difference excludes 0, but without paired scores no more can be said.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medgrain.report.results import lower_is_better, mean_of

AUROC = "AUROC"
LARGER = "larger than its interval"
WITHIN = "within its interval"
APART = "cannot be told apart"
FRACTION = re.compile(r"\s+\d+(\.\d+)?%$")  # "AUROC 10%" -> metric "AUROC" at fraction "10%"


@dataclass(frozen=True)
class Difference:
    """``method`` - ``against`` on ``table`` / ``column``; ``marked`` when larger than its interval."""

    method: str
    against: str
    table: str
    column: str
    difference: float | None
    difference_ci: list[float] | None  # the paired difference's 95% interval (paired bootstrap only)
    p_value: float | None
    how: str
    verdict: str
    marked: bool
    better: bool | None  # whether ``method`` is the better of the two, where marked

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------ the two tests


def _score_arrays(scores: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    return (list(scores["ids"]), np.asarray(scores["scores"], dtype=np.float64),
            np.asarray(scores["labels"], dtype=np.int64))


def macro_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The macro AUROC of one run's per-image scores (N, F), as the paired test computes it."""
    from medgrain.evaluation.bootstrap import auroc_rows, macro

    return float(macro(auroc_rows)(scores[None], labels[None])[0])


def paired_difference(a: dict[str, Any], b: dict[str, Any], resamples: int, seed: int = 0) -> dict[str, Any]:
    """macro AUROC(A) - macro AUROC(B) of two runs' stored per-image scores (``PerImageScores.to_dict()``),
    with the paired bootstrap's 95% interval and p-value. The runs must have scored the same images."""
    from medgrain.evaluation.bootstrap import (
        Bootstrap,
        auroc_rows,
        macro,
        paired_bootstrap,
        rare_class_strata,
    )

    ids_a, scores_a, labels_a = _score_arrays(a)
    ids_b, scores_b, labels_b = _score_arrays(b)
    if ids_a != ids_b or a["names"] != b["names"]:
        raise ValueError("the two runs scored different test images or findings; a paired comparison needs the same")
    if not np.array_equal(labels_a, labels_b):
        raise ValueError("the two runs' stored labels differ on the same images; they were scored on different data")
    return paired_bootstrap(macro(auroc_rows), [scores_a, labels_a], [scores_b, labels_b],
                            Bootstrap(resamples=resamples, seed=seed), strata=rare_class_strata(labels_a))


def intervals_of(value: Any) -> list[list[float]]:
    """The 95% intervals a table value carries: its own (``ci``), or each seed's (``seed_cis``)."""
    if not isinstance(value, dict):
        return []
    found = [value["ci"]] if value.get("ci") else list(value.get("seed_cis") or [])
    return [list(map(float, ci)) for ci in found if ci is not None and len(ci) == 2]


def intervals_separate(a: list[list[float]], b: list[list[float]]) -> bool | None:
    """Whether the span of ``a``'s intervals lies wholly above (True) or below (False) ``b``'s; None when
    they overlap or either has none."""
    if not a or not b:
        return None
    low_a, high_a = min(ci[0] for ci in a), max(ci[1] for ci in a)
    low_b, high_b = min(ci[0] for ci in b), max(ci[1] for ci in b)
    if low_a > high_b:
        return True
    if high_a < low_b:
        return False
    return None


# ------------------------------------------------------------------------------------ a comparison


def _by_scores(method, against, table, column, scores_a, scores_b, lower, resamples) -> Difference:
    out = paired_difference(scores_a, scores_b, resamples)
    ci = out["difference_ci"]
    marked = ci is not None and (ci[0] > 0 or ci[1] < 0)
    n = len(scores_a["ids"])
    return Difference(method, against, table, column, out["difference"], ci, out["p_value"],
                      f"paired bootstrap over {n} test images ({out['resamples']} resamples)",
                      LARGER if marked else WITHIN, marked, ((ci[0] > 0) != lower) if marked else None)


def _by_intervals(method, against, table, column, value_a, value_b, lower) -> Difference:
    mean_a, mean_b = mean_of(value_a), mean_of(value_b)
    difference = None if mean_a is None or mean_b is None else mean_a - mean_b
    ia, ib = intervals_of(value_a), intervals_of(value_b)
    if difference is None or not ia or not ib:
        return Difference(method, against, table, column, difference, None, None, "no interval to compare",
                          APART, False, None)
    above = intervals_separate(ia, ib)
    seeds = max(len(ia), len(ib))
    how = f"the runs' intervals ({seeds} seed{'s' if seeds > 1 else ''} each)" if seeds > 1 else "the runs' intervals"
    if above is None:
        return Difference(method, against, table, column, difference, None, None, how, APART, False, None)
    return Difference(method, against, table, column, difference, None, None, how, LARGER, True, above != lower)


def compared_columns(row: dict[str, Any]) -> list[str]:
    """A table's headline (its first column), at every label fraction the table has it."""
    if not row:
        return []
    headline = next(iter(row))
    metric = FRACTION.sub("", headline)
    return [c for c in row if c == headline or (FRACTION.search(c) and FRACTION.sub("", c) == metric)]


def compare(method: str, against: str, table: str, column: str, results: dict[str, Any],
            scores: dict[str, dict[str, dict[str, Any]]], resamples: int) -> Difference:
    """``method`` against ``against`` on one column; ``scores``: method -> table -> stored per-image scores
    of the table's headline column."""
    methods = results["methods"]
    value_a = methods[method]["metrics"][table].get(column)
    value_b = methods[against]["metrics"][table].get(column)
    lower = lower_is_better(column, tuple(results.get("lower_is_better", ())))
    scores_a, scores_b = scores.get(method, {}).get(table), scores.get(against, {}).get(table)
    headline = next(iter(methods[method]["metrics"][table]))
    if column == headline and column.startswith(AUROC) and scores_a and scores_b and resamples > 0:
        return _by_scores(method, against, table, column, scores_a, scores_b, lower, resamples)
    return _by_intervals(method, against, table, column, value_a, value_b, lower)


def differences(results: dict[str, Any], scores: dict[str, dict[str, dict[str, Any]]],
                against: tuple[str, ...] = ("random", "clip"), resamples: int = 1000) -> list[Difference]:
    """Every method against each of ``against`` that is in ``results``, on each table both have, on the
    table's headline at every label fraction."""
    from medgrain.report.results import BASELINES

    methods = results["methods"]
    out = []
    for reference in (r for r in against if r in methods):
        for method in (m for m in methods if m != reference and m not in BASELINES):
            for table, row in methods[method].get("metrics", {}).items():
                if table not in methods[reference].get("metrics", {}):
                    continue
                for column in compared_columns(row):
                    out.append(compare(method, reference, table, column, results, scores, resamples))
    return out


def stored_scores(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """table -> per-image scores of its headline column, from evaluation records (one task, or a suite's
    ``all``), where the task stored them and they reproduce the table's headline value."""
    from medgrain.evaluation import EVAL_TASKS, task_spec

    found: dict[str, dict[str, Any]] = {}
    entries = []
    for record in records:
        if record.get("task") == "all":
            entries += [(task, entry) for task, entry in record["metrics"].items() if isinstance(entry, dict)]
        else:
            entries.append((record.get("task"), record))
    for task, entry in entries:
        if task not in EVAL_TASKS or not entry.get("scores") or "metrics" not in entry:
            continue
        for table, row in task_spec(task).tables(entry["metrics"]).items():
            headline = next(iter(row), None)
            if headline is None or not headline.startswith(AUROC) or mean_of(row[headline]) is None:
                continue
            _, values, labels = _score_arrays(entry["scores"])
            # the scores belong to the headline only if they give its value (e.g. the scored fraction and seed)
            if math.isclose(macro_auroc(values, labels), mean_of(row[headline]), abs_tol=1e-9):
                found[table] = entry["scores"]
    return found


def describe(difference: dict[str, Any]) -> str:
    """One difference in words, for the printed summary and the report."""
    d = difference
    if d["difference"] is None:
        return f"{d['method']} vs {d['against']}: not measured"
    text = f"{d['method']} − {d['against']} = {d['difference']:+.3f}"
    if d["difference_ci"]:
        low, high = d["difference_ci"]
        text += f" [{low:+.3f}, {high:+.3f}]"
    return text


def sentences(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per reference method: which differences are larger than their intervals, which are not."""
    out = []
    for reference in dict.fromkeys(d["against"] for d in rows):
        mine = [d for d in rows if d["against"] == reference]
        ahead = [d for d in mine if d["marked"] and d["better"]]
        behind = [d for d in mine if d["marked"] and not d["better"]]
        unclear = [d for d in mine if not d["marked"]]

        def listed(ds):
            return ", ".join(f"{d['method']} on {d['table']} {d['column']} ({d['difference']:+.3f})" for d in ds)

        text = f"Against {reference}, {len(ahead) + len(behind)} of {len(mine)} differences are larger than their 95% intervals"
        text += f"; ahead: {listed(ahead)}" if ahead else "; none ahead"
        text += f"; behind: {listed(behind)}" if behind else ""
        text += f". The other {len(unclear)} cannot be told apart at this budget." if unclear else "."
        out.append(text)
    return out
