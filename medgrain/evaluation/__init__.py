"""Downstream evaluation: zero-shot, retrieval, linear probe, fine-tuning, segmentation, detection.

Every task is a function ``task(checkpoint, data, *, ..., out=None) -> dict`` that prints a table and,
with ``out``, writes the result JSON (task, checkpoint, data, split sizes, options, metrics per class
and averaged, warnings, version, seed, time). ``checkpoint`` is a model directory, ``random`` or
``imagenet`` (with ``model=PRESET``). See docs/evaluation.md.
"""

from medgrain.evaluation.common import Encoder, load_encoder, write_result
from medgrain.evaluation.detection import detect
from medgrain.evaluation.features import extract_features
from medgrain.evaluation.finetune import finetune
from medgrain.evaluation.fractions import FRACTIONS, draw_fraction, fraction_path, load_or_draw_fraction
from medgrain.evaluation.linear_probe import linear_probe
from medgrain.evaluation.retrieval import retrieval
from medgrain.evaluation.segmentation import segment
from medgrain.evaluation.suite import TASK_FUNCTIONS, TASKS, evaluate_all
from medgrain.evaluation.zeroshot import DEFAULT_PROMPTS, load_prompts, zero_shot

__all__ = [
    "DEFAULT_PROMPTS",
    "FRACTIONS",
    "TASKS",
    "TASK_FUNCTIONS",
    "Encoder",
    "detect",
    "draw_fraction",
    "evaluate_all",
    "extract_features",
    "finetune",
    "fraction_path",
    "linear_probe",
    "load_encoder",
    "load_or_draw_fraction",
    "load_prompts",
    "retrieval",
    "segment",
    "write_result",
    "zero_shot",
]
