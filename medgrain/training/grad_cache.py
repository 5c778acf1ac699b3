"""Gradient caching: the contrastive loss over a whole batch in the memory of one chunk of it.

Gao, Zhang, Han and Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", RepL4NLP 2021 (arXiv:2101.06983). A contrastive loss couples every sample with every other,
so gradient accumulation (several small batches) shrinks its set of negatives. Gradient caching keeps
the whole (global) batch in the loss and only its embeddings in memory:

1. embed the batch in K chunks without a graph (the encoders' activations of one chunk at a time);
2. compute the loss over all embeddings at once (gathered across ranks, as always) and its gradient
   with respect to the embeddings; only the (N, E) embeddings hold a graph here;
3. embed each chunk again, with a graph, and back-propagate the cached gradient of its embeddings.

The parameter gradients are those of the unchunked step, provided every chunk's second pass computes
what its first did: the random state is saved before each chunk's first pass and restored for its
second, so dropout draws the same masks in both. Two things cannot be exact: BatchNorm normalises
over a chunk instead of the batch (``batchnorm_modules`` lets the trainer warn), and dropout masks
drawn per chunk are not those one pass over the batch would draw (equal in distribution only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..data.dataset import num_samples, slice_rows


def chunk_bounds(n: int, chunks: int) -> list[tuple[int, int]]:
    """``chunks`` contiguous row ranges as equal as possible (the first ones one row longer)."""
    sizes = [len(c) for c in torch.arange(n).tensor_split(chunks)]
    bounds, start = [], 0
    for size in sizes:
        if size:
            bounds.append((start, start + size))
        start += size
    return bounds


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def batchnorm_modules(module: nn.Module) -> list[str]:
    """Names of the BatchNorm layers in ``module`` (they would see per-chunk statistics)."""
    return [name for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def cached_backward(objective, model: nn.Module, batch: Mapping, chunks: int, loss_scale: float = 1.0,
                    context: Callable[[], Any] = contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """One forward and backward of ``objective`` over ``batch`` by gradient caching; returns the loss
    parts (detached). Gradients accumulate into ``.grad`` as ``(loss * loss_scale).backward()`` would.

    ``objective`` provides ``embed(model, batch) -> {name: (n, ...) tensor}`` and
    ``loss_from_embeddings(model, embeddings, batch) -> {"loss": ..., parts}``. Under torchrun the loss
    gathers the embeddings across ranks as usual; the caller averages the gradients over ranks.
    ``context()`` wraps every forward (the trainer's autocast)."""
    device = next(model.parameters()).device
    bounds = chunk_bounds(num_samples(batch), chunks)
    pieces = [slice_rows(batch, a, b) for a, b in bounds]
    states, cached = [], []
    with torch.no_grad():
        for piece in pieces:
            states.append(_rng_state(device))
            with context():
                cached.append(objective.embed(model, piece))
    after_first_pass = _rng_state(device)
    embeddings = {k: torch.cat([c[k] for c in cached]).requires_grad_() for k in cached[0]}
    with context():
        parts = objective.loss_from_embeddings(model, embeddings, batch)
    # The loss's own parameters (logit scale, an objective's weights) get their gradient here.
    (parts["loss"] * loss_scale).backward()
    grads = {k: v.grad for k, v in embeddings.items()}
    for piece, state, (a, b) in zip(pieces, states, bounds):
        _set_rng_state(state, device)
        with context():
            again = objective.embed(model, piece)
        # A chunk with no present text of a kind embeds it as constant zeros: nothing to propagate.
        names = [k for k in again if grads[k] is not None and again[k].requires_grad]
        torch.autograd.backward([again[k] for k in names], [grads[k][a:b] for k in names])
    _set_rng_state(after_first_pass, device)
    return {k: v.detach() for k, v in parts.items()}
