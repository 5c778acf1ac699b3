"""What an evaluation task returns, and the result JSON its caller writes.

A task computes and returns a ``TaskResult`` (its options, metrics, warnings and the raw per-image
scores) and neither prints nor writes; ``result_record`` adds what was evaluated on what (checkpoint,
data, split sizes, versions, time) and ``write_result`` writes it. The report reads these files and
never recomputes a metric: per-image scores are stored so that it can draw ROC curves from them.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medgrain.io import atomic_write

logger = logging.getLogger(__name__)


@dataclass
class PerImageScores:
    """One score per image and finding: what a figure (an ROC curve) needs and a metric was computed from.

    ``scores`` (N, F) are probabilities (or any monotone score) of the findings ``names``, ``labels``
    (N, F) the multi-hot (or one-hot) ground truth, ``ids`` the records' ids; ``description`` says which
    run they are (e.g. "prompt ensemble", "100% labels, seed 0")."""

    ids: list[str]
    names: list[str]
    scores: np.ndarray
    labels: np.ndarray
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "names": list(self.names),
                "scores": np.asarray(self.scores, dtype=np.float64).tolist(),
                "labels": np.asarray(self.labels).astype(int).tolist(), "description": self.description}


@dataclass
class TaskResult:
    """What a task computed: the options it ran with (defaults resolved), its metrics, warnings (all
    that changes how to read the numbers) and, where it scores images, the per-image scores."""

    options: dict[str, Any]
    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    scores: PerImageScores | None = None

    def warn(self, message: str) -> None:
        """Record something that changes how to read the result (and log it as it happens)."""
        logger.warning(message)
        self.warnings.append(message)

    def to_dict(self) -> dict[str, Any]:
        out = {"options": self.options, "metrics": self.metrics, "warnings": self.warnings}
        if self.scores is not None:
            out["scores"] = self.scores.to_dict()
        return out


def result_record(task: str, ctx, result: TaskResult, seed: int | list[int], elapsed_s: float) -> dict[str, Any]:
    """The result JSON of ``task`` run in ``ctx`` (an ``EvalContext``); see docs/evaluation.md."""
    from medgrain import __version__
    from medgrain.evaluation.data import split_sizes

    body = result.to_dict()
    record = {
        "task": task,
        "checkpoint": ctx.encoder.checkpoint,
        "checkpoint_key": ctx.encoder.key,
        "model": ctx.encoder.config.model_dump(mode="json"),
        "data": str(ctx.manifest.path.resolve()),
        "splits": split_sizes(ctx.manifest),
        "options": body["options"],
        "seed": seed,
        "metrics": body["metrics"],
        "warnings": body["warnings"],
        "medgrain_version": __version__,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed_s, 2),
    }
    if getattr(ctx, "skips", None) is not None:  # on_error=skip: what was left out, by reason
        record["skipped"] = ctx.skips.summary()
    if "scores" in body:
        record["scores"] = body["scores"]
    return record


def write_result(result: dict[str, Any], out: str | Path | None) -> dict[str, Any]:
    """Write the result JSON (strict: a NaN that slipped through is an error, not a silent ``NaN``)."""
    import json

    if out is None:
        return result
    out = Path(out)
    atomic_write(out, json.dumps(result, indent=2, allow_nan=False, default=str) + "\n")
    logger.info("wrote %s", out)
    return result


def by_fraction(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Group per-seed runs (each with ``fraction``, ``seed``, ``n_train`` and ``metrics``) by label
    fraction, with the mean and spread over seeds of every macro and per-class metric."""
    from medgrain.evaluation.fractions import fraction_name
    from medgrain.evaluation.metrics import summarise_runs

    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(fraction_name(run["fraction"]), []).append(run)
    return {
        name: {
            "seeds": [r["seed"] for r in group],
            "n_train": [r["n_train"] for r in group],
            "macro": summarise_runs([r["metrics"]["macro"] for r in group]),
            "per_class": summarise_runs([r["metrics"].get("per_class", {}) for r in group]),
            "runs": group,
        }
        for name, group in grouped.items()
    }


def finish_classification(result: TaskResult, runs: list[dict[str, Any]], multiclass: bool, split: str) -> TaskResult:
    """The end of the linear probe and of fine-tuning: the runs grouped by fraction, and the findings left
    out of the macro means named."""
    result.metrics = {"task_type": "multiclass" if multiclass else "multilabel", "fractions": by_fraction(runs)}
    excluded = {n: r for run in runs for n, r in run["metrics"]["excluded"].items()}
    if excluded:
        result.warn(f"left out of the macro means (undefined on split '{split}'): {excluded}")
    return result
