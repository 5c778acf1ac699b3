"""Objective composition: what each pretraining method computes from a model and a batch.

- ``clip``: InfoNCE between the image and one text (the report, or one granularity).
- ``mgll``: MGLL over every granularity's text, soft targets from equal texts (``batch["text_ids"]``).
- ``mgca``: MGCA's instance (ITA), token (TCA) and prototype (CPA) alignment on the report.
- ``mgca+mgll``: MGLL over the granularity texts takes ITA's place as the global alignment;
  TCA and CPA run on the report as in MGCA.

The trainer only sees ``Objective.forward(model, batch) -> {"loss": ..., parts...}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .clip import ClipLoss
from .mgca import MGCALoss, token_weights_from_attention
from .mgll import MGLLLoss


class Objective(nn.Module):
    """Base: ``needs_report`` and ``granularities`` tell the data pipeline which texts to tokenise."""

    name: str = ""
    needs_report: bool = False

    def __init__(self, granularities: Sequence[str]):
        super().__init__()
        self.granularities = list(granularities)

    def set_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        pass

    def after_backward(self) -> None:  # noqa: B027 - optional hook
        pass


class ClipObjective(Objective):
    name = "clip"

    def __init__(self, granularities: Sequence[str], text: str):
        super().__init__(granularities)
        self.text = text
        self.needs_report = text == "report"
        self.loss = ClipLoss()

    def forward(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        tokens = batch["report"] if self.text == "report" else batch["texts"][self.text]
        image = model.encode_image(batch["images"])
        text = model.encode_text(tokens)
        return self.loss(image, text, model.logit_scale_value())


class MGLLObjective(Objective):
    name = "mgll"

    def __init__(self, granularities: Sequence[str], **mgll_options):
        super().__init__(granularities)
        if not self.granularities:
            raise ValueError("the mgll objective needs at least one granularity of text in the data")
        self.loss = MGLLLoss(**mgll_options)

    def global_texts(self, model: nn.Module, batch: Mapping) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # One text-tower pass per granularity, as in MGLL: texts of different granularities never
        # share a softmax, so they need not share a padded batch either.
        feats = [model.encode_text(batch["texts"][g]) for g in self.granularities]
        labels = [batch["text_ids"][g] for g in self.granularities]
        return feats, labels

    def forward(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        image = model.encode_image(batch["images"])
        feats, labels = self.global_texts(model, batch)
        return self.loss(image, feats, labels, model.logit_scale_value())


def _token_inputs(model: nn.Module, batch: Mapping, low: float, high: float, off_by_one: bool = False):
    img = model.image_tokens(batch["images"])
    txt = model.text_tokens(batch["report"], attention_off_by_one=off_by_one)
    patch_mask = torch.ones(img["attention"].shape, dtype=torch.bool, device=img["attention"].device)
    patch_weights = token_weights_from_attention(img["attention"], patch_mask, low, high)
    word_weights = token_weights_from_attention(txt["attention"], txt["word_mask"], low, high)
    return img, txt, patch_weights, word_weights


class MGCAObjective(Objective):
    name = "mgca"
    needs_report = True

    def __init__(self, granularities: Sequence[str], embed_dim: int, weight_low: float = 0.1,
                 weight_high: float = 0.9, word_weight_off_by_one: bool = False, **mgca_options):
        super().__init__(granularities)
        self.weight_low, self.weight_high = weight_low, weight_high
        self.word_weight_off_by_one = word_weight_off_by_one
        self.loss = MGCALoss(embed_dim=embed_dim, **mgca_options)

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_epoch(epoch)

    def after_backward(self) -> None:
        # MGCA keeps the prototypes fixed for the first epoch(s). Dropping their gradient after backward
        # (rather than toggling requires_grad) keeps DDP's gradient buckets unchanged, and AdamW skips
        # a parameter whose .grad is None: no update and no weight decay.
        self.loss.drop_frozen_prototype_grad_()

    def forward(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        img, txt, pw, ww = _token_inputs(model, batch, self.weight_low, self.weight_high, self.word_weight_off_by_one)
        return self.loss(img["global"], txt["global"], img["tokens"], txt["words"], txt["word_mask"], pw, ww)


class MGCAMGLLObjective(MGCAObjective):
    """MGLL is the global alignment (ITA is switched off); TCA and CPA align the report."""

    name = "mgca+mgll"

    def __init__(self, granularities: Sequence[str], embed_dim: int, mgll_options: dict, **mgca_options):
        mgca_options = {**mgca_options, "lambda_ita": 0.0}
        super().__init__(granularities, embed_dim, **mgca_options)
        self.mgll = MGLLObjective(granularities, **mgll_options)

    def forward(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        img, txt, pw, ww = _token_inputs(model, batch, self.weight_low, self.weight_high, self.word_weight_off_by_one)
        feats, labels = self.mgll.global_texts(model, batch)
        global_part = self.mgll.loss(img["global"], feats, labels, model.logit_scale_value())
        token_part = self.loss(img["global"], txt["global"], img["tokens"], txt["words"], txt["word_mask"], pw, ww)
        out = {k: v for k, v in global_part.items() if k != "loss"}
        out.update({k: v for k, v in token_part.items() if k not in ("loss", "ita")})
        out["loss"] = global_part["loss"] + token_part["loss"]
        return out


def build_objective(cfg, granularities: Sequence[str], has_report: bool, embed_dim: int) -> Objective:
    """``cfg`` is a ``medgrain.training.config.ObjectiveConfig``."""
    name = cfg.name
    if name in ("mgca", "mgca+mgll") and not has_report:
        raise ValueError(f"the {name} objective aligns words with image regions and needs reports in the data")
    if name == "clip":
        text = cfg.clip.text or ("report" if has_report else (granularities[-1] if granularities else None))
        if text is None:
            raise ValueError("the clip objective needs a report or at least one granularity of text")
        if text != "report" and text not in granularities:
            raise ValueError(f"objective.clip.text={text!r} is neither 'report' nor one of {list(granularities)}")
        if text == "report" and not has_report:
            raise ValueError("objective.clip.text='report' but the data has no reports")
        return ClipObjective(granularities, text)
    mgll_options = cfg.mgll.model_dump()
    if name == "mgll":
        return MGLLObjective(granularities, **mgll_options)
    mgca_options = cfg.mgca.model_dump()
    if name == "mgca":
        return MGCAObjective(granularities, embed_dim, **mgca_options)
    if name == "mgca+mgll":
        if not granularities:
            raise ValueError("the mgca+mgll objective needs at least one granularity of text in the data")
        return MGCAMGLLObjective(granularities, embed_dim, mgll_options, **mgca_options)
    raise ValueError(f"unknown objective {name!r}")
