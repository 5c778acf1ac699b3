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


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums the gathered gradient over ranks and keeps this rank's rows.

    Written here rather than taken from ``torch.distributed.nn.functional.all_gather`` (deprecated), for
    two reasons found with gloo on torch 2.14:
    - its gloo backward (all_to_all into ``empty_like(grad)`` buffers) keeps a permuted layout that gloo
      fills as if contiguous, so a consumer that permutes the gathered tensor (MGLL's stacked
      granularities) got scrambled gradients;
    - its autograd context holds the process group, and a graph freed late by the garbage collector kept
      the group alive into interpreter shutdown, where its teardown aborted the process
      ("terminate called without an active exception", SIGABRT after a finished run, about 1 in 10).
    This one holds no group and no tensors. Its backward is one all_reduce of an (N, D) feature gradient
    (twice the traffic of a reduce_scatter, negligible beside DDP's reduction of the parameters' gradients)
    on every backend, so the path tested with gloo is the path NCCL takes.
    tests/test_distributed_losses.py and tests/test_distributed_mgca.py check 2 ranks against 1 process.
    """

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()  # all_reduce is in place; autograd's incoming gradient is not ours
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        n_local = grad.shape[0] // dist.get_world_size()
        start = dist.get_rank() * n_local
        return grad[start : start + n_local]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, gradients flowing back to each rank's part.

    Every rank must pass the same shape (DDP samplers give equal per-rank batches)."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x.contiguous())


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
