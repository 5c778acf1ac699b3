"""MGLL: multi-granular language learning (Li, Wang, Farsiu and Kinahan, "Boosting Medical Visual Understanding
From Multi-Granular Language Learning", ICLR 2026, arXiv:2511.15943; released code github.com/HUANGLIZI/MGLL).

For each text granularity g the batch gives one text per image and a label per sample (a text id, so
that equal texts share a label, or a multi-hot finding vector). With S_g = s · V U_gᵀ,
C_g the co-occurrence of the labels and W_g = C_g / rowsum(C_g):

    clip_g  = ½ (soft CE of image→text rows with targets W_g + soft CE of text→image columns)
    point_g = mean over all pairs of BCE-with-logits(S_g, C_g)      (or W_g, as the original code did)
    kl      = mean over images i of Σ_g KL(P_g[i] ‖ M[i]),  P_g = softmax_rows(S_g),  M = mean_g P_g
    loss    = α_clip · red_g clip_g + α_point · red_g point_g + α_kl · kl,     red = mean (or sum)

The KL is the corrected one: a divergence between probability rows, in the direction KL(P_g ‖ M),
never dropped. The original code fed raw logits into it and skipped it whenever it was NaN, so it was
mostly off. Here a non-finite value is returned as it is, whatever its term: the trainer's guard is
the one place that counts and handles it.

A text may be absent (``present``, one bool mask (N,) per granularity). With P_g the samples present
at granularity g, clip_g and point_g are the formulas above restricted to P_g × P_g (softmaxes over
P_g, W_g row-normalised on P_g, means over P_g); a granularity with no present sample is left out of
the reduction over granularities; the KL runs over every image row, across the granularities with a
present sample, each P_g[i] a softmax over the columns present at all of them (0 when fewer than two
granularities take part or no column is common). Everything is masking, one batched op per term.

Under torch.distributed, rows are this rank's samples and columns the global batch (features gathered
with gradients, labels without), so after DDP averages gradients W processes match one process with
the whole batch.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from medgrain.distributed import gather_no_grad, gather_with_grad, is_distributed, respects_gather_flag
from medgrain.losses.clip import (
    as_logit_scale,
    check_features,
    check_present,
    gather_present,
    mask_columns,
    present_mean,
)
from medgrain.losses.precision import compute_dtype, full_precision

COOCCURRENCE_MODES = ("exact", "jaccard")
POINT_TARGETS = ("cooccurrence", "soft")
GRANULARITY_REDUCTIONS = ("mean", "sum")


def _label_kind(labels, name: str) -> str:
    """'ids' for class ids (N,), 'multi_hot' for (N, C) bool/float in {0, 1}; raises otherwise."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(labels).__name__}")
    if labels.dim() == 1:
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise TypeError(
                f"{name} of shape (N,) are class ids and must be an integer tensor, got {labels.dtype}; "
                "multi-hot labels are (N, C) bool or float"
            )
        return "ids"
    if labels.dim() == 2:
        if labels.dtype != torch.bool and not labels.is_floating_point():
            raise TypeError(
                f"{name} of shape (N, C) are multi-hot and must be bool or float, got {labels.dtype}; "
                "class ids are a 1-D integer tensor (N,)"
            )
        if labels.is_floating_point() and ((labels != 0) & (labels != 1)).any():
            raise ValueError(f"{name} are multi-hot and every entry must be 0 or 1")
        return "multi_hot"
    raise ValueError(f"{name} must be class ids (N,) or multi-hot (N, C), got shape {tuple(labels.shape)}")


