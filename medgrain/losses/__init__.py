"""Losses: CLIP, MGLL and MGCA. Features are L2-normalised by the caller; ``logit_scale`` is the
multiplier. Every loss returns a dict with ``loss`` and its unweighted parts, and gathers across
ranks itself under torch.distributed (see ``medgrain.distributed``)."""

from medgrain.losses.clip import ClipLoss
from medgrain.losses.mgca import MGCALoss
from medgrain.losses.mgll import MGLLLoss, cooccurrence_matrix

__all__ = ["ClipLoss", "MGCALoss", "MGLLLoss", "cooccurrence_matrix"]
