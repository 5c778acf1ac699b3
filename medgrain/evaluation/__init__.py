"""Downstream evaluation: zero-shot, retrieval, linear probe, fine-tuning, segmentation, detection, grounding.

Every task registers itself in ``EVAL_TASKS`` (``medgrain.evaluation.registry``) with its options
class: ``task(ctx: EvalContext, options) -> TaskResult`` computes and returns (options, metrics, warnings,
per-image scores) and neither prints nor writes. ``evaluate(task, checkpoint, data, out=None, **kwargs)``
and the named wrappers (``zero_shot``, ``linear_probe`` ...) return the result JSON (task, checkpoint,
data, split sizes, options, metrics, warnings, scores, version, seed, time) and, with ``out``, write it.
``checkpoint`` is a model directory, ``random`` or ``imagenet`` (with ``model=PRESET``). See
docs/evaluation.md.
"""

# Importing the task modules registers them, in the order the command line and the report show them.
from medgrain.evaluation.zeroshot import DEFAULT_PROMPTS, load_prompts, zero_shot  # isort: skip
from medgrain.evaluation.retrieval import retrieval  # isort: skip
from medgrain.evaluation.linear_probe import linear_probe  # isort: skip
from medgrain.evaluation.finetune import finetune  # isort: skip
from medgrain.evaluation.segmentation import segment  # isort: skip
from medgrain.evaluation.detection import detect  # isort: skip
from medgrain.evaluation.grounding import grounding  # isort: skip
from medgrain.evaluation.context import ContextOptions, EvalContext
from medgrain.evaluation.encoder import Encoder, load_encoder
from medgrain.evaluation.features import extract_features
from medgrain.evaluation.fractions import FRACTIONS, draw_fraction, fraction_path, load_or_draw_fraction
from medgrain.evaluation.registry import EVAL_TASKS, evaluate, register_task, run_task, task_spec, task_specs
from medgrain.evaluation.results import PerImageScores, TaskResult, write_result
from medgrain.evaluation.suite import evaluate_all, run_suite

__all__ = [
    "DEFAULT_PROMPTS",
    "EVAL_TASKS",
    "FRACTIONS",
    "ContextOptions",
    "Encoder",
    "EvalContext",
    "PerImageScores",
    "TaskResult",
    "detect",
    "draw_fraction",
    "evaluate",
    "evaluate_all",
    "extract_features",
    "finetune",
    "grounding",
    "fraction_path",
    "linear_probe",
    "load_encoder",
    "load_or_draw_fraction",
    "load_prompts",
    "register_task",
    "retrieval",
    "run_suite",
    "run_task",
    "segment",
    "task_spec",
    "task_specs",
    "write_result",
    "zero_shot",
]
