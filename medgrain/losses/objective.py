"""Objective composition: what each pretraining method computes from a model and a batch.

- ``clip``: InfoNCE between the image and one text (the report, or one granularity).
- ``mgll``: MGLL over every granularity's text, soft targets from equal texts (``batch["text_ids"]``).
- ``mgca``: MGCA's instance (ITA), token (TCA) and prototype (CPA) alignment on the report.
- ``mgca+mgll``: MGLL over the granularity texts takes ITA's place as the global alignment;
  TCA and CPA run on the report as in MGCA.

Texts may be absent (``batch["present"][g]``, ``batch["report_present"]``): the text tower runs on the
present texts only, their features are put back in batch order with zero rows for the absent ones,
and the losses get the masks.

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


def _rows_in_batch(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Rows computed for the present samples, put back in batch order with zeros for the absent ones."""
    out = values.new_zeros((present.shape[0], *values.shape[1:]))
    out[present] = values
    return out


def encode_present_text(model: nn.Module, tokens, present: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Global text features (N, D) of a batch whose texts may be absent: the tower runs on the present
    ones (``tokens`` holds just those, or is None when there is none) and absent rows are zeros."""
    if present is None:
        return model.encode_text(tokens)
    if tokens is None:
        return like.new_zeros(like.shape)
    return _rows_in_batch(model.encode_text(tokens), present)


def _all_present(batch: Mapping) -> torch.Tensor:
    return torch.ones(len(batch["ids"]), dtype=torch.bool, device=batch["images"].device)


def _text_and_present(batch: Mapping, text: str):
    """Tokens and present mask of ``text`` ('report' or a granularity); the mask is None for a batch
    that carries none (every text present)."""
    if text == "report":
        if "report" not in batch:  # no record of this batch has a report
            return None, torch.zeros_like(_all_present(batch))
        return batch["report"], batch.get("report_present")
    return batch["texts"][text], batch.get("present", {}).get(text)


class ClipObjective(Objective):
    name = "clip"

    def __init__(self, granularities: Sequence[str], text: str):
        super().__init__(granularities)
        self.text = text
        self.needs_report = text == "report"
        self.loss = ClipLoss()

    def forward(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        tokens, present = _text_and_present(batch, self.text)
        image = model.encode_image(batch["images"])
        text = encode_present_text(model, tokens, present, image)
        return self.loss(image, text, model.logit_scale_value(), present=present)


class MGLLObjective(Objective):
    name = "mgll"

    def __init__(self, granularities: Sequence[str], **mgll_options):
        super().__init__(granularities)
        if not self.granularities:
            raise ValueError("the mgll objective needs at least one granularity of text in the data")
        self.loss = MGLLLoss(**mgll_options)

    def global_texts(self, model: nn.Module, batch: Mapping, image: torch.Tensor):
        """(features, labels, present or None), one entry per granularity."""
        # One text-tower pass per granularity, as in MGLL: texts of different granularities never
        # share a softmax, so they need not share a padded batch either.
        pairs = [_text_and_present(batch, g) for g in self.granularities]
        feats = [encode_present_text(model, tokens, present, image) for tokens, present in pairs]
        labels = [batch["text_ids"][g] for g in self.granularities]
        masks = [present for _, present in pairs]
        return feats, labels, (None if any(m is None for m in masks) else masks)

    def forward(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        image = model.encode_image(batch["images"])
        feats, labels, present = self.global_texts(model, batch, image)
        return self.loss(image, feats, labels, model.logit_scale_value(), present=present)


def _report_tokens(model: nn.Module, batch: Mapping, img: dict, low: float, high: float, off_by_one: bool):
    """The report's global, word and mask outputs and word weights for every sample of the batch, the text
    tower run on the present reports only; an absent report has a zero global row and no word."""
    tokens, present = _text_and_present(batch, "report")
    if tokens is None:
        n, dim = img["global"].shape
        words = img["global"].new_zeros((n, 1, dim))
        mask = torch.zeros((n, 1), dtype=torch.bool, device=words.device)
        return {"global": img["global"].new_zeros((n, dim)), "words": words, "word_mask": mask}, mask.float(), present
    txt = model.text_tokens(tokens, attention_off_by_one=off_by_one)
    word_weights = token_weights_from_attention(txt["attention"], txt["word_mask"], low, high)
    if present is None:
        return txt, word_weights, None
    txt = {k: _rows_in_batch(txt[k], present) for k in ("global", "words", "word_mask")}
    return txt, _rows_in_batch(word_weights, present), present


def _token_inputs(model: nn.Module, batch: Mapping, low: float, high: float, off_by_one: bool = False):
    img = model.image_tokens(batch["images"])
    txt, word_weights, present = _report_tokens(model, batch, img, low, high, off_by_one)
    patch_mask = torch.ones(img["attention"].shape, dtype=torch.bool, device=img["attention"].device)
    patch_weights = token_weights_from_attention(img["attention"], patch_mask, low, high)
    return img, txt, patch_weights, word_weights, present


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
        img, txt, pw, ww, present = _token_inputs(
            model, batch, self.weight_low, self.weight_high, self.word_weight_off_by_one
        )
        return self.loss(
            img["global"], txt["global"], img["tokens"], txt["words"], txt["word_mask"], pw, ww, present=present
        )


class MGCAMGLLObjective(MGCAObjective):
    """MGLL is the global alignment (ITA is switched off); TCA and CPA align the report."""

    name = "mgca+mgll"

    def __init__(self, granularities: Sequence[str], embed_dim: int, mgll_options: dict, **mgca_options):
        mgca_options = {**mgca_options, "lambda_ita": 0.0}
        super().__init__(granularities, embed_dim, **mgca_options)
        self.mgll = MGLLObjective(granularities, **mgll_options)

    def forward(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        img, txt, pw, ww, present = _token_inputs(
            model, batch, self.weight_low, self.weight_high, self.word_weight_off_by_one
        )
        feats, labels, text_present = self.mgll.global_texts(model, batch, img["global"])
        global_part = self.mgll.loss(img["global"], feats, labels, model.logit_scale_value(), present=text_present)
        token_part = self.loss(
            img["global"], txt["global"], img["tokens"], txt["words"], txt["word_mask"], pw, ww, present=present
        )
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
