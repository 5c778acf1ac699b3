"""The numbers of a report: runs read from their directories, evaluation results flattened into one
comparison table per task, the best value per column, and a plain-words summary.

The results schema (``results.json``; ``collect_results`` builds it from run directories, the demo
writes it; every key but ``methods`` is optional)::

    {
      "title": "CLIP, MGLL, MGCA and MGCA+MGLL on synthetic chest X-rays",
      "data": "runs/demo/data/manifest.jsonl",          # the manifest the evaluations used
      "baseline": "random",                              # the method every other must beat
      "lower_is_better": ["my_error"],                   # added to the built-in rule (below)
      "methods": {
        "mgca": {
          "objective": "mgca",                           # from run.yaml
          "run_dirs": ["runs/demo/mgca-seed0", ...],     # pretraining runs, one per seed ("run_dir": one)
          "metrics": {                                   # TABLE -> COLUMN -> VALUE
            "zero-shot": {"AUROC": 0.71, "AP": 0.40, "F1": 0.35, "accuracy": 0.80},
            "linear probe": {"AUROC 100%": {"mean": 0.80, "std": 0.01, "n": 3}, ...},
            "retrieval (report)": {"i→t R@1": 0.12, "i→t median rank": 9.0, ...}
          }
        },
        "random": {"metrics": {...}}
      }
    }

A VALUE is a number, ``null`` (undefined, shown as "–"), or ``{"mean", "std"}`` with optionally ``n``
(or ``values``), the number of seeds; ± is shown when there were several. ``ci``: ``[low, high]``, the
bootstrap 95% interval over test images of one evaluation, shown after the value. A table's first column
is its headline, the number the summary compares. A column is lower-is-better when its name
contains "rank", "loss" or "error", or is listed in ``lower_is_better``.

``collect_results`` reads every evaluation JSON under each run's ``eval/`` folder (one task, or the
suite's ``all``) and names the tables and columns as above. Several runs of one method (pretraining
seeds) become mean ± standard deviation (ddof=1) of their per-run values; a single run keeps the
evaluation's own spread (e.g. over the linear probe's data draws).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

BASELINES = ("random", "imagenet")
LOWER_IS_BETTER_WORDS = ("rank", "loss", "error")


# ------------------------------------------------------------------------------------ methods
# A method is a baseline or a registered objective (medgrain.losses.objective.OBJECTIVES): the order, the
# attention section and the claims of the summary come from the registry, so a new objective needs no edit here.


def _objectives():
    from medgrain.losses.objective import OBJECTIVES

    return OBJECTIVES


def method_order() -> tuple[str, ...]:
    """Baselines first, then the objectives in the registry's order."""
    return (*BASELINES, *_objectives().names())


def aligns_tokens(objective: str | None) -> bool:
    """Whether a run of ``objective`` has token-level heads (the report draws its attention maps)."""
    objectives = _objectives()
    return objective in objectives and objectives.get(objective).aligns_tokens


def token_objectives() -> list[str]:
    return [name for name in _objectives().names() if aligns_tokens(name)]


def claims() -> list[tuple[str, str]]:
    """The claims a comparison is about: (method, a method it is meant to beat), from each objective's
    ``improves_on``."""
    return [(e.name, other) for e in _objectives().entries() for other in e.meta.get("improves_on", ())]


def method_help(name: str) -> str | None:
    """The one-line description of the objective a method (``"mgll"``, ``"mgll (tiny)"``) ran, if registered."""
    base = name.split(" ")[0]
    objectives = _objectives()
    return objectives.help(base) if base in objectives else None


# ------------------------------------------------------------------------------------ runs


@dataclass
class Run:
    """One run directory: a pretraining run (run.yaml, metrics.jsonl, checkpoints/) and/or evaluations
    (eval/*.json); a baseline's folder may hold evaluations only."""

    path: Path
    name: str
    objective: str | None
    preset: str | None
    seed: int | None
    config_text: str | None
    config: dict[str, Any]
    history: list[dict[str, Any]]
    checkpoint: Path | None
    evaluations: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)

    @property
    def aligns_tokens(self) -> bool:
        return aligns_tokens(self.objective)

    @property
    def manifest(self) -> Path | None:
        data = self.config.get("data", {}).get("manifest")
        return Path(data) if data else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
    return rows


