"""The registry of evaluation tasks (timm-style: a task registers itself next to its code).

Each task is a function ``task(ctx: EvalContext, options) -> TaskResult`` registered with its options
class (pydantic, with defaults and a description per field), the context fields it uses, and how its
stored metrics read as tables::

    @register_task("zero-shot", options=ZeroShotOptions, context=("valid_split", "cache_dir"),
                   title="zero-shot", tables=zero_shot_tables)
    def zero_shot_task(ctx, options): ...

Everything that lists tasks asks ``EVAL_TASKS``: ``medgrain evaluate`` (its choices, and each task's
flags, derived from the options class), ``evaluate_all``, the demo and the report (a table per task,
and ROC curves for every task that stores per-image scores). ``evaluate(task, checkpoint, data, ...)``
is the Python entry: it builds the context, runs the task and, given ``out``, writes the result JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from medgrain.evaluation.context import OPTIONAL, ContextOptions, EvalContext
from medgrain.registry import Registry
from medgrain.threads import use_threads

EVAL_TASKS: Registry[Callable] = Registry("evaluation task")


@dataclass(frozen=True)
class TaskSpec:
    """A registered task and what callers need to know about it."""

    name: str
    run: Callable  # (EvalContext, options) -> TaskResult
    options: type[BaseModel]
    context: tuple[str, ...]  # the OPTIONAL context fields the task uses
    title: str  # its table's name in the report and the console
    help: str
    available: Callable | None  # (ctx) -> why it cannot run on this data and encoder, or None
    tables: Callable  # (metrics) -> {table: {column: value}}: what the report compares
    console: Callable  # (record) -> [present.Table]: what the command line prints
    headline: Callable  # (metrics) -> (label, value): the task's one number in the suite's summary
    scores: bool  # whether its results store per-image scores of the findings (the report draws ROC curves)


def _numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """The plain numbers of a metrics dict (its ``macro`` dict when it has one), each with its interval."""
    from medgrain.evaluation.present import with_ci

    values = metrics.get("macro", metrics)
    return {k: with_ci(values, k) for k, v in values.items()
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def register_task(name: str, *, options: type[BaseModel], context: tuple[str, ...] = (), title: str | None = None,
                  help: str = "", available: Callable | None = None, tables: Callable | None = None,
                  console: Callable | None = None, headline: Callable | None = None, scores: bool = False) -> Callable:
    """Register ``task(ctx, options) -> TaskResult`` under ``name``. Without ``tables``, ``console`` or
    ``headline`` the metrics' plain numbers (its ``macro`` dict, if any) are shown as one table. ``scores``:
    the task's results carry per-image scores of the findings (``TaskResult.scores``)."""
    unknown = sorted(set(context) - set(OPTIONAL))
    if unknown:
        raise ValueError(f"task {name!r}: unknown context fields {unknown}; known: {list(OPTIONAL)}")
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise TypeError(f"task {name!r}: options must be a pydantic model class, got {options!r}")
    label = title or name

    def default_tables(metrics):
        return {label: _numbers(metrics)}

    def default_console(record):
        from medgrain.evaluation.present import Table, record_title

        return [Table(record_title(label, record), ["metric", "value"], [[k, v] for k, v in
                                                                         _numbers(record["metrics"]).items()])]

    def default_headline(metrics):
        return next(iter(_numbers(metrics).items()), ("-", None))

    def decorator(run: Callable) -> Callable:
        EVAL_TASKS.add(name, run, help=help, options=options, context=tuple(context), title=label,
                       available=available, tables=tables or default_tables, console=console or default_console,
                       headline=headline or default_headline, scores=scores)
        return run

    return decorator


def task_spec(name: str) -> TaskSpec:
    entry = EVAL_TASKS.entry(name)
    return TaskSpec(name=name, run=entry.obj, help=entry.help, **entry.meta)


def task_specs() -> list[TaskSpec]:
    return [task_spec(name) for name in EVAL_TASKS.names()]


# ------------------------------------------------------------------------------------ options


def _error_message(e: ValidationError, what: str) -> str:
    """The first pydantic error, in words that name the option."""
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "options"
    if first["type"] == "extra_forbidden":
        return f"{what}: option {where!r} does not apply (see its options class)"
    if first["type"] == "literal_error":
        return f"{what}: {where} must be one of {first['ctx']['expected']}, got {first['input']!r}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{what}: {message}" if where == "options" or first["type"] == "value_error" else f"{what}: {where}: {message}"


def make_options(spec: TaskSpec, values: dict[str, Any]) -> BaseModel:
    """The task's options from ``values``; an unknown option or a bad value is a ValueError naming it."""
    try:
        return spec.options.model_validate(values)
    except ValidationError as e:
        raise ValueError(_error_message(e, spec.name)) from None


def context_options(values: dict[str, Any]) -> ContextOptions:
    try:
        return ContextOptions.model_validate(values)
    except ValidationError as e:
        raise ValueError(_error_message(e, "evaluation")) from None


def split_arguments(spec: TaskSpec, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kwargs`` as (context fields, task options); a context field the task does not use is an error."""
    context_fields = set(ContextOptions.model_fields)
    context = {k: v for k, v in kwargs.items() if k in context_fields}
    unused = sorted(k for k in context if k in OPTIONAL and k not in spec.context)
    if unused:
        raise ValueError(f"{spec.name}: option(s) {', '.join(unused)} do not apply to this task")
    return context, {k: v for k, v in kwargs.items() if k not in context_fields}


def run_task(name: str, ctx: EvalContext, options: BaseModel | dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a registered task in ``ctx`` and return its result JSON (a dict; nothing printed or written)."""
    from medgrain.evaluation.results import result_record

    spec = task_spec(name)
    if not isinstance(options, BaseModel):
        options = make_options(spec, dict(options or {}))
    started = time.time()
    result = spec.run(ctx, options)
    result.options = {**ctx.describe(spec.context), **result.options}
    seed = list(ctx.seeds) if "seeds" in spec.context else ctx.seeds[0]
    return result_record(name, ctx, result, seed, time.time() - started)


def open_context(checkpoint: str, data, encoder=None, **fields: Any) -> EvalContext:
    """An ``EvalContext`` from the user's words; ``data`` is a manifest path or a ``Manifest``."""
    from medgrain.data.manifest import Manifest

    manifest = data if isinstance(data, Manifest) else None
    path = data.path if manifest is not None else data
    options = context_options({"checkpoint": str(checkpoint), "data": path, **fields})
    use_threads(options.workers)  # the process's cores between compute and data workers (no oversubscription)
    return EvalContext.open(options, encoder=encoder, manifest=manifest)


def evaluate(task: str, checkpoint: str | Path, data, *, out: str | Path | None = None, encoder=None,
             **kwargs: Any) -> dict[str, Any]:
    """Run ``task`` on ``checkpoint`` (a directory, ``random`` or ``imagenet``) and ``data`` (a manifest
    path or ``Manifest``); ``kwargs`` are the context's fields (``ContextOptions``) and the task's options.
    Returns the result JSON, also written to ``out`` when given."""
    from medgrain.evaluation.results import write_result

    spec = task_spec(task)
    context, options = split_arguments(spec, kwargs)
    options = make_options(spec, options)  # a bad option fails before the encoder is loaded
    ctx = open_context(checkpoint, data, encoder=encoder, **context)
    return write_result(run_task(task, ctx, options), out)
