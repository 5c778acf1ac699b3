"""Merging word pieces into words, as MGCA does before its token-level alignment.

A word-piece tokenizer splits "pneumothorax" into "pneumo", "##thorax"; MGCA aligns image regions
with *words*, so the pieces' hidden states and their [CLS] attention are merged back. The original
code walks each report token by token in Python; here a fast tokenizer's ``word_ids`` give every
piece its word directly and one ``index_add_`` merges the whole batch.
"""

from __future__ import annotations

import torch


def merge_wordpieces(
    hidden: torch.Tensor,
    attention: torch.Tensor,
    word_ids: torch.Tensor,
    reduction: str = "sum",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge word-piece states into word states.

    Args:
        hidden: (N, L, D) word-piece hidden states.
        attention: (N, L) [CLS] attention to each piece (or any per-piece score).
        word_ids: (N, L) integer word index of each piece, -1 for special tokens and padding
            (``Tokenizer(...)["word_ids"]``).
        reduction: "sum" (MGCA's choice) or "mean" of a word's piece states. A word's attention is
            always the sum of its pieces' attention: the [CLS] attends to the word through all of them.

    Returns:
        word_hidden (N, W, D), word_attention (N, W) and word_mask (N, W) bool, where W is the
        largest word id in the batch plus one (at least 1). Word w of a report sits in slot w; slots
        past a report's last word (and ids that no piece carries) are zero and masked out.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (N, L, D), got shape {tuple(hidden.shape)}")
    n, length, dim = hidden.shape
    if attention.shape != (n, length) or word_ids.shape != (n, length):
        raise ValueError(
            f"attention {tuple(attention.shape)} and word_ids {tuple(word_ids.shape)} must both be "
            f"(N, L) = {(n, length)} to match hidden {tuple(hidden.shape)}"
        )
    if word_ids.dtype.is_floating_point or word_ids.dtype == torch.bool:
        raise TypeError(f"word_ids must be an integer tensor, got {word_ids.dtype}")
    word_ids = word_ids.to(device=hidden.device, dtype=torch.long)
    if word_ids.numel() and int(word_ids.min()) < -1:
        raise ValueError("word_ids must be >= 0 for word pieces and -1 for special tokens and padding")

    num_words = max(int(word_ids.max()) + 1, 1) if word_ids.numel() else 1
    is_piece = word_ids >= 0
    # One flat index per piece into the (N * W) word slots; special tokens and padding are dropped
    # rather than sent to a dummy slot so that they cannot leak into any word.
    sample = torch.arange(n, device=hidden.device).unsqueeze(1).expand(n, length)
    slot = (sample * num_words + word_ids)[is_piece]

    word_hidden = hidden.new_zeros(n * num_words, dim).index_add_(0, slot, hidden[is_piece])
    word_attention = attention.new_zeros(n * num_words).index_add_(0, slot, attention[is_piece])
    pieces = torch.zeros(n * num_words, device=hidden.device, dtype=torch.long)
    pieces.index_add_(0, slot, torch.ones_like(slot))

    if reduction == "mean":
        word_hidden = word_hidden / pieces.clamp(min=1).unsqueeze(1).to(word_hidden.dtype)
    return (
        word_hidden.view(n, num_words, dim),
        word_attention.view(n, num_words),
        (pieces > 0).view(n, num_words),
    )