def read_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory not found: {path}")
    run_yaml, metrics = path / "run.yaml", path / "metrics.jsonl"
    evaluations = []
    for file in sorted((path / "eval").rglob("*.json")) if (path / "eval").is_dir() else []:
        try:
            result = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not valid JSON ({e.msg})") from None
        if isinstance(result, dict) and "task" in result and "metrics" in result:
            evaluations.append((file, result))
    if not (run_yaml.is_file() or metrics.is_file() or evaluations):
        raise FileNotFoundError(f"{path} is not a run directory: it has no run.yaml, metrics.jsonl or eval/*.json")
    config_text = run_yaml.read_text(encoding="utf-8") if run_yaml.is_file() else None
    config = (yaml.safe_load(config_text) or {}) if config_text else {}
    objective = config.get("objective", {}).get("name")
    checkpoint = next((c for c in (path / "checkpoints" / "best", path / "checkpoints" / "last")
                       if (c / "model.safetensors").is_file()), None)
    baseline = next((r["checkpoint"] for _, r in evaluations if r.get("checkpoint") in BASELINES), None)
    return Run(path=path, name=objective or baseline or path.name, objective=objective,
               preset=config.get("model", {}).get("preset"), seed=config.get("train", {}).get("seed"),
               config_text=config_text, config=config,
               history=_read_jsonl(metrics) if metrics.is_file() else [], checkpoint=checkpoint,
               evaluations=evaluations)


def read_runs(paths: list[str | Path]) -> list[Run]:
    """Read every run and name it by its method: the objective, with the model preset added when runs of
    one objective differ in preset, and the folder's name when two would still share a seed."""
    runs = [read_run(p) for p in paths]
    for name in {r.name for r in runs}:
        same = [r for r in runs if r.name == name]
        if len({r.preset for r in same}) > 1:
            for r in same:
                r.name = f"{r.name} ({r.preset})"
    for name in {r.name for r in runs}:
        same = [r for r in runs if r.name == name]
        if len({r.seed for r in same}) < len(same):
            for r in same:
                r.name = f"{r.name} [{r.path.name}]"
    return runs


# ------------------------------------------------------------------------------------ values


