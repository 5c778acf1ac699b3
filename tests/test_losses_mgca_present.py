"""MGCA with absent reports: every level over the samples that have a report gives exactly what it
gives on that sub-batch (values and gradients); a batch without any report gives 0, never NaN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medgrain.losses.mgca import MGCALoss, sinkhorn_knopp, token_weights_from_attention

N, M, W, D = 6, 5, 4, 8
PRESENT = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)


def _inputs(seed=3):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g, dtype=torch.float64), dim=-1)  # noqa: E731
    word_mask = torch.arange(W).expand(N, W) < torch.tensor([[4], [0], [2], [1], [0], [3]])
    word_mask = word_mask & PRESENT[:, None]  # an absent report has no words at all
    patch_weights = token_weights_from_attention(torch.rand(N, M, generator=g), torch.ones(N, M, dtype=torch.bool))
    word_weights = torch.zeros(N, W, dtype=torch.float64)
    word_weights[PRESENT] = token_weights_from_attention(torch.rand(4, W, generator=g), word_mask[PRESENT]).double()
    return [unit(N, D), unit(N, D), unit(N, M, D), unit(N, W, D), word_mask, patch_weights, word_weights]


def _criterion(learnable):
    torch.manual_seed(0)
    return MGCALoss(num_prototypes=7, embed_dim=D, learnable_cross_attention=learnable).double()


def _run(criterion, inputs, present=None):
    leaves = [t.clone().requires_grad_(True) if t.is_floating_point() and i < 4 else t for i, t in enumerate(inputs)]
    out = criterion(*leaves, present=present)
    criterion.zero_grad()
    out["loss"].backward()
    return out, [t.grad for t in leaves[:4]], {k: p.grad.clone() for k, p in criterion.named_parameters()}


@pytest.mark.parametrize("learnable", [False, True])
def test_mgca_present_equals_mgca_on_the_sub_batch(learnable):
    inputs = _inputs()
    criterion = _criterion(learnable)
    out, grads, param_grads = _run(criterion, inputs, PRESENT)
    sub_out, sub_grads, sub_param_grads = _run(criterion, [t[PRESENT] for t in inputs])
    for k in ("loss", "ita", "tca", "cpa"):
        torch.testing.assert_close(out[k], sub_out[k], msg=k)
    assert out["reports"].item() == 4
    for g, sub_g in zip(grads, sub_grads):
        torch.testing.assert_close(g[PRESENT], sub_g)
        assert torch.equal(g[~PRESENT], torch.zeros_like(g[~PRESENT]))
    for k, g in sub_param_grads.items():
        torch.testing.assert_close(param_grads[k], g, msg=k)


def test_mgca_without_any_report_is_zero_and_flagged():
    inputs = _inputs()
    none = torch.zeros(N, dtype=torch.bool)
    inputs[4] = torch.zeros(N, W, dtype=torch.bool)
    out, grads, param_grads = _run(_criterion(True), inputs, none)
    for k in ("loss", "ita", "tca", "cpa", "reports"):
        assert out[k].item() == 0.0, k
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    assert all(torch.isfinite(g).all() for g in param_grads.values())


def test_sinkhorn_present_equals_sinkhorn_on_the_sub_batch():
    scores = torch.randn(N, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64).clamp(-1, 1)
    codes = sinkhorn_knopp(scores, 0.05, 3, present=PRESENT)
    torch.testing.assert_close(codes[PRESENT], sinkhorn_knopp(scores[PRESENT], 0.05, 3))
    assert torch.equal(codes[~PRESENT], torch.zeros_like(codes[~PRESENT]))
    assert torch.equal(sinkhorn_knopp(scores, 0.05, 3, present=torch.zeros(N, dtype=torch.bool)), torch.zeros_like(scores))


def test_bad_present_raises_clearly():
    with pytest.raises(ValueError, match="present has 5 entries"):
        _criterion(False)(*_inputs(), present=PRESENT[:5])
