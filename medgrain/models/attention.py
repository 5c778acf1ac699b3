"""[CLS] attention of a tower's last layer, recomputed from that layer's query and key projections.

Fused kernels (SDPA, flash) return no probabilities, and the probabilities that eager kernels
return in training have already been through attention dropout. MGCA weights tokens by the
pre-dropout softmax, so every tower captures the input of its last attention layer with a
forward pre-hook and recomputes the [CLS] row from it: one query, all keys, no L x L matrix.
The result is a weighting statistic, computed without gradient (MGCA's weights are constants).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def cls_attention_probs(
    x: torch.Tensor,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor | None,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor | None,
    num_heads: int,
    scale: float,
    key_mask: torch.Tensor | None = None,
    q_norm: nn.Module | None = None,
    k_norm: nn.Module | None = None,
    query_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention of position 0 to every position, averaged over heads: (N, L), 0 where ``key_mask``
    (N, L) is False.

    ``query_index`` (N,) takes the query from another position per row: a causal text transformer
    (CLIP's) pools its end-of-text token, which is the one that has seen the whole text.

    ``x`` (N, L, D) is the input of the attention layer; ``q_norm``/``k_norm`` act per head on the last dim.
    """
    n, length, _ = x.shape
    head_dim = q_weight.shape[0] // num_heads
    query = x[:, :1] if query_index is None else x[torch.arange(n, device=x.device), query_index][:, None]
    q = F.linear(query, q_weight, q_bias).view(n, 1, num_heads, head_dim).transpose(1, 2)
    k = F.linear(x, k_weight, k_bias).view(n, length, num_heads, head_dim).transpose(1, 2)
    if q_norm is not None:
        q = q_norm(q)
    if k_norm is not None:
        k = k_norm(k)
    scores = ((q * scale) @ k.transpose(-2, -1)).float()  # (N, H, 1, L)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.to(torch.bool)[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1).mean(dim=1)[:, 0].to(x.dtype)


def multihead_cls_attention(attn: nn.MultiheadAttention, captured: torch.Tensor, **kwargs) -> torch.Tensor:
    """``cls_attention_probs`` for a ``nn.MultiheadAttention`` (open_clip's towers) whose query input was
    ``captured``: its packed in-projection split into the query and key parts. ``kwargs``: ``key_mask``,
    ``query_index``."""
    x = captured if attn.batch_first else captured.transpose(0, 1)
    dim = attn.embed_dim
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    return cls_attention_probs(
        x,
        weight[:dim], None if bias is None else bias[:dim],
        weight[dim : 2 * dim], None if bias is None else bias[dim : 2 * dim],
        num_heads=attn.num_heads,
        scale=(dim // attn.num_heads) ** -0.5,
        **kwargs,
    )


class CaptureInput:
    """Keeps the first input (positional, or the keyword ``name``) of a module during one forward pass.

    Use as a context manager around the forward; the hook is removed on exit.
    """

    def __init__(self, module: nn.Module, name: str = "hidden_states"):
        self.name = name
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.value is None:  # activation checkpointing may run the layer again
            self.value = args[0] if args else kwargs[self.name]

    def __enter__(self) -> CaptureInput:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()
        if exc[0] is None and self.value is None:
            raise RuntimeError("the attention layer whose input was to be captured did not run")