def mean_of(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("mean")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def spread_of(value: Any) -> float | None:
    """The standard deviation when the value summarises several seeds, else None."""
    if not isinstance(value, dict) or value.get("std") is None:
        return None
    n = value.get("n", len([v for v in value.get("values", []) if v is not None]))
    return float(value["std"]) if n > 1 else None


def format_value(value: Any, digits: int = 3) -> str:
    m = mean_of(value)
    if m is None:
        return "–"
    text = f"{m:.{digits}f}"
    s = spread_of(value)
    text = f"{text} ± {s:.{digits}f}" if s is not None else text
    ci = value.get("ci") if isinstance(value, dict) else None
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else text


def lower_is_better(column: str, extra: tuple[str, ...] | list[str] = ()) -> bool:
    return column in extra or any(word in column.lower() for word in LOWER_IS_BETTER_WORDS)


# ------------------------------------------------------------------------------------ flattening

def task_tables(task: str, metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{table: {column: value}} of one evaluation's ``metrics`` (the result JSON of ``task``), as the task
    registered them (``medgrain.evaluation.registry``); an unregistered task has none."""
    from medgrain.evaluation import EVAL_TASKS, task_spec

    if task == "all":  # the suite: one entry per task, or the reason it was skipped
        tables: dict[str, dict[str, Any]] = {}
        for sub, result in metrics.items():
            if isinstance(result, dict) and "metrics" in result:
                tables.update(task_tables(sub, result["metrics"]))
        return tables
    return task_spec(task).tables(metrics) if task in EVAL_TASKS else {}


def table_order() -> list[str]:
    """The report's tables in the order the tasks are registered (a table's name starts with its task's title)."""
    from medgrain.evaluation import task_specs

    return [spec.title for spec in task_specs()]


def _aggregate(per_run: list[Any]) -> Any:
    """One run: its value as it is. Several: mean ± std (ddof=1) of the runs' means."""
    if len(per_run) == 1:
        return per_run[0]
    values = [mean_of(v) for v in per_run]
    defined = [v for v in values if v is not None]
    if not defined:
        return None
    std = float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0
    return {"mean": float(np.mean(defined)), "std": std, "n": len(defined), "values": values}


def collect_results(runs: list[Run], title: str | None = None) -> dict[str, Any]:
    """The results dict (schema above) from the evaluation JSON files of ``runs``."""
    per_method: dict[str, list[dict[str, dict[str, Any]]]] = {}
    info: dict[str, dict[str, Any]] = {}
    data = None
    for run in runs:
        by_name: dict[str, dict[str, dict[str, Any]]] = {}
        for _, result in run.evaluations:
            name = result["checkpoint"] if result.get("checkpoint") in BASELINES else run.name
            data = data or result.get("data")
            tables = by_name.setdefault(name, {})
            for table, row in task_tables(result["task"], result["metrics"]).items():
                tables.setdefault(table, {}).update(row)
        for name, tables in by_name.items():
            per_method.setdefault(name, []).append(tables)
            entry = info.setdefault(name, {"objective": None if name in BASELINES else run.objective,
                                           "run_dirs": []})
            if name not in BASELINES:
                entry["run_dirs"].append(str(run.path))
    methods = {}
    for name, runs_tables in per_method.items():
        metrics: dict[str, dict[str, Any]] = {}
        tables = list(dict.fromkeys(t for rt in runs_tables for t in rt))
        for table in tables:
            columns = list(dict.fromkeys(c for rt in runs_tables for c in rt.get(table, {})))
            metrics[table] = {c: _aggregate([rt[table][c] for rt in runs_tables if c in rt.get(table, {})])
                              for c in columns}
        methods[name] = {**info[name], "metrics": metrics}
    results: dict[str, Any] = {"methods": dict(sorted(methods.items(), key=lambda kv: method_rank(kv[0])))}
    if title:
        results["title"] = title
    if data:
        results["data"] = data
    baseline = next((b for b in BASELINES if b in methods), None)
    if baseline:
        results["baseline"] = baseline
    return results


def method_rank(name: str) -> tuple[int, str]:
    base, order = name.split(" ")[0], method_order()
    return (order.index(base) if base in order else len(order), name)


def validate_results(results: dict[str, Any]) -> dict[str, Any]:
    """Check the shape of a results dict (schema above); the error names the offending key."""
    if not isinstance(results, dict) or not isinstance(results.get("methods"), dict):
        raise ValueError("results: expected a mapping with a 'methods' mapping (see medgrain.report.results)")
    for name, method in results["methods"].items():
        if not isinstance(method, dict) or not isinstance(method.get("metrics", {}), dict):
            raise ValueError(f"results: methods.{name}: expected a mapping with a 'metrics' mapping")
        for table, row in method.get("metrics", {}).items():
            if not isinstance(row, dict):
                raise ValueError(f"results: methods.{name}.metrics.{table}: expected a mapping of column -> value")
            for column, value in row.items():
                ok = value is None or isinstance(value, (int, float)) or (isinstance(value, dict) and "mean" in value)
                if not ok or isinstance(value, bool):
                    raise ValueError(f"results: methods.{name}.metrics.{table}.{column}: expected a number, "
                                     f"null or {{mean, std}}, got {value!r}")
    baseline = results.get("baseline")
    if baseline is not None and baseline not in results["methods"]:
        raise ValueError(f"results: baseline {baseline!r} is not one of the methods {list(results['methods'])}")
    return results


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return validate_results(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ------------------------------------------------------------------------------------ comparison


@dataclass
class Table:
    name: str
    columns: list[str]
    methods: list[str]
    values: dict[str, dict[str, Any]]  # method -> column -> value
    best: dict[str, set[str]]  # column -> methods with the best mean
    lower: dict[str, bool]  # column -> lower is better


def comparison_tables(results: dict[str, Any]) -> list[Table]:
    extra = tuple(results.get("lower_is_better", ()))
    methods = results["methods"]
    names = list(dict.fromkeys(t for m in methods.values() for t in m.get("metrics", {})))
    order = table_order()
    known = [next((k for k, prefix in enumerate(order) if n.startswith(prefix)), len(order)) for n in names]
    names = [n for _, _, n in sorted(zip(known, range(len(names)), names))]  # task order, then as found
    tables = []
    for name in names:
        rows = {m: methods[m]["metrics"][name] for m in methods if name in methods[m].get("metrics", {})}
        columns = list(dict.fromkeys(c for row in rows.values() for c in row))
        best, lower = {}, {}
        for column in columns:
            lower[column] = lower_is_better(column, extra)
            means = {m: mean_of(row.get(column)) for m, row in rows.items()}
            defined = {m: v for m, v in means.items() if v is not None}
            if len(defined) < 2:
                best[column] = set()  # one number is not a comparison
                continue
            target = min(defined.values()) if lower[column] else max(defined.values())
            tied = {m for m, v in defined.items() if math.isclose(v, target, rel_tol=1e-9, abs_tol=1e-12)}
            best[column] = tied if len(tied) < len(defined) else set()  # all equal: nobody is best
        tables.append(Table(name, columns, list(rows), rows, best, lower))
    return tables


def _distinguishable(a: Any, b: Any) -> bool:
    """Whether two values differ by more than their spread over seeds (always, without a spread)."""
    spread = max(spread_of(a) or 0.0, spread_of(b) or 0.0)
    return abs(mean_of(a) - mean_of(b)) > spread


def _relation(a: str, b: str, values: dict[str, Any], lower: bool, top: list[str]) -> str | None:
    """How ``a`` stands against ``b`` in words, or None when ``a`` clearly beats ``b`` (or both share
    the top, which the first sentence says)."""
    ma, mb = mean_of(values[a]), mean_of(values[b])
    va, vb = format_value(values[a]), format_value(values[b])
    if math.isclose(ma, mb, abs_tol=1e-12):
        return None if a in top else f"{a} ties with {b} ({va})"
    noise = "" if _distinguishable(values[a], values[b]) else ", within the spread over seeds"
    if (ma > mb) if lower else (ma < mb):
        return f"{a} does not beat {b} ({va} vs {vb}{noise})"
    if noise:
        return f"{a} is ahead of {b} by less than the spread over seeds ({va} vs {vb})"
    return None


def _table_summary(table: Table, baseline: str | None) -> str | None:
    headline = table.columns[0]
    values = {m: table.values[m].get(headline) for m in table.methods}
    defined = {m: v for m, v in values.items() if mean_of(v) is not None}
    if len(defined) < 2:
        if len(values) < 2:
            return None
        return (f"{table.name}: {headline} is undefined for {'every method' if not defined else 'all but one method'} "
                "on this data (see the evaluation's warnings, e.g. a finding with no positive in the test split); "
                "nothing can be compared on it.")
    lower = table.lower[headline]
    direction = "lower is better" if lower else "higher is better"
    ordered = sorted(defined, key=lambda m: mean_of(defined[m]), reverse=not lower)
    top = [m for m in ordered if math.isclose(mean_of(defined[m]), mean_of(defined[ordered[0]]), abs_tol=1e-12)]
    if len(top) == len(ordered):
        return (f"{table.name} ({headline}, {direction}): every method scores {format_value(defined[top[0]])}; "
                "this data does not separate them.")
    best = f"best is {top[0]} with" if len(top) == 1 else f"best are {' and '.join(top)}, tied at"
    text = [f"{table.name} ({headline}, {direction}): {best} {format_value(defined[top[0]])}; "
            f"order: {', '.join(f'{m} {format_value(defined[m])}' for m in ordered)}."]
    pairs = [(m, baseline) for m in ordered if baseline in defined and m != baseline]
    pairs += [(a, b) for a, b in claims() if a in defined and b in defined]
    pairs.append((top[-1], ordered[len(top)]))  # the best against the runner-up
    statements = (_relation(a, b, defined, lower, top) for a, b in pairs)
    text += [f"{s}." for s in dict.fromkeys(x for x in statements if x)]
    return " ".join(text)


def summary(results: dict[str, Any]) -> list[str]:
    """Plain sentences, one paragraph per table: the best method on the headline number, the order,
    and every claim this data does not support (a method not beating the baseline, or not beating
    the method it is meant to improve on, or ahead only within the spread over seeds)."""
    baseline = results.get("baseline")
    return [p for p in (_table_summary(t, baseline) for t in comparison_tables(results)) if p]
