"""``mgca``: MGCA's instance (ITA), token (TCA) and prototype (CPA) alignment on the report
(Wang et al., "Multi-Granularity Cross-modal Alignment for Generalized Medical Visual Representation
Learning", NeurIPS 2022, arXiv:2210.06044; the loss is ``medgrain.losses.mgca``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pydantic import Field, model_validator
from torch import nn

from medgrain.losses.mgca import MGCALoss, token_weights_from_attention
from medgrain.losses.objective.base import (
    OBJECTIVES,
    Objective,
    ObjectiveOptions,
    loss_default,
    rows_in_batch,
    text_and_present,
)

# Options of the objective itself (how token weights are made), not arguments of MGCALoss.
TOKEN_WEIGHT_OPTIONS = ("weight_low", "weight_high", "word_weight_off_by_one")


class MGCAOptions(ObjectiveOptions):
    """``MGCALoss``'s arguments (defaults are the loss's own) and how the token weights are made."""

    lambda_ita: float = Field(loss_default(MGCALoss, "lambda_ita"), ge=0)
    lambda_tca: float = Field(loss_default(MGCALoss, "lambda_tca"), ge=0)
    lambda_cpa: float = Field(loss_default(MGCALoss, "lambda_cpa"), ge=0)
    num_prototypes: int = Field(loss_default(MGCALoss, "num_prototypes"), ge=2)
    ita_temperature: float = Field(loss_default(MGCALoss, "ita_temperature"), gt=0)
    tca_temperature: float = Field(loss_default(MGCALoss, "tca_temperature"), gt=0)
    attention_temperature: float = Field(loss_default(MGCALoss, "attention_temperature"), gt=0)
    cpa_temperature: float = Field(loss_default(MGCALoss, "cpa_temperature"), gt=0)
    epsilon: float = Field(loss_default(MGCALoss, "epsilon"), gt=0)
    sinkhorn_iterations: int = Field(loss_default(MGCALoss, "sinkhorn_iterations"), ge=1)
    learnable_cross_attention: bool = loss_default(MGCALoss, "learnable_cross_attention")
    freeze_prototypes_epochs: int = Field(loss_default(MGCALoss, "freeze_prototypes_epochs"), ge=0)
    # [CLS]-attention weights are clamped to these per-row quantiles before renormalising.
    weight_low: float = Field(loss_default(token_weights_from_attention, "low"), ge=0, le=1)
    weight_high: float = Field(loss_default(token_weights_from_attention, "high"), ge=0, le=1)
    # True reproduces the released code's bug: each word piece weighted by the attention to the next one.
    word_weight_off_by_one: bool = False

    @model_validator(mode="after")
    def _weights_ordered(self) -> MGCAOptions:
        if self.weight_low >= self.weight_high:
            raise ValueError("weight_low must be below weight_high")
        return self

    def loss_arguments(self) -> dict:
        return self.model_dump(exclude=set(TOKEN_WEIGHT_OPTIONS))


def _report_tokens(model: nn.Module, batch: Mapping, img: dict, low: float, high: float, off_by_one: bool):
    """The report's global, word and mask outputs and word weights for every sample of the batch, the text
    tower run on the present reports only; an absent report has a zero global row and no word."""
    tokens, present = text_and_present(batch, "report")
    if tokens is None:
        n, dim = img["global"].shape
        words = img["global"].new_zeros((n, 1, dim))
        mask = torch.zeros((n, 1), dtype=torch.bool, device=words.device)
        return {"global": img["global"].new_zeros((n, dim)), "words": words, "word_mask": mask}, mask.float(), present
    txt = model.text_tokens(tokens, attention_off_by_one=off_by_one)
    word_weights = token_weights_from_attention(txt["attention"], txt["word_mask"], low, high)
    if present is None:
        return txt, word_weights, None
    txt = {k: rows_in_batch(txt[k], present) for k in ("global", "words", "word_mask")}
    return txt, rows_in_batch(word_weights, present), present


def _token_inputs(model: nn.Module, batch: Mapping, low: float, high: float, off_by_one: bool = False):
    img = model.image_tokens(batch["images"])
    txt, word_weights, present = _report_tokens(model, batch, img, low, high, off_by_one)
    patch_mask = torch.ones(img["attention"].shape, dtype=torch.bool, device=img["attention"].device)
    patch_weights = token_weights_from_attention(img["attention"], patch_mask, low, high)
    return img, txt, patch_weights, word_weights, present


@OBJECTIVES.register("mgca", help="MGCA: instance, token and prototype alignment of the image and the report",
                     options=MGCAOptions, improves_on=("clip",))
class MGCAObjective(Objective):
    name = "mgca"
    needs_report = True
    aligns_tokens = True
    chunk_limitation = (
        "gradient caching is not available for MGCA: MGCA's heads (global and token-wise) normalise with "
        "BatchNorm over the batch, which passes over chunks of it would change, so the cached gradients "
        "would not be the step's; use train.grad_checkpointing to fit larger batches"
    )

    def texts_read(self) -> list[str]:
        return ["report"]

    def unused_parameters(self, model: nn.Module) -> list[str]:
        return ["logit_scale"]  # ITA has its own fixed temperature

    def __init__(self, granularities: Sequence[str], embed_dim: int, options: MGCAOptions | None = None):
        super().__init__(granularities)
        options = options or MGCAOptions()
        self.weight_low, self.weight_high = options.weight_low, options.weight_high
        self.word_weight_off_by_one = options.word_weight_off_by_one
        self.loss = MGCALoss(embed_dim=embed_dim, **options.loss_arguments())

    @classmethod
    def check_data(cls, granularities: Sequence[str], has_report: bool) -> None:
        if not has_report:
            raise ValueError(f"the {cls.name} objective aligns words with image regions and needs reports in the data")

    @classmethod
    def from_config(cls, cfg, granularities: Sequence[str], has_report: bool, embed_dim: int) -> MGCAObjective:
        cls.check_data(granularities, has_report)
        return cls(granularities, embed_dim, cfg.mgca)

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_epoch(epoch)

    def after_backward(self) -> None:
        # MGCA keeps the prototypes fixed for the first epoch(s). Dropping their gradient after backward
        # (rather than toggling requires_grad) keeps DDP's gradient buckets unchanged, and AdamW skips
        # a parameter whose .grad is None: no update and no weight decay.
        self.loss.drop_frozen_prototype_grad_()

    def token_inputs(self, model: nn.Module, batch: Mapping):
        return _token_inputs(model, batch, self.weight_low, self.weight_high, self.word_weight_off_by_one)

    def forward(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        img, txt, pw, ww, present = self.token_inputs(model, batch)
        return self.loss(
            img["global"], txt["global"], img["tokens"], txt["words"], txt["word_mask"], pw, ww, present=present
        )
