"""MGCA's alignment functions against direct loop-based references (float64, Python loops over
samples, tokens and prototypes), plus padding invariance, freezing and input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medgrain.losses.mgca import (
    MGCALoss,
    instance_alignment_loss,
    prototype_alignment_loss,
    sinkhorn_knopp,
    token_alignment_loss,
    token_weights_from_attention,
)

# -1 for [CLS] at the start, [SEP] at the end and padding; reports of different lengths, a word of
# three pieces, and a report whose last word is cut by truncation (no [SEP]).
WORD_IDS = torch.tensor(
    [
        [-1, 0, 0, 1, 2, 2, 2, 3, -1, -1, -1],
        [-1, 0, 1, -1, -1, -1, -1, -1, -1, -1, -1],
        [-1, 0, 1, 1, 2, 3, 4, 5, 5, 6, 6],
    ]
)


def _unit(*shape, generator=None):
    return F.normalize(torch.randn(*shape, dtype=torch.float64, generator=generator), dim=-1)


def _ce_diagonal(scores: torch.Tensor, j: int, over_rows: bool) -> torch.Tensor:
    """-log softmax at the diagonal entry j, over row j's columns (or column j's rows)."""
    line = [scores[k, j] if over_rows else scores[j, k] for k in range(scores.shape[0])]
    return -(scores[j, j] - torch.logsumexp(torch.stack(line), dim=0))


# ----------------------------------------------------------------------------- merge_wordpieces


def _merge_reference(hidden, attention, word_ids, reduction):
    n, _, d = hidden.shape
    num_words = int(word_ids.max()) + 1
    out = torch.zeros(n, num_words, d, dtype=hidden.dtype)
    att = torch.zeros(n, num_words, dtype=attention.dtype)
    count = torch.zeros(n, num_words)
    for i in range(n):
        for t in range(word_ids.shape[1]):
            w = int(word_ids[i, t])
            if w >= 0:
                out[i, w] += hidden[i, t]
                att[i, w] += attention[i, t]
                count[i, w] += 1
    if reduction == "mean":
        out = out / count.clamp(min=1).unsqueeze(-1)
    return out, att, count > 0


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_merge_wordpieces_matches_loop(reduction):
    # Imported here, through the re-export: it pulls in medgrain.models, which the losses do not need.
    from medgrain.losses.mgca import merge_wordpieces

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 11, 5, dtype=torch.float64, generator=g, requires_grad=True)
    attention = torch.rand(3, 11, dtype=torch.float64, generator=g)
    words, word_attention, word_mask = merge_wordpieces(hidden, attention, WORD_IDS, reduction)
    ref_words, ref_attention, ref_mask = _merge_reference(hidden.detach(), attention, WORD_IDS, reduction)
    assert words.shape == (3, 7, 5) and word_mask.dtype == torch.bool
    torch.testing.assert_close(words, ref_words)
    torch.testing.assert_close(word_attention, ref_attention)
    assert torch.equal(word_mask, ref_mask)
    assert word_mask.sum(1).tolist() == [4, 2, 7]
    words.sum().backward()  # special tokens and padding get no gradient
    assert torch.all(hidden.grad[WORD_IDS < 0] == 0) and torch.all(hidden.grad[WORD_IDS >= 0] != 0)


def test_merge_wordpieces_without_words_and_errors():
    from medgrain.losses.mgca import merge_wordpieces

    words, attention, mask = merge_wordpieces(torch.randn(2, 4, 3), torch.rand(2, 4), torch.full((2, 4), -1))
    assert words.shape == (2, 1, 3) and not mask.any() and torch.all(attention == 0)
    with pytest.raises(ValueError, match="reduction"):
        merge_wordpieces(torch.randn(1, 2, 3), torch.rand(1, 2), torch.zeros(1, 2, dtype=torch.long), "max")
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        merge_wordpieces(torch.randn(1, 2, 3), torch.rand(1, 3), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        merge_wordpieces(torch.randn(1, 2, 3), torch.rand(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="-1"):
        merge_wordpieces(torch.randn(1, 2, 3), torch.rand(1, 2), torch.tensor([[0, -2]]))


# ----------------------------------------------------------------------------- token weights


def _weights_reference(attention, mask, low, high):
    out = torch.zeros_like(attention)
    for i in range(attention.shape[0]):
        idx = [t for t in range(attention.shape[1]) if mask[i, t]]
        values = attention[i, idx]
        lo, hi = torch.quantile(values, low), torch.quantile(values, high)
        clamped = torch.stack([min(max(v, lo), hi) for v in values])
        total = clamped.sum()
        for k, t in enumerate(idx):
            out[i, t] = clamped[k] / total if total > 0 else 1.0 / len(idx)
    return out


def test_token_weights_match_per_row_quantiles():
    g = torch.Generator().manual_seed(1)
    attention = torch.rand(5, 9, dtype=torch.float64, generator=g) ** 3
    mask = torch.ones(5, 9, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, 1:] = False  # a single valid entry: weight 1
    mask[2, ::2] = False
    attention[3] = 0.0  # all-zero attention: uniform
    attention[~mask] = 7.0  # invalid entries must not influence the quantiles
    weights = token_weights_from_attention(attention, mask, 0.1, 0.9)
    torch.testing.assert_close(weights, _weights_reference(attention, mask, 0.1, 0.9))
    torch.testing.assert_close(weights.sum(1), torch.ones(5, dtype=torch.float64))
    assert weights[1, 0] == 1 and torch.all(weights[~mask] == 0)
    torch.testing.assert_close(weights[3], torch.full((9,), 1 / 9, dtype=torch.float64))
    # float32 and bf16 attention come back as float32
    assert token_weights_from_attention(attention.bfloat16(), mask).dtype == torch.float32


def test_token_weights_errors():
    with pytest.raises(ValueError, match=r"rows \[1\].*no valid token"):
        token_weights_from_attention(torch.rand(2, 3), torch.tensor([[True, False, True], [False] * 3]))
    with pytest.raises(ValueError, match="same shape"):
        token_weights_from_attention(torch.rand(2, 3), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-negative"):
        token_weights_from_attention(-torch.rand(1, 3), torch.ones(1, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- instance level


def test_instance_alignment_matches_loop():
    g = torch.Generator().manual_seed(2)
    image, text = _unit(6, 8, generator=g), _unit(6, 8, generator=g)
    scores = image @ text.T / 0.07
    ref = sum(_ce_diagonal(scores, i, False) + _ce_diagonal(scores, i, True) for i in range(6)) / 12
    torch.testing.assert_close(instance_alignment_loss(image, text, 0.07), ref)
    # float32 under bf16 autocast stays float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = instance_alignment_loss(image.float(), text.float(), 0.07)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        instance_alignment_loss(image, text[:5])


# ----------------------------------------------------------------------------- token level


def _context(query, keys, temperature):
    logits = torch.stack([query @ k / temperature for k in keys])
    attention = logits.softmax(0)
    context = sum(a * k for a, k in zip(attention, keys))
    return context / context.norm()


def _bidirectional_weighted_ce(tokens, contexts, weights, temperature):
    t = len(tokens)
    scores = torch.stack(
        [torch.stack([tokens[j] @ contexts[k] / temperature for k in range(t)]) for j in range(t)]
    )
    return 0.5 * sum(
        weights[j] * (_ce_diagonal(scores, j, False) + _ce_diagonal(scores, j, True)) for j in range(t)
    )


def _token_reference(
    patches, words, word_mask, patch_weights, word_weights, temperature, attention_temperature
):
    losses = []
    for i in range(patches.shape[0]):
        valid = [j for j in range(words.shape[1]) if word_mask[i, j]]
        w, p = [words[i, j] for j in valid], list(patches[i])
        word_contexts = [_context(wj, p, attention_temperature) for wj in w]
        patch_contexts = [_context(pm, w, attention_temperature) for pm in p]
        word_loss = _bidirectional_weighted_ce(w, word_contexts, word_weights[i, valid], temperature)
        patch_loss = _bidirectional_weighted_ce(p, patch_contexts, patch_weights[i], temperature)
        losses.append(0.5 * (word_loss + patch_loss))
    return sum(losses) / len(losses)


def _token_batch(seed=3, n=3, m=5, w=7, d=8):
    g = torch.Generator().manual_seed(seed)
    patches, words = _unit(n, m, d, generator=g), _unit(n, w, d, generator=g)
    word_mask = torch.zeros(n, w, dtype=torch.bool)
    for i, length in enumerate([4, 1, 7][:n]):  # reports of different lengths, one of a single word
        word_mask[i, :length] = True
    patch_weights = token_weights_from_attention(
        torch.rand(n, m, generator=g), torch.ones(n, m, dtype=torch.bool)
    )
    word_weights = token_weights_from_attention(torch.rand(n, w, generator=g), word_mask)
    return patches, words, word_mask, patch_weights.double(), word_weights.double()


def test_token_alignment_matches_loop():
    batch = _token_batch()
    loss = token_alignment_loss(*batch, temperature=0.1, attention_temperature=0.1)
    torch.testing.assert_close(loss, _token_reference(*batch, 0.1, 0.1))
    loss = token_alignment_loss(*batch, temperature=0.3, attention_temperature=0.05)
    torch.testing.assert_close(loss, _token_reference(*batch, 0.3, 0.05))


def test_token_alignment_padding_never_changes_loss_or_gradients():
    patches, words, word_mask, patch_weights, word_weights = _token_batch()
    words = words.clone().requires_grad_(True)
    loss = token_alignment_loss(patches, words, word_mask, patch_weights, word_weights)
    (grad,) = torch.autograd.grad(loss, words)

    # Garbage in the existing padded slots and three extra padded slots: huge, NaN, weights too.
    g = torch.Generator().manual_seed(9)
    n, w, d = words.shape
    garbage = 1e4 * torch.randn(n, w + 3, d, dtype=torch.float64, generator=g)
    garbage[0, -1] = float("nan")
    mask = torch.cat([word_mask, torch.zeros(n, 3, dtype=torch.bool)], dim=1)
    padded_words = torch.where(
        mask.unsqueeze(-1), F.pad(words.detach(), (0, 0, 0, 3)), garbage
    ).requires_grad_(True)
    padded_weights = torch.where(mask, F.pad(word_weights, (0, 3)), torch.rand(n, w + 3, dtype=torch.float64))
    padded_loss = token_alignment_loss(patches, padded_words, mask, patch_weights, padded_weights)
    (padded_grad,) = torch.autograd.grad(padded_loss, padded_words)

    # equal up to float64 rounding: longer rows only change the order of the summations
    torch.testing.assert_close(padded_loss, loss.detach(), rtol=1e-14, atol=0)
    torch.testing.assert_close(padded_grad[:, :w][word_mask], grad[word_mask], rtol=1e-12, atol=1e-15)
    assert torch.all(padded_grad[~mask] == 0)


def test_token_alignment_learnable_cross_attention_matches_loop_and_trains():
    torch.manual_seed(4)
    word_to_patch = torch.nn.MultiheadAttention(8, 1, batch_first=True)
    patch_to_word = torch.nn.MultiheadAttention(8, 1, batch_first=True)
    patches, words, word_mask, patch_weights, word_weights = (
        t.float() if t.is_floating_point() else t for t in _token_batch()
    )
    loss = token_alignment_loss(
        patches, words, word_mask, patch_weights, word_weights, cross_attention=(word_to_patch, patch_to_word)
    )
    # Reference: each pair alone, its valid words only, no padding mask needed.
    losses = []
    for i in range(3):
        valid = word_mask[i]
        w, p = words[i, valid][None], patches[i][None]
        c = F.normalize(word_to_patch(w, p, p, need_weights=False)[0], dim=-1)[0]
        e = F.normalize(patch_to_word(p, w, w, need_weights=False)[0], dim=-1)[0]
        word_loss = _bidirectional_weighted_ce(list(w[0]), list(c), word_weights[i, valid], 0.1)
        patch_loss = _bidirectional_weighted_ce(list(p[0]), list(e), patch_weights[i], 0.1)
        losses.append(0.5 * (word_loss + patch_loss))
    torch.testing.assert_close(loss, sum(losses) / 3, rtol=1e-5, atol=1e-5)
    loss.backward()
    for layer in (word_to_patch, patch_to_word):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_token_alignment_errors():
    patches, words, word_mask, patch_weights, word_weights = _token_batch()
    with pytest.raises(ValueError, match=r"samples \[1\] have no valid word"):
        bad = word_mask.clone()
        bad[1] = False
        token_alignment_loss(patches, words, bad, patch_weights, word_weights)
    with pytest.raises(ValueError, match="patch_weights must have shape"):
        token_alignment_loss(patches, words, word_mask, patch_weights[:, :4], word_weights)
    with pytest.raises(ValueError, match="word_mask must have shape"):
        token_alignment_loss(patches, words, word_mask[:, :3], patch_weights, word_weights)
    with pytest.raises(ValueError, match="do not match patches"):
        token_alignment_loss(patches, words[..., :4], word_mask, patch_weights, word_weights)


# ----------------------------------------------------------------------------- Sinkhorn-Knopp


def _sinkhorn_direct(scores, epsilon, iterations):
    q = torch.exp(scores / epsilon).T  # (K, N), no stabilisation
    q = q / q.sum()
    k, n = q.shape
    for _ in range(iterations):
        for row in range(k):
            q[row] = q[row] / q[row].sum() / k
        for col in range(n):
            q[:, col] = q[:, col] / q[:, col].sum() / n
    for col in range(n):
        q[:, col] = q[:, col] / q[:, col].sum()
    return q.T


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_sinkhorn_matches_direct_formula(iterations):
    g = torch.Generator().manual_seed(5)
    scores = _unit(6, 8, generator=g) @ _unit(10, 8, generator=g).T  # cosine scores: exp(<=20)
    codes = sinkhorn_knopp(scores, 0.05, iterations)
    torch.testing.assert_close(codes, _sinkhorn_direct(scores, 0.05, iterations))
    torch.testing.assert_close(
        sinkhorn_knopp(scores.float(), 0.05, iterations).double(), codes, rtol=1e-4, atol=1e-6
    )


def _logsumexp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _sinkhorn_log_domain_loop(scores, epsilon, iterations):
    """The same algorithm on Python floats, one row and one column at a time, in the log domain."""
    n, k = scores.shape
    log_q = [[float(scores[i, j]) / epsilon for i in range(n)] for j in range(k)]  # (K, N)
    for _ in range(iterations):
        for j in range(k):
            shift = _logsumexp(log_q[j]) + math.log(k)
            log_q[j] = [v - shift for v in log_q[j]]
        for i in range(n):
            shift = _logsumexp([log_q[j][i] for j in range(k)]) + math.log(n)
            for j in range(k):
                log_q[j][i] -= shift
    for i in range(n):
        shift = _logsumexp([log_q[j][i] for j in range(k)])
        for j in range(k):
            log_q[j][i] -= shift
    return torch.tensor([[math.exp(log_q[j][i]) for j in range(k)] for i in range(n)])


def test_sinkhorn_stable_on_extreme_scores():
    g = torch.Generator().manual_seed(6)
    scores = 50.0 * torch.randn(16, 12, generator=g)  # scores / epsilon ~ 1e3: exp overflows float64
    assert not torch.isfinite(torch.exp(scores.double() / 0.05)).all()
    reference = _sinkhorn_log_domain_loop(scores.double(), 0.05, 3).float()
    for dtype in (torch.float32, torch.bfloat16):
        codes = sinkhorn_knopp(scores.to(dtype), 0.05, 3)
        assert codes.dtype == torch.float32 and torch.isfinite(codes).all() and (codes >= 0).all()
        torch.testing.assert_close(codes.sum(1), torch.ones(16), rtol=0, atol=1e-5)
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, 3), reference, rtol=1e-4, atol=1e-6)


def test_sinkhorn_converges_to_equipartition():
    g = torch.Generator().manual_seed(6)
    scores = _unit(16, 8, generator=g) @ _unit(12, 8, generator=g).T
    codes = sinkhorn_knopp(scores, 0.05, 300)  # every prototype ends up holding N/K samples
    torch.testing.assert_close(
        codes.sum(0), torch.full((12,), 16 / 12, dtype=torch.float64), rtol=0, atol=1e-4
    )
    torch.testing.assert_close(codes.sum(1), torch.ones(16, dtype=torch.float64))


def test_sinkhorn_has_no_gradient():
    scores = torch.randn(4, 5, requires_grad=True)
    assert not sinkhorn_knopp(scores).requires_grad


# ----------------------------------------------------------------------------- prototype level


def test_prototype_alignment_matches_loop():
    g = torch.Generator().manual_seed(7)
    image, text = _unit(6, 8, generator=g), _unit(6, 8, generator=g)
    prototypes = 3.0 * torch.randn(10, 8, dtype=torch.float64, generator=g)  # normalised inside
    loss = prototype_alignment_loss(image, text, prototypes, 0.2, 0.05, 3)

    units = [p / p.norm() for p in prototypes]
    z_v = torch.stack([torch.stack([image[i] @ u for u in units]) for i in range(6)])
    z_t = torch.stack([torch.stack([text[i] @ u for u in units]) for i in range(6)])
    q_v, q_t = _sinkhorn_direct(z_v, 0.05, 3), _sinkhorn_direct(z_t, 0.05, 3)
    total = 0.0
    for i in range(6):
        log_p_t = z_t[i] / 0.2 - torch.logsumexp(z_t[i] / 0.2, 0)
        log_p_v = z_v[i] / 0.2 - torch.logsumexp(z_v[i] / 0.2, 0)
        total = total - sum(q_v[i, k] * log_p_t[k] + q_t[i, k] * log_p_v[k] for k in range(10))
    torch.testing.assert_close(loss, total / (2 * 6))
    with pytest.raises(ValueError, match="prototypes must be"):
        prototype_alignment_loss(image, text, prototypes[:, :4])


# ----------------------------------------------------------------------------- MGCALoss


def _mgca_inputs(seed=8, n=4, m=6, w=5, d=16):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    word_mask = torch.arange(w).expand(n, w) < torch.tensor([[5], [2], [4], [1]])[:n]
    return (
        unit(n, d),
        unit(n, d),
        unit(n, m, d),
        unit(n, w, d),
        word_mask,
        token_weights_from_attention(torch.rand(n, m, generator=g), torch.ones(n, m, dtype=torch.bool)),
        token_weights_from_attention(torch.rand(n, w, generator=g), word_mask),
    )


def test_mgca_loss_composes_the_three_levels():
    torch.manual_seed(0)
    criterion = MGCALoss(lambda_ita=1.0, lambda_tca=0.5, lambda_cpa=2.0, num_prototypes=12, embed_dim=16)
    torch.testing.assert_close(criterion.prototypes.norm(dim=1), torch.ones(12))
    with torch.no_grad():
        criterion.prototypes.mul_(3.0)  # forward puts them back on the sphere first
    inputs = _mgca_inputs()
    out = criterion(*inputs)
    torch.testing.assert_close(criterion.prototypes.norm(dim=1), torch.ones(12))
    image, text, patches, words, word_mask, patch_weights, word_weights = inputs
    torch.testing.assert_close(out["ita"], instance_alignment_loss(image, text, 0.07))
    torch.testing.assert_close(
        out["tca"], token_alignment_loss(patches, words, word_mask, patch_weights, word_weights)
    )
    torch.testing.assert_close(out["cpa"], prototype_alignment_loss(image, text, criterion.prototypes))
    torch.testing.assert_close(out["loss"], out["ita"] + 0.5 * out["tca"] + 2.0 * out["cpa"])

    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_out = criterion(*(t.bfloat16() if t.is_floating_point() else t for t in inputs))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in bf16_out.values())


def test_prototypes_frozen_in_epoch_0_and_trained_in_epoch_1():
    torch.manual_seed(0)
    criterion = MGCALoss(num_prototypes=12, embed_dim=16, freeze_prototypes_epochs=1)
    optimizer = torch.optim.AdamW(criterion.parameters(), lr=0.1, weight_decay=0.5)
    inputs = _mgca_inputs()

    criterion.set_epoch(0)
    assert criterion.prototypes_frozen
    criterion(*inputs)["loss"].backward()
    before = criterion.prototypes.detach().clone()
    assert criterion.drop_frozen_prototype_grad_() and criterion.prototypes.grad is None
    optimizer.step()  # no update and no weight decay: AdamW skips a parameter without gradient
    assert torch.equal(criterion.prototypes, before) and criterion.prototypes not in optimizer.state

    criterion.set_epoch(1)
    assert not criterion.prototypes_frozen
    optimizer.zero_grad()
    criterion(*inputs)["loss"].backward()
    assert not criterion.drop_frozen_prototype_grad_()
    assert criterion.prototypes.grad is not None and criterion.prototypes.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(criterion.prototypes, before)


def test_mgca_loss_learnable_cross_attention_gets_gradients():
    torch.manual_seed(0)
    criterion = MGCALoss(num_prototypes=12, embed_dim=16, learnable_cross_attention=True)
    assert isinstance(criterion.word_to_patch_attention, torch.nn.MultiheadAttention)
    out = criterion(*_mgca_inputs())
    out["loss"].backward()
    for layer in (criterion.word_to_patch_attention, criterion.patch_to_word_attention):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    assert math.isfinite(out["tca"].item())
