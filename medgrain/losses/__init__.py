"""Losses: CLIP, MGLL (and MGCA). Features are L2-normalised by the caller; ``logit_scale`` is the
multiplier. Every loss returns a dict with ``loss`` and its unweighted parts, and gathers across
ranks itself under torch.distributed (see ``medgrain.losses.distributed``)."""

from medgrain.losses.clip import ClipLoss
from medgrain.losses.mgll import MGLLLoss, cooccurrence_matrix

# from medgrain.losses.mgca import MGCALoss  # added by the lead once medgrain/losses/mgca.py lands

__all__ = ["ClipLoss", "MGLLLoss", "cooccurrence_matrix"]
