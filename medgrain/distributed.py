"""Process groups, in one place (lightly's ``utils/dist.py``, open_clip's gathering helper).

The only module that knows about ``torch.distributed``. It joins the process group from torchrun's
environment, or from SLURM's when ``srun`` started the processes without torchrun (gloo on CPU, nccl
on GPU, one code path; docs/distributed.md), offers the collectives the trainer needs, and the
gathering the losses do.

One notion of "distributed": a process group with more than one rank (``is_distributed()``). Every
helper is the identity without one, so the same code runs on one machine.

Loss convention: a loss on rank r computes rows for its own samples against columns from the global
batch. Gathering keeps gradients (the backward of the gather sums gradients over ranks), so with DDP
averaging gradients over ranks, W processes with N/W samples each give the same parameter gradients
as one process with all N samples. A loss built with ``gather_distributed=False`` computes over its
rank's samples only (MGCA's released code does that); ``None`` gathers exactly when distributed.
"""

from __future__ import annotations

import functools
import gc
import os
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# ----------------------------------------------------------------------------- the process group


_scope = threading.local()  # inside a loss built with gather_distributed=False: no process group


def is_distributed() -> bool:
    """A process group with more than one rank exists (and the caller is not a loss that was told
    not to gather: see ``gathering``)."""
    if getattr(_scope, "local_only", False):
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


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
    """Join the process group when launched by torchrun or srun with more than one process
    (``launch_env``); otherwise a single process."""
    launch = launch_env()
    world, rank_, local_rank = launch.world_size, launch.rank, launch.local_rank
    device = resolve_device(device_choice, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if launch.launcher == "slurm":  # no torchrun: the rendezvous is the first node of the allocation
            dist.init_process_group(backend=backend, rank=rank_, world_size=world,
                                    init_method=f"tcp://{launch.master_addr}:{launch.master_port}")
        else:
            dist.init_process_group(backend=backend)
    if dist.is_initialized():
        rank_, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank=rank_, world_size=world, local_rank=local_rank, device=device)


# ----------------------------------------------------------------------------- who launched us

DEFAULT_MASTER_PORT = 29500  # torchrun's default


