"""Gathering across ranks for losses, in one place (open_clip's pattern).

Convention: a loss on rank r computes rows for its own samples against columns from the global
batch. Gathering keeps gradients (the backward of all_gather sums gradients over ranks), so with
DDP averaging gradients over ranks, W processes with N/W samples each give the same parameter
gradients as one process with all N samples. Outside torch.distributed every function is the
identity, so the same loss code runs on one machine.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient.

    The backward of ``torch.distributed.nn.functional.all_gather`` receives the other ranks' gradients
    into buffers made with ``empty_like(grad)``, which keeps a permuted layout, and gloo's scatter fills
    them as if they were contiguous. A consumer that permutes the gathered tensor (MGLL's stacked
    granularities) then got scrambled gradients (seen with gloo, torch 2.14; the NCCL path builds its
    buffer the same way). tests/test_distributed_losses.py checks this case."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, gradients flowing back to each rank's part.

    Every rank must pass the same shape (DDP samplers give equal per-rank batches)."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat([_ContiguousGrad.apply(part) for part in all_gather(x.contiguous())], dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place and returned (no gradient: used inside Sinkhorn-Knopp)."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def local_rows(n_local: int, device: torch.device | None = None) -> torch.Tensor:
    """Indices of this rank's samples inside the gathered (global) batch."""
    start = rank() * n_local
    return torch.arange(start, start + n_local, device=device)
