"""The losses' precision, in one place: float32 at least, float64 kept, autocast off.

A bf16 or fp16 autocast caller gets a float32 loss: under autocast a matmul would drop back to half
precision even on float32 inputs, and exp(score / temperature) (softmaxes at temperature 0.07,
Sinkhorn at ε = 0.05) needs the float32 range. float64 inputs stay float64, so the tests' loop-based
references and gradcheck run in double precision.
"""

from __future__ import annotations

import contextlib
import functools

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def full_precision(device: torch.device | str):
    """A context in which matmuls run in the dtype of their inputs, whatever the caller's autocast
    (on every device type autocast knows: cpu, cuda, xpu, mps...)."""
    device_type = torch.device(device).type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def in_full_precision(fn):
    """``fn`` run inside ``full_precision`` on the device of its first tensor argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = (a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        device = next((t.device for t in tensors), torch.device("cpu"))
        with full_precision(device):
            return fn(*args, **kwargs)

    return wrapper
