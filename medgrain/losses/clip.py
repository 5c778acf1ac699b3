"""CLIP's symmetric InfoNCE (Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021, arXiv:2103.00020), and the pieces the other contrastive losses share with it.

Features are L2-normalised by the caller and ``logit_scale`` is the multiplier itself (already
exponentiated), as open_clip passes them. Under torch.distributed every loss computes rows for this
rank's samples against columns from the global batch (open_clip's ``local_loss=True,
gather_with_grad=True``); ``medgrain.distributed`` explains why the parameter gradients then
match one process with the whole batch once DDP has averaged them. Each loss takes lightly's
``gather_distributed`` flag: None (the default) gathers exactly when a process group with more than
one rank exists, False keeps every rank's loss to its own samples.

Losses are computed in float32 (float64 stays float64) with autocast switched off (``medgrain.losses.precision``), so a bf16 or fp16
autocast caller gets an fp32 loss. A non-finite value is returned as it is, never dropped: the
trainer's guard is the one place that counts and handles it.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from medgrain.distributed import (
    gather_no_grad,
    gather_with_grad,
    is_distributed,
    local_rows,
    respects_gather_flag,
    world_size,
)
from medgrain.losses.precision import compute_dtype, full_precision


def _describe(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def check_features(image_features: torch.Tensor, text_features: torch.Tensor, name: str = "text_features"):
    """Both (N, D), floating point, N > 0; errors name the argument and the shapes."""
    for n, t in (("image_features", image_features), (name, text_features)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{n} must be a 2-D tensor (N, D), got {_describe(t)}")
    if text_features.shape != image_features.shape:
        raise ValueError(
            f"{name} has shape {tuple(text_features.shape)} but image_features has shape "
            f"{tuple(image_features.shape)}; they must match (N, D)"
        )
    if image_features.shape[0] == 0:
        raise ValueError("empty batch: image_features has no rows")
    for n, t in (("image_features", image_features), (name, text_features)):
        if not t.is_floating_point():
            raise TypeError(f"{n} must be a floating-point tensor, got {t.dtype}")


def as_logit_scale(logit_scale, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The multiplier as a 0-d tensor of the loss dtype (a learnable parameter keeps its gradient)."""
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(
                f"logit_scale must be a scalar (the multiplier, already exponentiated), got shape {tuple(logit_scale.shape)}"
            )
        return logit_scale.reshape(()).to(device=device, dtype=dtype)
    if isinstance(logit_scale, numbers.Real) and not isinstance(logit_scale, bool):
        return torch.tensor(float(logit_scale), dtype=dtype, device=device)
    raise TypeError(f"logit_scale must be a float or a scalar tensor, got {type(logit_scale).__name__}")


def check_present(present, n: int, name: str = "present") -> torch.Tensor:
    """A bool mask (N,) of the samples whose text is present; errors name the argument."""
    if not isinstance(present, torch.Tensor) or present.dim() != 1 or present.dtype != torch.bool:
        raise TypeError(f"{name} must be a 1-D bool tensor (N,), got {_describe(present)}"
                        + (f" of {present.dtype}" if isinstance(present, torch.Tensor) else ""))
    if present.shape[0] != n:
        raise ValueError(f"{name} has {present.shape[0]} entries but the batch has N={n} samples")
    return present


def gather_present(present: torch.Tensor) -> torch.Tensor:
    """The global batch's presence mask (columns), gathered like the labels (bool as 0/1 floats:
    not every backend's all_gather carries bool)."""
    if not is_distributed():
        return present
    return gather_no_grad(present.float()) > 0.5


def mask_columns(logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Logits whose absent columns get zero probability in any softmax over the last dim.

    The fill is the dtype's lowest finite value, not -inf: a row whose columns are all absent (a
    granularity with no present text) then gives a finite uniform softmax instead of NaN, so that
    masking its (unused) value out later leaves a finite gradient."""
    return logits.masked_fill(~columns, torch.finfo(logits.dtype).min)


def present_mean(values: torch.Tensor, rows: torch.Tensor, global_count: torch.Tensor) -> torch.Tensor:
    """Mean over the present samples of the global batch of per-sample ``values`` (..., n_local).

    This rank sums its present rows and divides by the global count, times the world size: once DDP
    averages over ranks that is the sum over every present sample divided by their number. 0 where
    no sample is present."""
    total = torch.where(rows, values, values.new_zeros(())).sum(dim=-1)
    return total * world_size() / global_count.clamp_min(1).to(values.dtype)


def pairwise_logits(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits_per_image, logits_per_text)``, both (n_local, N_global).

    Row i of ``logits_per_image`` is this rank's image i against every text of the global batch; row j
    of ``logits_per_text`` is this rank's text j against every image. On one process the second is the
    transpose of the first. Inputs must already be in the loss dtype."""
    if is_distributed():
        all_images = gather_with_grad(image_features)
        all_texts = gather_with_grad(text_features)
        return logit_scale * image_features @ all_texts.T, logit_scale * text_features @ all_images.T
    logits_per_image = logit_scale * image_features @ text_features.T
    return logits_per_image, logits_per_image.T


class ClipLoss(nn.Module):
    """CLIP's loss: the mean of image→text and text→image cross-entropy, the matching pair as target.

    ``forward(image_features (N, D), text_features (N, D), logit_scale, present=None) -> {"loss": scalar}``.

    ``present`` (bool (N,), None for all) restricts the loss to the samples that have the text: rows
    and columns of absent samples leave every softmax and the mean. With no present sample the loss
    is 0 (with a graph), never NaN. ``gather_distributed``: see the module's docstring.
    """

    def __init__(self, gather_distributed: bool | None = None):
        super().__init__()
        self.gather_distributed = gather_distributed

    @respects_gather_flag
    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, present=None) -> dict:
        check_features(image_features, text_features)
        if present is not None:
            return self._forward_present(image_features, text_features, logit_scale, present)
        dtype = compute_dtype(image_features, text_features)
        device = image_features.device
        with full_precision(device):
            scale = as_logit_scale(logit_scale, dtype, device)
            logits_per_image, logits_per_text = pairwise_logits(
                image_features.to(dtype), text_features.to(dtype), scale
            )
            # Sample i's pair sits at column rank * n_local + i of the global batch.
            targets = local_rows(image_features.shape[0], device=device)
            loss = 0.5 * (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets))
        return {"loss": loss}

    def _forward_present(self, image_features, text_features, logit_scale, present) -> dict:
        present = check_present(present, image_features.shape[0]).to(image_features.device)
        dtype = compute_dtype(image_features, text_features)
        device = image_features.device
        with full_precision(device):
            scale = as_logit_scale(logit_scale, dtype, device)
            logits_per_image, logits_per_text = pairwise_logits(
                image_features.to(dtype), text_features.to(dtype), scale
            )
            columns = gather_present(present)
            count = columns.sum()
            targets = local_rows(image_features.shape[0], device=device)
            image_to_text = F.cross_entropy(mask_columns(logits_per_image, columns), targets, reduction="none")
            text_to_image = F.cross_entropy(mask_columns(logits_per_text, columns), targets, reduction="none")
            loss = 0.5 * present_mean(image_to_text + text_to_image, present, count)
        return {"loss": loss}