@dataclass
class LaunchEnv:
    """This process's place in the job, as its launcher described it."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "torchrun", "slurm" or "single"
    master_addr: str | None = None
    master_port: int | None = None


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed host list, expanded: ``node[01-03,07],gpu-a[1-2]-x`` gives node01, node02,
    node03, node07, gpu-a1-x, gpu-a2-x (zero padding kept; several bracket groups in one name give
    their product, as ``scontrol show hostnames`` does)."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(hostlist + ","):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0:
            raise ValueError(f"unbalanced ']' in SLURM host list {hostlist!r}")
        if ch == "," and depth == 0:
            if i > start:
                names.extend(_expand_one(hostlist[start:i], hostlist))
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced '[' in SLURM host list {hostlist!r}")
    return names


def _expand_one(name: str, hostlist: str) -> list[str]:
    open_at = name.find("[")
    if open_at < 0:
        return [name]
    close_at = name.index("]", open_at)
    head, body, tail = name[:open_at], name[open_at + 1 : close_at], name[close_at + 1 :]
    values = []
    for part in body.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"bad range {part!r} in SLURM host list {hostlist!r}")
        width = len(low)
        values.extend(str(v).zfill(width) for v in range(int(low), int(high or low) + 1))
    return [head + v + rest for v in values for rest in _expand_one(tail, hostlist)]


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Rank, world size, local rank and master from torchrun's variables (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or, when the process was started by ``srun``
    without torchrun, from SLURM's (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, the first
    host of ``SLURM_JOB_NODELIST`` as master, ``MASTER_PORT`` or 29500). torchrun wins when both are
    set (torchrun launched inside an allocation). A single SLURM task (``python`` in a batch script,
    ``srun --ntasks 1``) is a single process."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env:
        port = env.get("MASTER_PORT")
        return LaunchEnv(rank=int(env.get("RANK", "0")), world_size=int(env["WORLD_SIZE"]),
                         local_rank=int(env.get("LOCAL_RANK", "0")), launcher="torchrun",
                         master_addr=env.get("MASTER_ADDR"), master_port=int(port) if port else None)
    ntasks = int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")))
    if ntasks > 1 and "SLURM_PROCID" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise RuntimeError("SLURM_NTASKS > 1 but SLURM_JOB_NODELIST is not set: cannot tell the master node")
        return LaunchEnv(rank=int(env["SLURM_PROCID"]), world_size=ntasks,
                         local_rank=int(env.get("SLURM_LOCALID", "0")), launcher="slurm",
                         master_addr=env.get("MASTER_ADDR") or expand_hostlist(nodelist)[0],
                         master_port=int(env.get("MASTER_PORT", DEFAULT_MASTER_PORT)))
    return LaunchEnv(rank=0, world_size=1, local_rank=0, launcher="single")


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


# ----------------------------------------------------------------------------- trainer collectives


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device(t: torch.Tensor) -> torch.device:
    # nccl only moves CUDA tensors; bookkeeping tensors (counters, RNG states) live on the CPU.
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place reduction over ranks of a tensor on any device (a no-op in a single process)."""
    if is_distributed():
        red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
        buf = t.to(_comm_device(t))
        dist.all_reduce(buf, op=red)
        if buf is not t:
            t.copy_(buf.to(t.device))
    return t


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of ``t`` (same shape on every rank), returned on ``t``'s device."""
    if not is_distributed():
        return [t]
    buf = t.to(_comm_device(t))
    parts = [torch.empty_like(buf) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, buf)
    return [p.to(t.device) for p in parts]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a small picklable value: the load failures of a batch, with their reasons)."""
    if not is_distributed():
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def average_gradients(params: list[torch.Tensor]) -> None:
    """Each gradient replaced by its mean over ranks: what DDP's backward does, for when that backward
    did not run (the last micro-batch of an accumulation group had no record on any rank, or gradient
    caching ran the backward outside DDP). A parameter with a gradient on some rank but not on this
    one contributes zeros; one with none anywhere keeps ``None`` (AdamW then leaves it alone).
    One collective per dtype and device (as DDP's buckets), not one per tensor."""
    if not is_distributed() or not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    all_reduce_(has, "max")
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p, present in zip(params, has.tolist()):
        if not present:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    world = dist.get_world_size()
    for grads in groups.values():
        flat = all_reduce_(torch.cat([g.reshape(-1) for g in grads]))
        flat.div_(world)
        for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(mean.view_as(g))


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank: what DDP does at each of its
    forwards, for steps that ran outside it (gradient caching)."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        buf = buffer.to(_comm_device(buffer))
        dist.broadcast(buf, src=0)
        if buf is not buffer:
            buffer.copy_(buf.to(buffer.device))


def check_in_sync(params: list[torch.Tensor], what: str = "model weights") -> None:
    """Raise if the ranks' copies of ``params`` differ. Under DDP every rank applies the same averaged
    gradients, so the copies stay bitwise equal; a difference means a bug (or a collective skipped on
    one rank), and training on would silently average gradients of different models. Compares one
    float64 sum per tensor: a few bytes per parameter tensor, once per checkpoint."""
    if not is_distributed() or not params:
        return
    fingerprint = torch.stack([p.detach().double().sum() for p in params])
    copies = all_gather(fingerprint)
    differ = [r for r, c in enumerate(copies) if not torch.equal(c, copies[0])]
    if differ:
        first = int((copies[differ[0]] != copies[0]).nonzero()[0])
        raise RuntimeError(f"the {what} of rank(s) {differ} differ from rank 0's (first at tensor {first}): "
                           "the ranks no longer train the same model")


# ----------------------------------------------------------------------------- gathering for losses


def should_gather(gather_distributed: bool | None) -> bool:
    """Whether a loss built with ``gather_distributed`` gathers now (lightly's flag).

    None: when distributed. True: likewise, but a process group must be possible at all. False: never,
    each rank's loss covers its own samples."""
    if gather_distributed and not dist.is_available():
        raise ValueError("gather_distributed=True but torch.distributed is not available in this PyTorch build")
    return False if gather_distributed is False else is_distributed()


@contextmanager
def gathering(gather_distributed: bool | None):
    """The scope of one loss call. With ``gather_distributed=False`` every helper of this module
    behaves as in a single process (no gathering, rank 0 of 1, sums over this rank only), so the
    loss covers this rank's samples alone; otherwise nothing changes."""
    previous = getattr(_scope, "local_only", False)
    _scope.local_only = previous or not should_gather(gather_distributed)
    try:
        yield
    finally:
        _scope.local_only = previous


def respects_gather_flag(forward):
    """Decorates a loss's ``forward`` to run inside ``gathering(self.gather_distributed)``."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        with gathering(self.gather_distributed):
            return forward(self, *args, **kwargs)

    return wrapper


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
