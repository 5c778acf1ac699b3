"""How many threads torch uses: the cores this process may run on, divided between it and its data workers.

torch's default intra-op thread count is the machine's physical core count, whatever the process's CPU
affinity (a container's or ``taskset``'s cores) and whatever else runs: a process with two DataLoader
workers on 2 cores then runs 2 compute threads plus 2 workers on 2 cores, and the threads wait on each
other at every parallel region. On the project's shared 2-core machine a training step at torch's
default was up to 10x slower than at 1 thread. So every command that computes (the trainer, the
evaluation commands, the demo) calls ``use_threads(workers)`` once it knows its worker count:

- the cores are those of ``os.sched_getaffinity(0)`` (``os.cpu_count()`` where the platform has no
  affinity), shared equally by the processes torchrun starts on this machine (``LOCAL_WORLD_SIZE``);
- each data worker gets 1 core (torch's DataLoader sets 1 thread in every worker process itself);
- the main process gets what is left, at least 1 thread;
- an ``OMP_NUM_THREADS`` the user set caps the main process's threads: their word wins.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadPlan:
    """The division: ``cores`` this process may use, ``workers`` data workers (1 thread each) and the
    main process's ``threads``."""

    cores: int
    workers: int
    threads: int


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else None
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected a whole number") from None


def plan_threads(workers: int, cores: int | None = None, local_processes: int | None = None,
                 user_threads: int | None = None) -> ThreadPlan:
    """The division of ``cores`` (default: ``available_cores()``) among ``local_processes`` (default:
    ``LOCAL_WORLD_SIZE``, else 1) and, within this process, among ``workers`` data workers and the main
    process; ``user_threads`` (default: ``OMP_NUM_THREADS``) caps the main process's threads."""
    if workers < 0:
        raise ValueError(f"data workers must be 0 or more, got {workers}")
    cores = available_cores() if cores is None else cores
    local_processes = local_processes or _env_int("LOCAL_WORLD_SIZE") or 1
    user_threads = user_threads if user_threads is not None else _env_int("OMP_NUM_THREADS")
    share = max(1, cores // max(1, local_processes))
    threads = max(1, share - workers)
    if user_threads is not None and user_threads > 0:
        threads = min(threads, user_threads)
    return ThreadPlan(cores=share, workers=workers, threads=threads)


def use_threads(workers: int = 0) -> ThreadPlan:
    """Set torch's intra-op thread count by ``plan_threads(workers)`` and return the plan."""
    import torch

    plan = plan_threads(workers)
    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)
    logger.info("threads: %d core(s), %d data worker(s) at 1 thread each, %d compute thread(s)",
                plan.cores, plan.workers, plan.threads)
    return plan
