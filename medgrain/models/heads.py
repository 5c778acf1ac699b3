"""Projection heads from a tower's width into the joint embedding space.

"linear" is CLIP's (and MGLL's) bias-free projection. "identity" keeps a tower's output as it is, for a
tower that already ends in its own projection (open_clip's, whose pretrained ``proj`` a fresh head
would scramble); it needs the tower's width to equal the joint dimension. "gelu-mlp" is open_clip's
projection of a Hugging Face text tower (BiomedCLIP's): Linear -> GELU -> Linear, bias-free, hidden width
the mean of the two, laid out as open_clip's ``nn.Sequential`` so its weights load by name. "mlp" is MGCA's head:
Linear -> BatchNorm -> ReLU -> Linear -> BatchNorm(affine=False). MGCA applies the same head to
every local token with 1x1 convolutions, so its BatchNorm statistics include padded word slots;
``TokenHead`` runs the head on real tokens only, so padding neither shifts the statistics nor
receives an output.
"""

from __future__ import annotations

import torch
from torch import nn

HEADS = ("linear", "mlp", "gelu-mlp", "identity")


class MLPHead(nn.Module):
    """MGCA's global embedding head (the BN without affine lets the loss see standardised features)."""

    def __init__(self, in_features: int, out_features: int, hidden_features: int = 2048):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.bn1 = nn.BatchNorm1d(hidden_features)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.bn2 = nn.BatchNorm1d(out_features, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.fc2(self.act(self.bn1(self.fc1(x)))))


class TokenHead(nn.Module):
    """Applies a head to each real token of (N, M, D) features; ``mask`` (N, M) marks real tokens.

    Only ``x[mask]`` goes through the head, so BatchNorm statistics (batch and running) come from real
    tokens alone; masked positions come out as zeros.
    """

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return self.head(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        mask = mask.to(device=x.device, dtype=torch.bool)
        real = self.head(x[mask])
        out = real.new_zeros(*x.shape[:2], real.shape[-1])
        out[mask] = real
        return out


def create_head(
    kind: str, in_features: int, out_features: int, hidden_features: int = 2048, tokens: bool = False
) -> nn.Module:
    """A global head, or with ``tokens=True`` its token-wise version (``forward(x, mask)``)."""
    if kind == "identity":
        if in_features != out_features:
            raise ValueError(
                f"an identity head needs the tower's width ({in_features}) to equal the joint dimension "
                f"embed_dim ({out_features}); use a 'linear' head or set embed_dim={in_features}"
            )
        head = nn.Identity()
    elif kind == "linear":
        head = nn.Linear(in_features, out_features, bias=False)
    elif kind == "mlp":
        head = MLPHead(in_features, out_features, hidden_features)
    elif kind == "gelu-mlp":
        hidden = (in_features + out_features) // 2  # open_clip's HFTextEncoder proj_type="mlp"
        head = nn.Sequential(
            nn.Linear(in_features, hidden, bias=False), nn.GELU(), nn.Linear(hidden, out_features, bias=False)
        )
    else:
        raise ValueError(f"unknown head {kind!r}; expected one of {HEADS}")
    return TokenHead(head) if tokens else head
