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


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, gradients flowing back to each rank's part.

    Every rank must pass the same shape (DDP samplers give equal per-rank batches)."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


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
