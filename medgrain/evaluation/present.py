"""How a caller (the command line, the demo) shows a result: tables built from the result JSON, printed
by one formatter. Tasks never print; each registers how its metrics read as tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.table import Table as RichTable

from medgrain.console import make_console

# Tables go to stdout, progress and log messages to stderr: `medgrain evaluate ... > table.txt` stays clean.
STDOUT = make_console(stderr=False)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]


def with_ci(metrics: dict[str, Any], key: str) -> Any:
    """``metrics[key]`` with its bootstrap interval ``metrics[key + "_ci"]`` attached, when it has one:
    ``{"mean": value, "ci": [low, high]}`` (a summary over seeds keeps its std). A summary over seeds
    keeps each seed's interval as ``seed_cis`` (what tells two such summaries apart: see
    ``medgrain.report.differences``)."""
    value, ci = metrics.get(key), metrics.get(f"{key}_ci")
    if isinstance(value, dict) and isinstance(ci, dict) and isinstance(ci.get("values"), list):
        return {**value, "seed_cis": ci["values"]}
    if value is None or not (isinstance(ci, list) and len(ci) == 2):
        return value
    return {**value, "ci": ci} if isinstance(value, dict) else {"mean": value, "ci": ci}


def fmt(value: Any) -> str:
    """A metric for a table: 3 decimals, ``mean ± std`` for summaries, ``[low, high]`` after a value with
    a 95% interval, ``-`` when undefined."""
    if value is None:
        return "-"
    if isinstance(value, dict) and "mean" in value:
        text = f"{value['mean']:.3f}"
        if value.get("std") is not None:
            text += f" ± {value['std']:.3f}"
        if value.get("ci"):
            text += f" [{value['ci'][0]:.3f}, {value['ci'][1]:.3f}]"
        return text
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def print_tables(tables: list[Table]) -> None:
    for table in tables:
        rich = RichTable(title=table.title, title_justify="left")
        for i, column in enumerate(table.columns):
            rich.add_column(column, justify="left" if i == 0 else "right")
        for row in table.rows:
            rich.add_row(*[fmt(v) for v in row])
        STDOUT.print(rich)


def per_class_rows(metrics: dict[str, Any], names: list[str], columns: list[str]) -> list[list[Any]]:
    """Table rows: one per class, then the macro mean, for a ``multilabel_metrics``-shaped dict."""
    rows = [[name, *(with_ci(metrics["per_class"][name], c) for c in columns)] for name in names]
    rows.append(["macro", *(with_ci(metrics["macro"], c) for c in columns)])
    return rows


def fraction_table(title: str, fractions: dict[str, Any], columns: list[str]) -> Table:
    """One row per label fraction: the training-set sizes and the macro metrics (mean ± std over seeds)."""
    return Table(title, ["labels", "n train", *columns],
                 [[name, "/".join(map(str, sorted(set(f["n_train"])))), *(with_ci(f["macro"], c) for c in columns)]
                  for name, f in fractions.items()])


def fraction_headline(metrics: dict[str, Any], key: str) -> tuple[str, Any]:
    """The headline of a task trained at label fractions: ``key`` at the largest fraction."""
    name, fraction = next(reversed(metrics["fractions"].items()))
    return (f"{key} at {name} labels", fraction["macro"][key])


def record_title(what: str, record: dict[str, Any]) -> str:
    return f"{what} on {record['options'].get('split', 'test')}: {record['data']}"


# The report's columns of classification at label fractions (accuracy goes first on multi-class data).
CLASSIFICATION_COLUMNS = (("auroc", "AUROC"), ("ap", "AP"), ("f1", "F1"))


def fraction_columns(metrics: dict[str, Any], names: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """Columns "LABEL FRACTION" of a task trained at label fractions, largest fraction first (the first
    column is the headline the report's summary compares)."""
    fractions = metrics.get("fractions", {})
    order = sorted(fractions, key=lambda f: -float(f.rstrip("%")))
    multiclass = metrics.get("task_type") == "multiclass"
    keys = ((("accuracy", "accuracy"),) if multiclass else ()) + tuple(names)
    return {f"{label} {fraction}": with_ci(fractions[fraction]["macro"], key)
            for key, label in keys for fraction in order if key in fractions[fraction].get("macro", {})}


def fraction_report(title: str, names: tuple[tuple[str, str], ...]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A task's report tables: one table ``title`` of ``fraction_columns``."""
    return lambda metrics: {title: fraction_columns(metrics, names)}


def fraction_console(what: str, columns: list[str]) -> Callable[[dict[str, Any]], list[Table]]:
    """A task's console tables: one row per label fraction."""
    return lambda record: [fraction_table(record_title(what, record), record["metrics"]["fractions"], columns)]
