"""Process-group set-up from torchrun's environment: gloo on CPU, nccl on GPU, same code path."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available; use train.device=cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device_choice: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _comm_device(t: torch.Tensor) -> torch.device:
    # nccl only moves CUDA tensors; bookkeeping tensors (counters, RNG states) live on the CPU.
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place reduction over ranks of a tensor on any device (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
        dev = _comm_device(t)
        buf = t.to(dev)
        dist.all_reduce(buf, op=red)
        if buf is not t:
            t.copy_(buf.to(t.device))
    return t


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of ``t`` (same shape on every rank), returned on ``t``'s device."""
    if not (dist.is_available() and dist.is_initialized()):
        return [t]
    dev = _comm_device(t)
    buf = t.to(dev)
    parts = [torch.empty_like(buf) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, buf)
    return [p.to(t.device) for p in parts]


def average_gradients(params: list[torch.Tensor]) -> None:
    """Each gradient replaced by its mean over ranks: what DDP's backward does, for when that backward
    did not run (the last micro-batch of an accumulation group had no record on any rank). A parameter
    with a gradient on some rank but not on this one contributes zeros; one with none anywhere keeps
    ``None`` (AdamW then leaves it alone)."""
    if not (dist.is_available() and dist.is_initialized()) or not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    all_reduce_(has, "max")
    world = dist.get_world_size()
    for p, present in zip(params, has.tolist()):
        if not present:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        all_reduce_(p.grad)
        p.grad.div_(world)


def check_in_sync(params: list[torch.Tensor], what: str = "model weights") -> None:
    """Raise if the ranks' copies of ``params`` differ. Under DDP every rank applies the same averaged
    gradients, so the copies stay bitwise equal; a difference means a bug (or a collective skipped on
    one rank), and training on would silently average gradients of different models. Compares one
    float64 sum per tensor: a few bytes per parameter tensor, once per checkpoint."""
    if not (dist.is_available() and dist.is_initialized()) or not params:
        return
    fingerprint = torch.stack([p.detach().double().sum() for p in params])
    copies = all_gather(fingerprint)
    differ = [r for r, c in enumerate(copies) if not torch.equal(c, copies[0])]
    if differ:
        first = int((copies[differ[0]] != copies[0]).nonzero()[0])
        raise RuntimeError(f"the {what} of rank(s) {differ} differ from rank 0's (first at tensor {first}): "
                           "the ranks no longer train the same model")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        # Free cyclic garbage (autograd graphs, DDP's reducer) that may still reference the group, so that
        # the group is torn down here and not during interpreter shutdown, where gloo's teardown aborts.
        gc.collect()
        # Every rank finishes its collectives before any tears the group down (gloo aborts otherwise).
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
