"""``mgll``: MGLL over every granularity's text, soft targets from equal texts (``batch["text_ids"]``)
(Li et al., "Boosting Medical Visual Understanding From Multi-Granular Language Learning", ICLR 2026,
arXiv:2511.15943; the loss is ``medgrain.losses.mgll``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from medgrain.losses.mgll import MGLLLoss
from medgrain.losses.objective.base import (
    OBJECTIVES,
    Objective,
    ObjectiveOptions,
    encode_present_text,
    loss_default,
    text_and_present,
    token_head_parameters,
)


class MGLLOptions(ObjectiveOptions):
    """``MGLLLoss``'s arguments; the defaults are the loss's own."""

    alpha_clip: float = Field(loss_default(MGLLLoss, "alpha_clip"), ge=0)
    alpha_point: float = Field(loss_default(MGLLLoss, "alpha_point"), ge=0)
    alpha_kl: float = Field(loss_default(MGLLLoss, "alpha_kl"), ge=0)
    cooccurrence: Literal["exact", "jaccard"] = loss_default(MGLLLoss, "cooccurrence")
    point_target: Literal["cooccurrence", "soft"] = loss_default(MGLLLoss, "point_target")
    granularity_reduction: Literal["mean", "sum"] = loss_default(MGLLLoss, "granularity_reduction")


@OBJECTIVES.register("mgll", help="MGLL over every granularity's text: soft multi-label targets, point-wise "
                                  "sigmoid and cross-granularity KL", options=MGLLOptions, improves_on=("clip",))
class MGLLObjective(Objective):
    name = "mgll"

    def __init__(self, granularities: Sequence[str], options: MGLLOptions | None = None):
        super().__init__(granularities)
        if not self.granularities:
            raise ValueError("the mgll objective needs at least one granularity of text in the data")
        self.loss = MGLLLoss(**(options or MGLLOptions()).model_dump())

    @classmethod
    def from_config(cls, cfg, granularities: Sequence[str], has_report: bool, embed_dim: int) -> MGLLObjective:
        return cls(granularities, cfg.mgll)

    def global_texts(self, model: nn.Module, batch: Mapping, image: torch.Tensor):
        """(features, labels, present or None), one entry per granularity."""
        # One text-tower pass per granularity, as in MGLL: texts of different granularities never
        # share a softmax, so they need not share a padded batch either.
        pairs = [text_and_present(batch, g) for g in self.granularities]
        feats = [encode_present_text(model, tokens, present, image) for tokens, present in pairs]
        labels = [batch["text_ids"][g] for g in self.granularities]
        masks = [present for _, present in pairs]
        return feats, labels, (None if any(m is None for m in masks) else masks)

    chunk_limitation = None

    def unused_parameters(self, model: nn.Module) -> list[str]:
        return token_head_parameters(model)

    def embed(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        image = model.encode_image(batch["images"])
        feats, _, _ = self.global_texts(model, batch, image)
        return {"image": image, **{f"text:{g}": f for g, f in zip(self.granularities, feats)}}

    def loss_from_embeddings(self, model: nn.Module, embeddings: Mapping, batch: Mapping) -> dict[str, torch.Tensor]:
        feats = [embeddings[f"text:{g}"] for g in self.granularities]
        labels = [batch["text_ids"][g] for g in self.granularities]
        masks = [text_and_present(batch, g)[1] for g in self.granularities]
        present = None if any(m is None for m in masks) else masks
        return self.loss(embeddings["image"], feats, labels, model.logit_scale_value(), present=present)

    def forward(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        return self.loss_from_embeddings(model, self.embed(model, batch), batch)
