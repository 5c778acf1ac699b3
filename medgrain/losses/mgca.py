"""MGCA: multi-granularity cross-modal alignment (Wang, Zhou, Wang, Vardhanabhuti and Yu, "Multi-Granularity
Cross-modal Alignment for Generalized Medical Visual Representation Learning", NeurIPS 2022, arXiv:2210.06044;
released code github.com/HKU-MedAI/MGCA).

Three levels, each a function of L2-normalised embeddings, composed by ``MGCALoss``:

- instance (ITA): CLIP's InfoNCE between global image and report embeddings;
- token (TCA): each word against its attended image context and each patch against its attended
  report context, contrasted within the pair and weighted by the encoders' [CLS] attention;
- prototype (CPA): shared prototypes, Sinkhorn-Knopp codes of one modality as the target of the
  other modality's prediction (SwAV's swapped prediction across modalities).

Deviations from the released code (docs/methods.md lists each with the flag that restores the code's behaviour):
- padded word slots never enter a softmax (attention or contrast) and get zero weight;
- [SEP] is not a word (fast tokenizers give special tokens word id -1, ``merge_wordpieces`` drops them);
- both cross-modal contexts are L2-normalised (the code skips it for ViT patches);
- each bidirectional term is an average of its two directions, not a sum (the code's ITA and TCA
  are twice ours: use ``lambda_ita=2, lambda_tca=2`` to match the code's effective weights);
- under torchrun ITA's negatives and Sinkhorn's batch are global (the code is per GPU).

A report may be absent (``present``, bool (N,)): every level then runs over the samples that have one
(globally under torchrun) and gives exactly what it gives on that sub-batch, by masking, not gathering.

Everything is computed in float32 (float64 inputs stay float64) with autocast off, so bf16
callers get fp32 losses and Sinkhorn's exp(score / 0.05) never meets a half-precision range
(``medgrain.losses.precision``). ``MGCALoss(gather_distributed=False)`` makes ITA's negatives and
Sinkhorn's batch per rank, as in the released code; the default (None) makes them global under torchrun.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medgrain.distributed import (
    all_reduce_sum,
    gather_no_grad,
    gather_with_grad,
    is_distributed,
    local_rows,
    respects_gather_flag,
    world_size,
)
from medgrain.losses.clip import check_present, gather_present, mask_columns, present_mean
from medgrain.losses.precision import compute_dtype, in_full_precision

__all__ = [
    "MGCALoss",
    "instance_alignment_loss",
    "merge_wordpieces",  # noqa: F822 (provided lazily by __getattr__ below)
    "prototype_alignment_loss",
    "sinkhorn_knopp",
    "token_alignment_loss",
    "token_weights_from_attention",
]


def __getattr__(name: str):
    # merge_wordpieces lives with the text tower (medgrain.models.wordpieces) and is re-exported here,
    # where MGCA's users look for it. Lazily: importing medgrain.models pulls in timm, open_clip and
    # transformers, which the losses (and every spawned distributed worker) do not otherwise need.
    if name == "merge_wordpieces":
        from medgrain.models.wordpieces import merge_wordpieces

        return merge_wordpieces
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- token weights


@torch.no_grad()
def token_weights_from_attention(
    attention: torch.Tensor, mask: torch.Tensor, low: float = 0.1, high: float = 0.9
) -> torch.Tensor:
    """MGCA's token importance weights from [CLS] attention.

    Per row, the valid entries are clamped to their own ``low`` and ``high`` quantiles (linear
    interpolation, over the valid entries only), invalid entries are set to 0 and the row is divided
    by its sum. Clamping keeps a few dominant tokens (often [SEP] or a border patch) from taking all
    the weight and keeps rare tokens from vanishing.

    A row with a single valid entry puts weight 1 on it. A row whose clamped attention sums to 0
    (all-zero attention, e.g. a tower without [CLS] attention) gets uniform weights over its valid
    entries. The weights are constants (no gradient), as in MGCA.

    Args:
        attention: (N, T) non-negative attention.
        mask: (N, T) bool, True for real tokens.

    Returns:
        (N, T) weights, float32 (float64 for float64 input), each row summing to 1.
    """
    if attention.dim() != 2 or mask.shape != attention.shape:
        raise ValueError(
            f"attention and mask must be (N, T) of the same shape, got {tuple(attention.shape)} "
            f"and {tuple(mask.shape)}"
        )
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    mask = mask.to(device=attention.device, dtype=torch.bool)
    empty = ~mask.any(dim=1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} of the token mask have no valid token; every sample needs one")
    values = attention.detach().to(compute_dtype(attention))
    if (values[mask] < 0).any():
        raise ValueError("attention must be non-negative (softmax probabilities)")

    # NaN marks the invalid entries so that nanquantile sees only the valid ones, in one call.
    valid_only = values.masked_fill(~mask, float("nan"))
    q = torch.nanquantile(
        valid_only, torch.tensor([low, high], dtype=values.dtype, device=values.device), dim=1, keepdim=True
    )  # (2, N, 1)
    clamped = torch.minimum(torch.maximum(values, q[0]), q[1]).masked_fill(~mask, 0.0)
    total = clamped.sum(dim=1, keepdim=True)
    uniform = mask.to(values.dtype) / mask.sum(dim=1, keepdim=True)
    return torch.where(total > 0, clamped / total.clamp(min=torch.finfo(values.dtype).tiny), uniform)


# ----------------------------------------------------------------------------- instance level


@in_full_precision
def instance_alignment_loss(
    image: torch.Tensor, text: torch.Tensor, temperature: float = 0.07, present: torch.Tensor | None = None
) -> torch.Tensor:
    """ITA: symmetric InfoNCE between global embeddings, the diagonal as the positives.

    Args:
        image, text: (N, d) L2-normalised embeddings of N pairs.

    Under torchrun each rank's rows are its own samples and the columns the global batch, gathered
    with gradients (open_clip's ``local_loss``); with DDP averaging, W ranks with N/W pairs each
    give the gradients of one process with all N pairs. ``present`` (bool (N,)) keeps the pairs that
    have a report: the others leave every softmax and the mean (0 when none has one).
    """
    if image.dim() != 2 or image.shape != text.shape:
        raise ValueError(
            f"image and text must both be (N, d), got {tuple(image.shape)} and {tuple(text.shape)}"
        )
    dtype = compute_dtype(image, text)
    image, text = image.to(dtype), text.to(dtype)
    all_image, all_text = gather_with_grad(image), gather_with_grad(text)
    targets = local_rows(image.shape[0], device=image.device)
    image_to_text = image @ all_text.T / temperature
    text_to_image = text @ all_image.T / temperature
    if present is None:
        return 0.5 * (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets))
    present = check_present(present, image.shape[0]).to(image.device)
    columns = gather_present(present)
    per_pair = F.cross_entropy(mask_columns(image_to_text, columns), targets, reduction="none") + F.cross_entropy(
        mask_columns(text_to_image, columns), targets, reduction="none"
    )
    return 0.5 * present_mean(per_pair, present, columns.sum())


# ----------------------------------------------------------------------------- token level


def _diagonal_cross_entropies(
    similarity: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise and column-wise cross-entropies of a batch of square similarity matrices with the
    diagonal as the target, the softmaxes running over valid entries only.

    similarity: (N, T, T); valid: (N, T) bool, or None when every token is real (patches).
    Returns two (N, T) tensors, 0 at invalid tokens.
    """
    target = torch.diagonal(similarity, dim1=1, dim2=2)
    if valid is None:
        return similarity.logsumexp(dim=2) - target, similarity.logsumexp(dim=1) - target
    # -inf, not a large negative number: padding gets exactly zero probability. The row and the
    # column of a valid token hold at least its own diagonal entry, so no softmax is over -inf only.
    pair_valid = valid.unsqueeze(2) & valid.unsqueeze(1)
    logits = similarity.masked_fill(~pair_valid, float("-inf"))
    zero = similarity.new_zeros(())
    row = torch.where(valid, logits.logsumexp(dim=2) - target, zero)
    column = torch.where(valid, logits.logsumexp(dim=1) - target, zero)
    return row, column


def _weighted_contrast(
    tokens: torch.Tensor,
    contexts: torch.Tensor,
    valid: torch.Tensor | None,
    weights: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """½ Σ_j weight_j (row CE_j + column CE_j) of tokens against their own contexts: (N,)."""
    # Scaling the (N, T, d) tokens rather than the (N, T, T) scores: fewer elements when T > d.
    similarity = (tokens / temperature) @ contexts.transpose(1, 2)
    row, column = _diagonal_cross_entropies(similarity, valid)
    return 0.5 * ((row + column) * weights).sum(dim=1)


def _attend(
    queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """Parameter-free cross-attention: softmax(q kᵀ / temperature) k, over valid keys, normalised."""
    logits = (queries / temperature) @ keys.transpose(1, 2)
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask.unsqueeze(1), float("-inf"))
    return F.normalize(logits.softmax(dim=2) @ keys, dim=-1)


def _attend_learned(
    layer: nn.Module, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    key_padding_mask = None if key_mask is None else ~key_mask
    context, _ = layer(queries, keys, keys, key_padding_mask=key_padding_mask, need_weights=False)
    return F.normalize(context, dim=-1)


@in_full_precision
def _check_token_shapes(patches, words, word_mask, patch_weights, word_weights) -> None:
    if patches.dim() != 3 or words.dim() != 3:
        raise ValueError(
            f"patches and words must be (N, M, d) and (N, W, d), got {tuple(patches.shape)} "
            f"and {tuple(words.shape)}"
        )
    n, num_patches, dim = patches.shape
    num_words = words.shape[1]
    if words.shape[0] != n or words.shape[2] != dim:
        raise ValueError(f"words {tuple(words.shape)} do not match patches {tuple(patches.shape)} in N or d")
    for name, tensor, shape in (
        ("word_mask", word_mask, (n, num_words)),
        ("word_weights", word_weights, (n, num_words)),
        ("patch_weights", patch_weights, (n, num_patches)),
    ):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")


def token_alignment_loss(
    patches: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    patch_weights: torch.Tensor,
    word_weights: torch.Tensor,
    temperature: float = 0.1,
    attention_temperature: float = 0.1,
    cross_attention: tuple[nn.Module, nn.Module] | None = None,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """TCA: token-wise alignment within each image-report pair.

    Word side: each word j attends over the patches, c_j = normalise(softmax(w_j Pᵀ / τ_att) P);
    S = W Cᵀ / τ over the valid words; L_word = ½ Σ_j ω_j (row CE_j + column CE_j), diagonal targets.
    Patch side: each patch m attends over the valid words, e_m = normalise(softmax(p_m Wᵀ / τ_att) W);
    S' = P Eᵀ / τ; L_patch = ½ Σ_m π_m (row CE_m + column CE_m). Result: mean over the pairs of
    ½ (L_word + L_patch).

    Padded word slots are zeroed before any arithmetic and masked out of every softmax, so what they
    hold (and their weights) never changes the loss or its gradient.

    Args:
        patches: (N, M, d) L2-normalised patch embeddings (all real).
        words: (N, W, d) L2-normalised word embeddings.
        word_mask: (N, W) bool, True for real words; every pair needs at least one.
        patch_weights: (N, M) patch weights π (rows sum to 1, ``token_weights_from_attention``).
        word_weights: (N, W) word weights ω (rows sum to 1 over the valid words).
        cross_attention: optional (word_to_patch, patch_to_word) ``nn.MultiheadAttention`` layers
            (batch_first) replacing the parameter-free attention; ``attention_temperature`` is then
            unused (the layers scale by 1/√d themselves).
        present: optional (N,) bool, the pairs that have a report: the mean runs over them (globally
            under torchrun; 0 when none has one), and an absent pair's words and masks are not read.

    Returns:
        scalar loss.
    """
    _check_token_shapes(patches, words, word_mask, patch_weights, word_weights)
    n = patches.shape[0]
    word_mask = word_mask.to(device=words.device, dtype=torch.bool)
    if present is not None:
        present = check_present(present, n).to(words.device)
        # An absent report has no words: one placeholder slot keeps its (discarded) softmaxes finite.
        first_slot = torch.zeros_like(word_mask)
        first_slot[:, 0] = True
        word_mask = torch.where(present[:, None], word_mask, first_slot)
        word_weights = torch.where(present[:, None], word_weights, first_slot.to(word_weights.dtype))
    empty = ~word_mask.any(dim=1)
    if empty.any():
        raise ValueError(f"samples {empty.nonzero().flatten().tolist()} have no valid word in word_mask")

    dtype = compute_dtype(patches, words)
    patches = patches.to(dtype)
    words = words.to(dtype).masked_fill(~word_mask.unsqueeze(2), 0.0)
    word_weights = word_weights.to(dtype).masked_fill(~word_mask, 0.0)
    patch_weights = patch_weights.to(dtype)

    if cross_attention is None:
        word_contexts = _attend(words, patches, None, attention_temperature)
        patch_contexts = _attend(patches, words, word_mask, attention_temperature)
    else:
        word_to_patch, patch_to_word = cross_attention
        word_contexts = _attend_learned(word_to_patch, words, patches, None)
        patch_contexts = _attend_learned(patch_to_word, patches, words, word_mask)

    word_loss = _weighted_contrast(words, word_contexts, word_mask, word_weights, temperature)
    patch_loss = _weighted_contrast(patches, patch_contexts, None, patch_weights, temperature)
    if present is None:
        return (0.5 * (word_loss + patch_loss)).mean()
    return present_mean(0.5 * (word_loss + patch_loss), present, gather_present(present).sum())


# ----------------------------------------------------------------------------- prototype level


def _logsumexp_over_samples(log_q: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """logsumexp over dim 1 (samples) of a (K, N_local) tensor, the sum running over all ranks and over
    the ``present`` samples only (at least one somewhere): (K, 1)."""
    if present is not None:
        log_q = log_q.masked_fill(~present[None, :], float("-inf"))
    if not is_distributed():
        return log_q.logsumexp(dim=1, keepdim=True)
    shift = gather_no_grad(log_q.amax(dim=1).unsqueeze(0)).amax(dim=0, keepdim=True).T  # (K, 1)
    # A rank without present samples has -inf maxima; the global maximum is finite (one is present).
    total = all_reduce_sum((log_q - shift).exp().sum(dim=1, keepdim=True))
    return shift + total.log()


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, present: torch.Tensor | None = None
) -> torch.Tensor:
    """SwAV's equipartition Sinkhorn-Knopp: soft codes whose prototypes share the batch evenly.

    Q = exp(scores / ε)ᵀ (K, N) divided by its sum; each iteration scales the rows (prototypes) to
    sum 1/K, then the columns (samples) to sum 1/N; finally each column is scaled to sum 1.

    Computed in the log domain (no gradient, float32 at least), so scores / ε in the thousands give
    finite codes; where exp(scores / ε) does not overflow the result equals the direct formula.
    Under torchrun the sums over samples run over the global batch and N is the global batch size:
    W ranks with N/W samples each get the rows of one process's codes for all N samples.

    Args:
        scores: (N, K) sample-prototype scores.
        present: optional (N,) bool: the codes are those of the present samples alone (N their global
            number); absent samples get all-zero codes, as does everyone when none is present.

    Returns:
        (N, K) codes, each row summing to 1 (0 for absent samples).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, K), got shape {tuple(scores.shape)}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    num_prototypes = scores.shape[1]
    if present is None:
        num_samples = scores.shape[0] * world_size()  # equal per-rank batches, as gathering assumes
    else:
        present = check_present(present, scores.shape[0]).to(scores.device)
        num_samples = int(gather_present(present).sum())
        if num_samples == 0:
            return torch.zeros_like(scores, dtype=compute_dtype(scores))
    log_q = scores.detach().to(compute_dtype(scores)).T / epsilon  # (K, N)
    # Q / sum(Q) is left out: the first row scaling (or, with no iteration, the final column
    # scaling) cancels any global factor exactly, and on a GPU each step costs kernel launches.
    for _ in range(iterations):
        log_q = log_q - (_logsumexp_over_samples(log_q, present) + math.log(num_prototypes))
        log_q = log_q - (log_q.logsumexp(dim=0, keepdim=True) + math.log(num_samples))
    log_q = log_q - log_q.logsumexp(dim=0, keepdim=True)
    codes = log_q.exp().T
    return codes if present is None else codes.masked_fill(~present[:, None], 0.0)


@in_full_precision
def prototype_alignment_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    prototypes: torch.Tensor,
    temperature: float = 0.2,
    epsilon: float = 0.05,
    iterations: int = 3,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """CPA: each modality predicts the other's Sinkhorn-Knopp code over shared prototypes.

    z_v = I Pᵀ, z_t = T Pᵀ with P the normalised prototypes; q_v, q_t = sinkhorn_knopp(z) (targets,
    no gradient); loss = ½ (−mean_i Σ_k q_v log softmax(z_t / τ) − mean_i Σ_k q_t log softmax(z_v / τ)).

    Args:
        image, text: (N, d) L2-normalised global embeddings.
        prototypes: (K, d), normalised here (with gradient).
        present: optional (N,) bool, the pairs that have a report: codes and means over them alone
            (globally under torchrun; 0 when none has one).
    """
    if image.dim() != 2 or image.shape != text.shape:
        raise ValueError(
            f"image and text must both be (N, d), got {tuple(image.shape)} and {tuple(text.shape)}"
        )
    if prototypes.dim() != 2 or prototypes.shape[1] != image.shape[1]:
        raise ValueError(f"prototypes must be (K, {image.shape[1]}), got {tuple(prototypes.shape)}")
    if present is not None:
        present = check_present(present, image.shape[0]).to(image.device)
    dtype = compute_dtype(image, text, prototypes)
    prototypes = F.normalize(prototypes.to(dtype), dim=1)
    image_scores = image.to(dtype) @ prototypes.T
    text_scores = text.to(dtype) @ prototypes.T
    image_codes = sinkhorn_knopp(image_scores, epsilon, iterations, present)
    text_codes = sinkhorn_knopp(text_scores, epsilon, iterations, present)
    text_predicts_image = -(image_codes * (text_scores / temperature).log_softmax(dim=1)).sum(dim=1)
    image_predicts_text = -(text_codes * (image_scores / temperature).log_softmax(dim=1)).sum(dim=1)
    if present is None:
        return 0.5 * (text_predicts_image.mean() + image_predicts_text.mean())
    # Absent samples have zero codes, so their terms are already 0; the mean is over the present ones.
    count = gather_present(present).sum()
    return 0.5 * (present_mean(text_predicts_image, present, count) + present_mean(image_predicts_text, present, count))


# ----------------------------------------------------------------------------- the objective


class MGCALoss(nn.Module):
    """L = λ_ita·ITA + λ_tca·TCA + λ_cpa·CPA, owning the prototypes (and the optional attention).

    Call as ``loss(image_global, text_global, patches, words, word_mask, patch_weights, word_weights,
    present=None)`` with L2-normalised embeddings (``DualEncoder.image_tokens`` / ``text_tokens``) and
    weights from ``token_weights_from_attention``; returns ``{"loss", "ita", "tca", "cpa"}`` (parts
    unweighted). With ``present`` (bool (N,), the samples that have a report) every level runs over
    those samples alone, and the result also holds ``reports``: their number in the global batch. A
    batch without any report gives 0 for every term (never NaN) and ``reports`` = 0 says so.

    Prototype freezing (MGCA freezes them for the first epoch): ``set_epoch(epoch)`` at the start of
    every epoch, then ``drop_frozen_prototype_grad_()`` after ``backward()`` and before gradient
    clipping and ``optimizer.step()``. While frozen it sets ``prototypes.grad = None``, so AdamW skips
    them entirely: no update, no weight decay, no optimizer state. This is the original code's
    mechanism, chosen over toggling ``requires_grad`` because DDP fixes its set of gradient-carrying
    parameters when it wraps the model: a parameter that later stops receiving gradients makes DDP
    fail (or, if it was frozen at wrap time, never be synchronised once it is unfrozen). Here the
    gradients are computed and all-reduced as usual and only then discarded.

    ``learnable_cross_attention=True`` replaces TCA's parameter-free attention by two single-head
    ``nn.MultiheadAttention`` layers (word→patch, patch→word), the paper's description; the default
    is the released code's parameter-free attention.

    ``gather_distributed``: None (default) makes ITA's negatives and Sinkhorn's batch global under
    torchrun; False keeps every level to each rank's samples, as in the released code.
    """

    def __init__(
        self,
        lambda_ita: float = 1.0,
        lambda_tca: float = 1.0,
        lambda_cpa: float = 1.0,
        num_prototypes: int = 500,
        embed_dim: int = 128,
        ita_temperature: float = 0.07,
        tca_temperature: float = 0.1,
        attention_temperature: float = 0.1,
        cpa_temperature: float = 0.2,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        learnable_cross_attention: bool = False,
        freeze_prototypes_epochs: int = 1,
        gather_distributed: bool | None = None,
    ):
        super().__init__()
        self.gather_distributed = gather_distributed
        self.lambda_ita, self.lambda_tca, self.lambda_cpa = lambda_ita, lambda_tca, lambda_cpa
        self.ita_temperature = ita_temperature
        self.tca_temperature = tca_temperature
        self.attention_temperature = attention_temperature
        self.cpa_temperature = cpa_temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.freeze_prototypes_epochs = freeze_prototypes_epochs

        # Initialised like the bias-free Linear that holds them in MGCA, then put on the sphere.
        self.prototypes = nn.Parameter(
            nn.Linear(embed_dim, num_prototypes, bias=False).weight.detach().clone()
        )
        self.normalize_prototypes_()
        if learnable_cross_attention:
            self.word_to_patch_attention = nn.MultiheadAttention(embed_dim, 1, batch_first=True)
            self.patch_to_word_attention = nn.MultiheadAttention(embed_dim, 1, batch_first=True)
        else:
            self.word_to_patch_attention = self.patch_to_word_attention = None
        self.epoch = 0

    @torch.no_grad()
    def normalize_prototypes_(self) -> None:
        self.prototypes.copy_(F.normalize(self.prototypes, dim=1))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def prototypes_frozen(self) -> bool:
        return self.epoch < self.freeze_prototypes_epochs

    def drop_frozen_prototype_grad_(self) -> bool:
        """Discard the prototypes' gradient while they are frozen; returns whether it did."""
        if not self.prototypes_frozen:
            return False
        self.prototypes.grad = None
        return True

    @respects_gather_flag
    def forward(
        self,
        image_global: torch.Tensor,
        text_global: torch.Tensor,
        patches: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        patch_weights: torch.Tensor,
        word_weights: torch.Tensor,
        present: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        self.normalize_prototypes_()
        cross_attention = None
        if self.word_to_patch_attention is not None:
            cross_attention = (self.word_to_patch_attention, self.patch_to_word_attention)
        ita = instance_alignment_loss(image_global, text_global, self.ita_temperature, present=present)
        tca = token_alignment_loss(
            patches,
            words,
            word_mask,
            patch_weights,
            word_weights,
            temperature=self.tca_temperature,
            attention_temperature=self.attention_temperature,
            cross_attention=cross_attention,
            present=present,
        )
        cpa = prototype_alignment_loss(
            image_global,
            text_global,
            self.prototypes,
            temperature=self.cpa_temperature,
            epsilon=self.epsilon,
            iterations=self.sinkhorn_iterations,
            present=present,
        )
        loss = self.lambda_ita * ita + self.lambda_tca * tca + self.lambda_cpa * cpa
        out = {"loss": loss, "ita": ita, "tca": tca, "cpa": cpa}
        if present is not None:
            out["reports"] = gather_present(present.to(image_global.device)).sum().to(loss.dtype)
        return out

    def extra_repr(self) -> str:
        return (
            f"lambdas=(ita={self.lambda_ita}, tca={self.lambda_tca}, cpa={self.lambda_cpa}), "
            f"prototypes={tuple(self.prototypes.shape)}, temperatures=(ita={self.ita_temperature}, "
            f"tca={self.tca_temperature}, attention={self.attention_temperature}, cpa={self.cpa_temperature}), "
            f"epsilon={self.epsilon}, sinkhorn_iterations={self.sinkhorn_iterations}, "
            f"freeze_prototypes_epochs={self.freeze_prototypes_epochs}"
        )
