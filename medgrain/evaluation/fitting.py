"""Training what an evaluation trains on top of the encoder (a linear head, a fine-tuned tower, a
decoder, a detector): the classification loss, the score that picks weights on the validation split,
AdamW with early stopping, and the frozen-encoder wrapper."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medgrain.evaluation.progress import progress


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, multiclass: bool) -> torch.Tensor:
    """Cross-entropy on the argmax of one-hot labels (multi-class), else BCE-with-logits (multi-label)."""
    if multiclass:
        return torch.nn.functional.cross_entropy(logits, labels.argmax(1))
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)


SCHEDULES = ("constant", "cosine")
# What picks the weights (or C) on the validation split: MGCA's rule is the loss, MGLL's the accuracy.
SELECT_CRITERIA = ("loss", "auroc", "accuracy")


def mean_defined_auroc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean AUROC over the findings where it is defined (both classes present); -inf if none is."""
    from sklearn.metrics import roc_auc_score

    values = [roc_auc_score(labels[:, k], probabilities[:, k]) for k in range(labels.shape[1])
              if 0 < labels[:, k].sum() < len(labels)]
    return float(np.mean(values)) if values else float("-inf")


def validation_score(select: str, probabilities: np.ndarray, labels: np.ndarray, multiclass: bool) -> float:
    """The score ``select`` names, of probabilities (N, C) against one-hot or multi-hot labels (N, C):

    - ``loss``: cross-entropy of the true class (multi-class) or the mean binary cross-entropy over
      every entry (multi-label); lower is better;
    - ``auroc``: ``mean_defined_auroc``; higher is better;
    - ``accuracy``: MGLL's ACC: plain accuracy of the argmax (multi-class), or the accuracy of every
      entry at the threshold 0.5, i.e. per-finding accuracy averaged over findings (multi-label);
      higher is better.
    """
    if select not in SELECT_CRITERIA:
        raise ValueError(f"select must be one of {SELECT_CRITERIA}, got {select!r}")
    p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if select == "auroc":
        return mean_defined_auroc(p, y)
    if multiclass:
        target = y.argmax(1)
        if select == "accuracy":
            return float(np.mean(p.argmax(1) == target))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(p)), target], 1e-12, None))))
    if select == "accuracy":
        return float(np.mean((p > 0.5) == (y > 0.5)))
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def higher_is_better(select: str) -> bool:
    return select != "loss"


def fit_with_early_stopping(model: torch.nn.Module, parameters, train_loader: DataLoader,
                            batch_loss: Callable[[dict[str, Any]], torch.Tensor],
                            validate: Callable[[], float] | None, epochs: int, patience: int, lr: float,
                            weight_decay: float, description: str, maximize: bool = False,
                            schedule: str = "constant", warmup_epochs: float = 0.0) -> dict[str, Any]:
    """AdamW on ``parameters``; after every epoch ``validate()`` (lower is better, or higher with
    ``maximize``) and keep the best weights; stop after ``patience`` epochs without improvement and
    restore the best weights (MGCA's protocol). Without ``validate`` every epoch runs and the last
    weights are kept.

    ``schedule="cosine"``: per iteration, linear warm-up over ``warmup_epochs`` then a half cosine to
    0 at the end of ``epochs`` (MGLL's downstream schedule); ``"constant"`` keeps ``lr`` throughout."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    scheduler = None
    if schedule == "cosine":
        from medgrain.training.optim import warmup_cosine

        per_epoch = len(train_loader)
        total, warmup = epochs * per_epoch, int(round(warmup_epochs * per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
    sign = -1.0 if maximize else 1.0
    best, best_state, best_epoch, since_best, history = float("inf"), None, None, 0, []
    for epoch in progress(range(epochs), description, total=epochs):
        model.train()  # a frozen encoder stays in eval mode: see FrozenEncoder
        for batch in train_loader:
            loss = batch_loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{description}: non-finite training loss {loss.item()} in epoch {epoch}; "
                                         "lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        if validate is None:
            continue
        model.eval()
        score = validate()
        history.append(score)
        if sign * score < best:
            best, best_epoch, since_best = sign * score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            if since_best >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"epochs_run": epoch + 1, "best_epoch": None if best_epoch is None else best_epoch + 1,
            "best_valid": None if best_state is None else sign * best, "valid_history": history}


class FrozenEncoder(torch.nn.Module):
    """A pretrained encoder that is not trained: no gradients, and eval mode whatever the parent's
    mode, so its BatchNorm statistics do not drift (the bug of MGCA's detection and segmentation
    code, github.com/HKU-MedAI/MGCA, for Wang et al., NeurIPS 2022, arXiv:2210.06044)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        return self.encoder(*args, **kwargs)
