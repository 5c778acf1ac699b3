"""Shared check of the resume tests: a run stopped and resumed logs the same training losses as one that was not."""

import pytest


def train_losses(history) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in history if r["split"] == "train"}


def assert_resumed_losses_match(full, resumed, first_step: int, rel: float = 1e-5, abs: float = 1e-6) -> None:
    """``resumed`` (a ``train`` result after ``resume=True``) picks up at ``first_step`` and every step it logs
    has the loss the uninterrupted ``full`` run logged there."""
    a, b = train_losses(full.history), train_losses(resumed.history)
    assert min(b) == first_step and set(b) <= set(a)
    for step, loss in b.items():
        assert loss == pytest.approx(a[step], rel=rel, abs=abs), (step, loss, a[step])
