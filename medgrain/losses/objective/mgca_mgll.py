"""``mgca+mgll``: MGLL over the granularity texts takes ITA's place as the global alignment; MGCA's
token (TCA) and prototype (CPA) alignment run on the report as in MGCA. Options: the ``mgll`` and
``mgca`` sections (``lambda_ita`` is ignored: ITA is off). MGLL: Li et al., ICLR 2026, arXiv:2511.15943;
MGCA: Wang et al., NeurIPS 2022, arXiv:2210.06044."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medgrain.losses.objective.base import OBJECTIVES
from medgrain.losses.objective.mgca import MGCAObjective, MGCAOptions
from medgrain.losses.objective.mgll import MGLLObjective, MGLLOptions


@OBJECTIVES.register("mgca+mgll", help="MGLL as the global alignment, MGCA's token and prototype levels on the "
                                       "report (options: the mgll and mgca sections)",
                     improves_on=("mgca", "mgll"))
class MGCAMGLLObjective(MGCAObjective):
    """MGLL is the global alignment (ITA is switched off); TCA and CPA align the report."""

    name = "mgca+mgll"

    def texts_read(self) -> list[str]:
        return [*self.granularities, "report"]

    def unused_parameters(self, model: nn.Module) -> list[str]:
        return []  # MGLL uses the logit scale, MGCA's levels the token heads

    def __init__(self, granularities: Sequence[str], embed_dim: int, mgll: MGLLOptions, mgca: MGCAOptions):
        super().__init__(granularities, embed_dim, mgca.model_copy(update={"lambda_ita": 0.0}))
        self.mgll = MGLLObjective(granularities, mgll)

    @classmethod
    def from_config(cls, cfg, granularities: Sequence[str], has_report: bool, embed_dim: int) -> MGCAMGLLObjective:
        cls.check_data(granularities, has_report)
        if not granularities:
            raise ValueError("the mgca+mgll objective needs at least one granularity of text in the data")
        return cls(granularities, embed_dim, cfg.mgll, cfg.mgca)

    def forward(self, model: nn.Module, batch: Mapping) -> dict[str, torch.Tensor]:
        img, txt, pw, ww, present = self.token_inputs(model, batch)
        feats, labels, text_present = self.mgll.global_texts(model, batch, img["global"])
        global_part = self.mgll.loss(img["global"], feats, labels, model.logit_scale_value(), present=text_present)
        token_part = self.loss(
            img["global"], txt["global"], img["tokens"], txt["words"], txt["word_mask"], pw, ww, present=present
        )
        out = {k: v for k, v in global_part.items() if k != "loss"}
        out.update({k: v for k, v in token_part.items() if k not in ("loss", "ita")})
        out["loss"] = global_part["loss"] + token_part["loss"]
        return out
