"""``clip``: InfoNCE between the image and one text, the baseline (Radford et al., ICML 2021,
arXiv:2103.00020)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medgrain.losses.clip import ClipLoss
from medgrain.losses.objective.base import (
    OBJECTIVES,
    Objective,
    ObjectiveOptions,
    encode_present_text,
    text_and_present,
    token_head_parameters,
)


class ClipOptions(ObjectiveOptions):
    # Which text the image is contrasted with: "report" or a granularity name (default: the report when
    # the data has one, else the finest granularity).
    text: str | None = None


@OBJECTIVES.register("clip", help="InfoNCE between the image and one text (the report, or one granularity)",
                     options=ClipOptions)
class ClipObjective(Objective):
    name = "clip"

    def __init__(self, granularities: Sequence[str], text: str):
        super().__init__(granularities)
        self.text = text
        self.needs_report = text == "report"
        self.loss = ClipLoss()

    @classmethod
    def from_config(cls, cfg, granularities: Sequence[str], has_report: bool, embed_dim: int) -> ClipObjective:
        text = cfg.clip.text or ("report" if has_report else (granularities[-1] if granularities else None))
        if text is None:
            raise ValueError("the clip objective needs a report or at least one granularity of text")
        if text != "report" and text not in granularities:
            raise ValueError(f"objective.clip.text={text!r} is neither 'report' nor one of {list(granularities)}")
        if text == "report" and not has_report:
            raise ValueError("objective.clip.text='report' but the data has no reports")
        return cls(granularities, text)

    chunk_limitation = None

    def texts_read(self) -> list[str]:
        return [self.text]

    def unused_parameters(self, model: nn.Module) -> list[str]:
        return token_head_parameters(model)

    def embed(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        tokens, present = text_and_present(batch, self.text)
        image = model.encode_image(batch["images"])
        return {"image": image, "text": encode_present_text(model, tokens, present, image)}

    def loss_from_embeddings(self, model: nn.Module, embeddings: Mapping, batch: Mapping) -> dict[str, torch.Tensor]:
        _, present = text_and_present(batch, self.text)
        return self.loss(embeddings["image"], embeddings["text"], model.logit_scale_value(), present=present)

    def forward(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        return self.loss_from_embeddings(model, self.embed(model, batch), batch)
