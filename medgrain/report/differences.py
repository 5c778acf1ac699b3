"""Which differences between methods are larger than their intervals.

A comparison table invites reading every gap as a ranking; most gaps on a small test set are not. For each
method against each reference (the random baseline, CLIP), on each table's headline metric (at every label
fraction where the table has several), this module says whether the difference is larger than its 95%
interval, by the strongest test the stored results allow:

- **paired bootstrap over test images** where both results stored per-image values for the column
  (``medgrain compare``, ``medgrain.evaluation.compare``: per-image scores of zero-shot and of the linear
  probe's scored fraction, each image's Dice, each query's rank, each grounding pair's CNR): the difference on
  the same resamples of the test images, so image difficulty cancels out. Marked when the difference's 95%
  interval excludes 0.
- **the runs' own intervals** otherwise (a metric summarised over label draws or seeds, such as the linear
  probe at 1% and 10%): marked only when the two methods' intervals separate, i.e. the span of one method's
  intervals (over its seeds, or its single run's bootstrap interval) lies wholly above or below the other's.
  Overlapping intervals, or a value without one, cannot be told apart. This is deliberately conservative:
  two intervals can overlap while a paired difference excludes 0, but without paired values no more can be said.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from medgrain.report.results import lower_is_better, mean_of

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


def task_entries(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """task -> its result (with ``task`` set), from evaluation records: one task's, or a suite's ``all``."""
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("task") == "all":
            found.update({task: {"task": task, **entry} for task, entry in record["metrics"].items()
                          if isinstance(entry, dict) and "metrics" in entry})
        elif "task" in record and "metrics" in record:
            found[record["task"]] = record
    return found


def paired(entry_a: dict[str, Any], entry_b: dict[str, Any], resamples: int) -> dict[str, dict[str, Any]]:
    """``medgrain compare``'s paired bootstrap of two results of one task: metric -> {a, b, difference,
    difference_ci, p_value}; empty where the results stored no per-image values to pair. Results on different
    test images are refused (ValueError)."""
    from medgrain.evaluation.bootstrap import Bootstrap
    from medgrain.evaluation.compare import compare_results

    if not (_images(entry_a) and _images(entry_b)) or entry_a["task"] == "detect":
        return {}  # nothing stored per image (detection, or a result of an older medgrain)
    return compare_results(entry_a, entry_b, Bootstrap(resamples=resamples))["metrics"]


def paired_metric(table: str, column: str, value_a: Any, value_b: Any,
                  metrics: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The paired comparison that is the column: same metric name, and the same values of A and B (the stored
    per-image values are those of one fraction and seed; a column of another fraction is not theirs)."""
    name, a, b = FRACTION.sub("", column).lower(), mean_of(value_a), mean_of(value_b)
    if a is None or b is None:
        return None
    source = table[table.find("(") + 1:table.rfind(")")].lower() if "(" in table else ""
    matches = [(k, m) for k, m in metrics.items() if k.lower().endswith(name) and m.get("a") is not None
               and m.get("b") is not None and math.isclose(m["a"], a, abs_tol=1e-9) and math.isclose(m["b"], b, abs_tol=1e-9)]
    matches.sort(key=lambda km: not km[0].lower().startswith(source))  # retrieval: the table's text source first
    return matches[0][1] if matches else None


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


def _by_pairs(method, against, table, column, out: dict[str, Any], lower: bool, n: int) -> Difference:
    ci = out["difference_ci"]
    marked = ci is not None and (ci[0] > 0 or ci[1] < 0)
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


def differences(results: dict[str, Any], entries: dict[str, dict[str, dict[str, Any]]],
                against: tuple[str, ...] = ("random", "clip"), resamples: int = 1000) -> list[Difference]:
    """Every method against each of ``against`` that is in ``results``, on each table both have, on the
    table's headline at every label fraction. ``entries``: method -> task -> its result (``task_entries``),
    whose per-image values the paired test uses."""
    from medgrain.evaluation import task_spec
    from medgrain.report.results import BASELINES

    methods, extra = results["methods"], tuple(results.get("lower_is_better", ()))
    out = []
    for reference in (r for r in against if r in methods):
        for method in (m for m in methods if m != reference and m not in BASELINES):
            mine, theirs = entries.get(method, {}), entries.get(reference, {})
            pairs = {task: paired(mine[task], theirs[task], resamples) if resamples > 0 else {}
                     for task in mine if task in theirs}
            table_task = {table: task for task in pairs for table in task_spec(task).tables(mine[task]["metrics"])}
            for table, row in methods[method].get("metrics", {}).items():
                if table not in methods[reference].get("metrics", {}):
                    continue
                for column in compared_columns(row):
                    a, b = row.get(column), methods[reference]["metrics"][table].get(column)
                    lower = lower_is_better(column, extra)
                    task = table_task.get(table)
                    match = paired_metric(table, column, a, b, pairs[task]) if task else None
                    if match is not None:
                        out.append(_by_pairs(method, reference, table, column, match, lower, _images(mine[task])))
                    else:
                        out.append(_by_intervals(method, reference, table, column, a, b, lower))
    return out


def _images(entry: dict[str, Any]) -> int:
    for where in (entry.get("scores"), entry.get("metrics", {}).get("per_image"), entry.get("metrics", {}).get("per_pair")):
        if isinstance(where, dict) and "ids" in where:
            return len(where["ids"])
    ranks = next(iter(entry.get("metrics", {}).get("by_text", {}).values()), {}).get("ranks", {})
    return len(ranks.get("ids", []))


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
