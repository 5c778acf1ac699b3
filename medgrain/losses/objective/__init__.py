"""Objectives: what each pretraining method computes from a model and a batch, one module each.

- ``clip``: InfoNCE between the image and one text (the report, or one granularity).
- ``mgll``: MGLL over every granularity's text, soft targets from equal texts (``batch["text_ids"]``).
- ``mgca``: MGCA's instance (ITA), token (TCA) and prototype (CPA) alignment on the report.
- ``mgca+mgll``: MGLL over the granularity texts takes ITA's place as the global alignment;
  TCA and CPA run on the report as in MGCA.

Texts may be absent (``batch["present"][g]``, ``batch["report_present"]``): the text tower runs on the
present texts only, their features are put back in batch order with zero rows for the absent ones,
and the losses get the masks.

A new objective is one module here that registers itself in ``OBJECTIVES`` (see ``base``), imported
below; the config's allowed names and sections, the command line, the demo and the report follow.
The trainer only sees ``Objective.forward(model, batch) -> {"loss": ..., parts...}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from medgrain.losses.objective.base import OBJECTIVES, Objective, ObjectiveOptions, loss_default

# isort: off
# Registered in the order the command line, the demo and the report list them: the baseline, then
# each method after the ones it builds on.
from medgrain.losses.objective.clip import ClipObjective, ClipOptions
from medgrain.losses.objective.mgll import MGLLObjective, MGLLOptions
from medgrain.losses.objective.mgca import MGCAObjective, MGCAOptions
from medgrain.losses.objective.mgca_mgll import MGCAMGLLObjective
# isort: on


def build_objective(cfg, granularities: Sequence[str], has_report: bool, embed_dim: int) -> Objective:
    """The objective ``cfg.name`` (``cfg`` is a ``medgrain.training.config.ObjectiveConfig``), built for
    the data's ``granularities`` and reports and the model's ``embed_dim``."""
    return OBJECTIVES.get(cfg.name).from_config(cfg, granularities, has_report, embed_dim)


__all__ = ["OBJECTIVES", "ClipObjective", "ClipOptions", "MGCAMGLLObjective", "MGCAObjective", "MGCAOptions",
           "MGLLObjective", "MGLLOptions", "Objective", "ObjectiveOptions", "build_objective", "loss_default"]
