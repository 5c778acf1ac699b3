"""The whole downstream suite on one checkpoint and one manifest, with defaults sized for the data.

``run_suite(ctx, ...)`` runs every registered task that the data and the encoder allow (the others are
listed with the reason) and returns one result; ``on_task`` is called after each task, so a caller can
rewrite its JSON and a long run that stops keeps what it finished. ``evaluate_all`` is the Python entry.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medgrain.evaluation.context import ContextOptions, EvalContext
from medgrain.evaluation.data import split_sizes
from medgrain.evaluation.fractions import FRACTIONS, fraction_name
from medgrain.evaluation.registry import (
    EVAL_TASKS,
    make_options,
    open_context,
    run_task,
    task_spec,
)
from medgrain.evaluation.results import TaskResult, result_record, write_result

logger = logging.getLogger(__name__)


def sized_defaults(manifest) -> dict:
    """Options that follow the size of the training split.

    - fractions: those whose nominal size ``ceil(f * N)`` reaches 2 records per finding; below that
      a draw is only the positive/negative rule's picks (fractions.py), not a sample of the split;
    - epochs: about 20,000 training images seen at 100% (50 for small data, as in the papers, down
      to 10 for large data), patience a fifth of that;
    - batch size: 8 to 32, an eighth of the training split.

    They apply to the options a task's options class lists in ``sized``, where the user set none.
    """
    n_train = split_sizes(manifest)["train"]
    minimum = 2 * max(1, len(manifest.finding_names))
    fractions = tuple(f for f in FRACTIONS if f == 1 or math.ceil(f * n_train) >= minimum)
    epochs = int(min(50, max(10, round(20000 / max(n_train, 1)))))
    return {"fractions": fractions, "epochs": epochs, "batch_size": int(min(32, max(8, n_train // 8)))}


def route_options(tasks: list[str], given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The given task options of each task: those its options class has. An option that no task takes is an
    error (it would silently do nothing)."""
    routed = {task: {k: v for k, v in given.items() if k in task_spec(task).options.model_fields} for task in tasks}
    unused = sorted(set(given) - {k for values in routed.values() for k in values})
    if unused:
        raise ValueError(f"evaluate all: option(s) {', '.join(unused)} apply to none of the tasks {tasks}")
    return routed


def suite_options(tasks: list[str], given: dict[str, Any], sized: dict[str, Any]) -> dict[str, BaseModel]:
    """Each task's options: the given values its options class has, then the sized ones it lists in
    ``sized`` where none was given."""
    options = {}
    for task, values in route_options(tasks, given).items():
        spec = task_spec(task)
        for key in getattr(spec.options, "sized", ()):
            values.setdefault(key, sized[key])
        options[task] = make_options(spec, values)
    return options


def _run_one(task: str, ctx: EvalContext, options: BaseModel) -> dict[str, Any]:
    """A task's entry in the suite: its options, metrics, warnings (and scores), or why it did not run."""
    spec = task_spec(task)
    started = time.time()
    reason = spec.available(ctx) if spec.available else None
    if reason:
        entry = {"skipped": reason}
        logger.warning("%s skipped: %s", task, reason)
    else:
        try:
            record = run_task(task, ctx, options)
            entry = {k: record[k] for k in ("options", "metrics", "warnings", "scores") if k in record}
        except (ValueError, RuntimeError, OSError) as e:  # one task's failure must not lose the others
            entry = {"error": f"{type(e).__name__}: {e}"}
            logger.warning("%s failed: %s", task, e)
    entry["elapsed_s"] = round(time.time() - started, 2)
    return entry


def _task_names(tasks) -> list[str]:
    tasks = list(tasks) if tasks else EVAL_TASKS.names()
    for task in tasks:
        task_spec(task)  # an unknown name fails before anything runs
    return tasks


def run_suite(ctx: EvalContext, tasks: list[str] | None = None, epochs: int | None = None,
              on_task: Callable[[dict[str, Any]], None] | None = None, **given: Any) -> dict[str, Any]:
    """Every task of ``tasks`` (default: every registered task) the data and the encoder allow; the suite's
    result JSON, with ``metrics[task]`` each task's options, metrics, warnings and scores, or ``skipped``
    or ``error``. ``given``: task options, each passed to the tasks whose options class has it."""
    tasks = _task_names(tasks)
    sized = sized_defaults(ctx.manifest)
    if epochs:
        sized["epochs"] = epochs
    sized["patience"] = max(3, sized["epochs"] // 5)
    options = suite_options(tasks, given, sized)
    started = time.time()
    suite = TaskResult({"tasks": tasks, "seeds": list(ctx.seeds), "fractions": [fraction_name(f) for f in ctx.fractions],
                        **{k: sized[k] for k in ("epochs", "patience", "batch_size")}}, {})
    skipped = [fraction_name(f) for f in FRACTIONS if f not in ctx.fractions]
    if skipped:
        suite.warn(f"label fractions {skipped} left out: fewer than 2 records per finding "
                   f"in {split_sizes(ctx.manifest)['train']} training records")
    suite.options = {**ctx.describe(("seeds", "fractions")), **suite.options}
    record = {}
    for task in tasks:
        suite.metrics[task] = _run_one(task, ctx, options[task])
        record = result_record("all", ctx, suite, list(ctx.seeds), time.time() - started)
        if on_task is not None:
            on_task(record)
    return record


def evaluate_all(checkpoint: str | Path, data, out: str | Path | None = None, *, tasks=None, epochs: int | None = None,
                 encoder=None, **kwargs: Any) -> dict[str, Any]:
    """``run_suite`` from the user's words: ``kwargs`` are the context's fields (``ContextOptions``; the
    fractions default to those the training split can fill) and options of the tasks. The JSON is
    rewritten to ``out`` after every task."""
    context = {k: v for k, v in kwargs.items() if k in ContextOptions.model_fields}
    given = {k: v for k, v in kwargs.items() if k not in context}
    route_options(_task_names(tasks), given)  # a misspelt option fails before the encoder is loaded
    ctx = open_context(checkpoint, data, encoder=encoder, **context)
    if "fractions" not in context:
        ctx.fractions = sized_defaults(ctx.manifest)["fractions"]
    return run_suite(ctx, tasks, epochs, on_task=lambda record: write_result(record, out), **given)


def suite_tables(record: dict[str, Any]):
    """The suite's console summary: one row per task with its headline number, or why it did not run."""
    from medgrain.evaluation.present import Table

    rows = []
    for task, entry in record["metrics"].items():
        if "skipped" in entry or "error" in entry:
            rows.append([task, "skipped" if "skipped" in entry else "error", entry.get("skipped") or entry.get("error")])
        else:
            rows.append([task, *task_spec(task).headline(entry["metrics"])])
    return [Table(f"evaluation suite: {record['checkpoint']} on {record['data']}", ["task", "headline", "value"], rows)]