def cooccurrence_matrix(labels: torch.Tensor, mode: str = "exact", other: torch.Tensor | None = None) -> torch.Tensor:
    """Co-occurrence of samples: float32 (N, M), rows from ``labels``, columns from ``other``.

    ``labels`` are class ids, a 1-D integer tensor (N,) (e.g. ``text_id`` of each text), or multi-hot
    (N, C), bool or float in {0, 1}. ``other`` (default: ``labels``) gives the columns, of the same kind;
    under torch.distributed it is the gathered global batch.

    - ``exact``: 1 where the ids are equal or the multi-hot rows are identical, else 0.
    - ``jaccard`` (multi-hot only): |a ∩ b| / |a ∪ b|, and 1 for two empty rows (they agree exactly).
    """
    if mode not in COOCCURRENCE_MODES:
        raise ValueError(f"unknown co-occurrence mode {mode!r}; expected one of {COOCCURRENCE_MODES}")
    kind = _label_kind(labels, "labels")
    if other is None:
        other = labels
    else:
        other_kind = _label_kind(other, "other")
        if other_kind != kind:
            raise ValueError(
                f"labels are {kind.replace('_', '-')} but other is {other_kind.replace('_', '-')}; "
                "rows and columns must be labelled the same way"
            )
        if kind == "multi_hot" and other.shape[1] != labels.shape[1]:
            raise ValueError(
                f"labels have {labels.shape[1]} classes but other has {other.shape[1]}; multi-hot rows must "
                "share their classes"
            )
        if other.device != labels.device:
            raise ValueError(f"labels are on {labels.device} but other is on {other.device}")

    if kind == "ids":
        if mode == "jaccard":
            raise ValueError(
                "jaccard co-occurrence needs multi-hot labels (N, C); class ids (N,) only support mode='exact'"
            )
        return (labels[:, None] == other[None, :]).float()

    # Set sizes from one matmul of 0/1 rows: O(N·M) memory instead of the (N, M, C) broadcast. Counts are
    # exact in float32 (also with TF32 inputs, whose products of 0/1 are exact); autocast off so that
    # bf16 cannot round them.
    with full_precision(labels.device):
        a, b = labels.float(), other.float()
        intersection = a @ b.T
        size_a, size_b = a.sum(1, keepdim=True), b.sum(1, keepdim=True).T
        if mode == "exact":
            return ((intersection == size_a) & (intersection == size_b)).float()
        union = size_a + size_b - intersection
        return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def smooth_kl(log_probs: torch.Tensor) -> torch.Tensor:
    """Mean over rows of Σ_g KL(P_g ‖ M), M = mean_g P_g, from log-probabilities (G, n, N) (row-wise).

    log M comes from logsumexp of the log P_g: a probability that underflows is never logged, and each
    log(P_g / M) is at most log G, so the term is finite for any finite logits."""
    num_g = log_probs.shape[0]
    if num_g == 1:
        return log_probs.new_zeros(())
    log_m = torch.logsumexp(log_probs, dim=0) - math.log(num_g)
    return (log_probs.exp() * (log_probs - log_m)).sum(dim=(0, 2)).mean()


