"""AdamW without weight decay on biases, norms and the logit scale; linear warm-up then cosine, per step."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from .config import OptimConfig


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Biases, norm weights, the temperature and other 1-D/0-D tensors carry scale, not features:
    # decaying them only fights the normalisation (CLIP, MAE and open_clip do the same).
    return param.ndim < 2 or name.endswith(".bias") or "logit_scale" in name


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    seen: set[int] = set()
    for name, p in named:
        if id(p) in seen:  # shared/tied parameters appear once
            continue
        seen.add(id(p))
        (no_decay if _no_decay(name, p) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(modules: dict[str, nn.Module], cfg: OptimConfig) -> torch.optim.AdamW:
    """One AdamW over the parameters of every module (the model, and a loss that owns prototypes)."""
    named = [(f"{prefix}.{n}", p) for prefix, m in modules.items() for n, p in m.named_parameters()]
    # Frozen parameters (e.g. MGCA's prototypes in their first epoch) are included: requires_grad is
    # toggled later, and AdamW skips parameters whose .grad is None, so they get no update and no decay.
    # On a GPU the fused kernel: the for-each update is hundreds of launches per step, and a step of a
    # small model there is launch-bound (benchmarks/profile_step.py). On the CPU the default, whose
    # resume is tested to be exact.
    fused = bool(named) and all(p.is_cuda for _, p in named)
    return torch.optim.AdamW(param_groups(named, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             fused=fused or None)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_ratio * total_steps))
    warmup = min(warmup, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup, cfg.min_lr_ratio)
    )
