"""The division of the process's cores between torch's compute threads and the data workers."""

import os

import pytest
import torch

from medgrain import threads
from medgrain.threads import ThreadPlan, plan_threads, use_threads


@pytest.fixture
def fake_affinity(monkeypatch):
    """A process allowed on ``n`` cores, with no torchrun or OMP_NUM_THREADS in the environment."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def allow(n: int):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    return allow


@pytest.mark.parametrize(("cores", "workers", "threads_"), [
    (2, 0, 2),  # no workers: every core computes
    (2, 1, 1),  # one core each
    (2, 2, 1),  # more workers than spare cores: the main process still gets 1
    (2, 5, 1),
    (16, 4, 12),
    (1, 0, 1),
])
def test_cores_from_affinity_are_divided_between_main_and_workers(fake_affinity, cores, workers, threads_):
    fake_affinity(cores)
    assert threads.available_cores() == cores
    assert plan_threads(workers) == ThreadPlan(cores=cores, workers=workers, threads=threads_)


def test_torchrun_processes_on_one_machine_share_its_cores(fake_affinity, monkeypatch):
    fake_affinity(16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert plan_threads(2) == ThreadPlan(cores=4, workers=2, threads=2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")  # more processes than cores: 1 each, never 0
    assert plan_threads(0) == ThreadPlan(cores=1, workers=0, threads=1)


def test_the_users_omp_num_threads_caps_the_main_process(fake_affinity, monkeypatch):
    fake_affinity(8)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert plan_threads(2).threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # a cap above the share does not raise it
    assert plan_threads(2).threads == 6


def test_bad_inputs_are_named(fake_affinity, monkeypatch):
    fake_affinity(2)
    with pytest.raises(ValueError, match="workers must be 0 or more"):
        plan_threads(-1)
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='two'"):
        plan_threads(0)


def test_without_affinity_the_machines_count_is_used(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert threads.available_cores() == 3


def test_use_threads_sets_torchs_count(fake_affinity):
    before = torch.get_num_threads()
    try:
        fake_affinity(3)
        assert use_threads(workers=1).threads == 2 and torch.get_num_threads() == 2
        assert use_threads(workers=0).threads == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
