"""Run a function in several gloo processes on the CPU and collect what each rank returns.

    results = run_distributed(fn, world_size, *args)   # results[r] is fn(*args) on rank r

``fn`` must be importable by the spawned processes (a module-level function of a test module or of
this one). Inside ``fn`` torch.distributed is initialised (``dist.get_rank()`` gives the rank); its
return value must be picklable by ``torch.save`` (tensors, containers, numbers). Each rank writes its
result to a file in a private temporary directory, which the parent reads back once all have joined.
A failure in any rank is raised in the parent with that rank's traceback (torch.multiprocessing).
"""

from __future__ import annotations

import datetime
import faulthandler
import gc
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it; the race window is tiny)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, fn, world_size: int, port: int, out_dir: str, args: tuple) -> None:
    # Each rank gets one thread: the ranks share the machine's cores with each other (and with CI).
    # A rank that aborts in C++ dumps its Python stacks to the captured stderr.
    faulthandler.enable(all_threads=True)
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        # Bind gloo to loopback: a container's hostname may resolve to an address it cannot reach.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        result = fn(*args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        del result
        gc.collect()  # as medgrain.distributed.cleanup: nothing keeps the group alive past teardown
        # Tear down only once every rank is done: a rank that destroys its group while the other still
        # has gloo traffic in flight aborts the process ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int, *args) -> list:
    """Call ``fn(*args)`` on ``world_size`` gloo ranks (spawned processes); return their results by rank."""
    with tempfile.TemporaryDirectory(prefix="medgrain_dist_") as out_dir:
        mp.spawn(
            _worker,
            args=(fn, world_size, free_port(), out_dir, args),
            nprocs=world_size,
            join=True,
        )
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