def smooth_kl_present(logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``smooth_kl`` with absent texts: logits (G, n, N), columns (G, N) bool (global presence).

    The granularities that take part are those with a present text anywhere in the global batch; each
    row's distributions run over the columns present at all of them. 0 when fewer than two take part or
    no column is common. Masks throughout (no gathers), so absent entries get exactly zero weight and a
    finite zero gradient."""
    taking_part = columns.any(dim=1)  # (G,)
    num_part = taking_part.sum()
    common = (columns | ~taking_part[:, None]).all(dim=0)  # (N,)
    log_p = F.log_softmax(mask_columns(logits, common), dim=-1)
    fill = torch.finfo(log_p.dtype).min
    log_m = torch.logsumexp(log_p.masked_fill(~taking_part[:, None, None], fill), dim=0)
    log_m = log_m - num_part.clamp_min(1).to(log_p.dtype).log()
    kept = taking_part[:, None, None] & common[None, None, :]
    terms = torch.where(kept, log_p.exp() * (log_p - log_m), log_p.new_zeros(()))
    kl = terms.sum(dim=(0, 2)).mean()
    return torch.where((num_part >= 2) & common.any(), kl, kl.new_zeros(()))


def _check_alpha(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {choices}")
    return value


class MGLLLoss(nn.Module):
    """MGLL's objective over G >= 1 granularities.

    ``forward(image_features (N, D), text_features [G × (N, D)], labels [G × (N,) ids or (N, C)
    multi-hot], logit_scale, present=None)`` returns a dict: ``loss`` and the unweighted parts ``clip``, ``point``,
    ``kl`` and per granularity ``clip_<g>``, ``point_<g>`` (g = 0..G-1, in the order given). The parts
    keep their graph, so a composite objective may reweight them.

    ``alpha_*`` weight the three terms (paper: 0.5, 1, 1; the fixed upstream code is 0.25 on the KL);
    ``cooccurrence`` is ``exact`` (code-faithful) or ``jaccard`` (multi-hot only); ``point_target`` is
    ``cooccurrence`` (binary, as the paper) or ``soft`` (W_g, as the original code);
    ``granularity_reduction`` ``mean`` or ``sum`` (the original code sums) combines clip_g and point_g.
    The KL is always summed over granularities (the paper's Σ_g) and is 0 for G = 1.
    Non-finite values are returned as they are (see the module's docstring).

    ``present`` is None (every text present: the unmasked path) or G bool tensors (N,); rows of absent
    texts in ``text_features`` and ``labels`` are ignored, whatever finite values they hold. A
    granularity with no present sample reports ``clip_<g>`` = ``point_<g>`` = 0 and is left out of
    ``clip`` and ``point``.

    ``gather_distributed``: None gathers the global batch exactly when distributed (the default),
    False keeps each rank's loss to its own samples (``medgrain.distributed.gathering``).
    """

    def __init__(
        self,
        alpha_clip: float = 0.5,
        alpha_point: float = 1.0,
        alpha_kl: float = 1.0,
        cooccurrence: str = "exact",
        point_target: str = "cooccurrence",
        granularity_reduction: str = "mean",
        gather_distributed: bool | None = None,
    ):
        super().__init__()
        self.gather_distributed = gather_distributed
        self.alpha_clip = _check_alpha("alpha_clip", alpha_clip)
        self.alpha_point = _check_alpha("alpha_point", alpha_point)
        self.alpha_kl = _check_alpha("alpha_kl", alpha_kl)
        self.cooccurrence = _check_choice("cooccurrence", cooccurrence, COOCCURRENCE_MODES)
        self.point_target = _check_choice("point_target", point_target, POINT_TARGETS)
        self.granularity_reduction = _check_choice(
            "granularity_reduction", granularity_reduction, GRANULARITY_REDUCTIONS
        )

    def extra_repr(self) -> str:
        return (
            f"alpha_clip={self.alpha_clip}, alpha_point={self.alpha_point}, alpha_kl={self.alpha_kl}, "
            f"cooccurrence={self.cooccurrence!r}, point_target={self.point_target!r}, "
            f"granularity_reduction={self.granularity_reduction!r}"
        )

    def _check_inputs(self, image_features, text_features, labels) -> tuple[list, list]:
        for name, value in (("text_features", text_features), ("labels", labels)):
            if not isinstance(value, (list, tuple)):
                hint = f" (for one granularity pass [{name}])" if isinstance(value, torch.Tensor) else ""
                raise TypeError(
                    f"{name} must be a list or tuple with one entry per granularity, got "
                    f"{type(value).__name__}{hint}"
                )
        if len(text_features) == 0:
            raise ValueError("text_features is empty: MGLL needs at least one granularity")
        if len(labels) != len(text_features):
            raise ValueError(
                f"got {len(text_features)} text feature tensors but {len(labels)} label tensors; "
                "pass one of each per granularity"
            )
        for g, text in enumerate(text_features):
            check_features(image_features, text, name=f"text_features[{g}]")
        n = image_features.shape[0]
        for g, lab in enumerate(labels):
            kind = _label_kind(lab, f"labels[{g}]")
            if lab.shape[0] != n:
                raise ValueError(f"labels[{g}] has {lab.shape[0]} rows but the batch has N={n} images")
            if kind == "ids" and self.cooccurrence == "jaccard":
                raise ValueError(
                    f"cooccurrence='jaccard' needs multi-hot labels (N, C); labels[{g}] are class ids (N,)"
                )
        return list(text_features), list(labels)

    def _check_present(self, present, num_g: int, n: int, device) -> torch.Tensor | None:
        """None, or the (n, G) bool mask of this rank's present texts."""
        if present is None:
            return None
        if not isinstance(present, (list, tuple)) or len(present) != num_g:
            raise TypeError(
                f"present must be None or a list of {num_g} bool tensors (N,), one per granularity, got "
                f"{type(present).__name__}" + (f" of length {len(present)}" if isinstance(present, (list, tuple)) else "")
            )
        return torch.stack([check_present(p, n, f"present[{g}]").to(device) for g, p in enumerate(present)], dim=1)

    @respects_gather_flag
    def forward(self, image_features: torch.Tensor, text_features, labels, logit_scale, present=None) -> dict:
        text_features, labels = self._check_inputs(image_features, text_features, labels)
        num_g = len(text_features)
        present = self._check_present(present, num_g, image_features.shape[0], image_features.device)
        dtype = compute_dtype(image_features, *text_features)
        device = image_features.device
        with full_precision(device):
            scale = as_logit_scale(logit_scale, dtype, device)
            images = image_features.to(dtype)
            # Granularities are stacked so that every step below is one batched op (and, under
            # torch.distributed, one gather) instead of G of each.
            texts = torch.stack([t.to(dtype) for t in text_features], dim=1)  # (n, G, D)
            if is_distributed():
                all_images, all_texts = gather_with_grad(images), gather_with_grad(texts)
            else:
                all_images, all_texts = images, texts
            # (G, n, N): row i is this rank's image i against every text of granularity g ...
            logits_per_image = scale * images @ all_texts.permute(1, 2, 0)
            # ... and row j is this rank's text j against every image (the transpose on one process).
            if is_distributed():
                logits_per_text = scale * texts.transpose(0, 1) @ all_images.T
            else:
                logits_per_text = logits_per_image.transpose(1, 2)

            cooc = torch.stack([self._cooccurrence(lab.to(device)) for lab in labels]).to(dtype)  # (G, n, N)
            if present is None:
                clip_g, point_g, kl = self._terms(logits_per_image, logits_per_text, cooc)
                reduce = torch.mean if self.granularity_reduction == "mean" else torch.sum
                clip, point = reduce(clip_g), reduce(point_g)
            else:
                rows, columns = present.T, gather_present(present).T  # (G, n), (G, N)
                clip_g, point_g = self._terms_present(logits_per_image, logits_per_text, cooc, rows, columns)
                # clip_g and point_g are 0 at a granularity with no present sample: sums skip it as they are.
                clip, point = clip_g.sum(), point_g.sum()
                if self.granularity_reduction == "mean":
                    taking_part = columns.any(dim=1).sum().clamp_min(1).to(dtype)
                    clip, point = clip / taking_part, point / taking_part
                kl = smooth_kl_present(logits_per_image, columns)
            loss = self.alpha_clip * clip + self.alpha_point * point + self.alpha_kl * kl
        out = {"loss": loss, "clip": clip, "point": point, "kl": kl}
        for g in range(num_g):
            out[f"clip_{g}"], out[f"point_{g}"] = clip_g[g], point_g[g]
        return out

    def _terms(self, logits_per_image, logits_per_text, cooc):
        """(clip_g (G,), point_g (G,), kl) with every text present."""
        # The diagonal (a sample with itself) is 1 in both modes, so no row sum is 0.
        soft = cooc / cooc.sum(dim=-1, keepdim=True)
        # W_g is indexed by (this rank's sample, global sample) in both directions: the target of
        # image i over all texts is W_g[i, ·], that of text j over all images W_g[j, ·].
        log_p = F.log_softmax(logits_per_image, dim=-1)
        image_to_text = -(soft * log_p).sum(dim=-1).mean(dim=-1)
        text_to_image = -(soft * F.log_softmax(logits_per_text, dim=-1)).sum(dim=-1).mean(dim=-1)
        clip_g = 0.5 * (image_to_text + text_to_image)  # (G,)
        target = cooc if self.point_target == "cooccurrence" else soft
        point_g = F.binary_cross_entropy_with_logits(logits_per_image, target, reduction="none").mean(dim=(1, 2))
        return clip_g, point_g, smooth_kl(log_p)

    def _terms_present(self, logits_per_image, logits_per_text, cooc, rows, columns):
        """(clip_g, point_g), each (G,), restricted to P_g × P_g by masks (rows (G, n), columns (G, N))."""
        count = columns.sum(dim=1)  # (G,) |P_g| over the global batch
        cooc = cooc * columns[:, None, :]
        # A present row keeps its own (present) column, so its sum is >= 1; an absent row's may be 0.
        row_sum = cooc.sum(dim=-1, keepdim=True)
        soft = cooc / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))
        # Absent columns get zero probability; their soft target is 0, so the product is 0 there too.
        cols = columns[:, None, :]
        image_to_text = -(soft * F.log_softmax(mask_columns(logits_per_image, cols), dim=-1)).sum(dim=-1)
        text_to_image = -(soft * F.log_softmax(mask_columns(logits_per_text, cols), dim=-1)).sum(dim=-1)
        clip_g = 0.5 * present_mean(image_to_text + text_to_image, rows, count)
        target = cooc if self.point_target == "cooccurrence" else soft
        bce = F.binary_cross_entropy_with_logits(logits_per_image, target, reduction="none")
        bce = torch.where(cols, bce, bce.new_zeros(())).sum(dim=-1)  # (G, n)
        point_g = present_mean(bce, rows, count) / count.clamp_min(1).to(bce.dtype)
        return clip_g, point_g

    def _cooccurrence(self, labels: torch.Tensor) -> torch.Tensor:
        """This rank's samples (rows) against the global batch (columns)."""
        # Bool does not travel through every backend's all_gather; 0/1 floats do.
        all_labels = gather_no_grad(labels.float() if labels.dtype == torch.bool else labels)
        return cooccurrence_matrix(labels, self.cooccurrence, other=all_labels)
