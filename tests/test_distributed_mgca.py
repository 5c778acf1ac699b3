"""2 gloo processes with half the batch each give the loss values, the (DDP-averaged) parameter
gradients and the Sinkhorn-Knopp codes of 1 process with the whole batch, for MGCA's levels, also
with absent reports on both ranks (``present``)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _dist import run_distributed
from torch import nn

from medgrain.losses.mgca import MGCALoss, instance_alignment_loss, prototype_alignment_loss, sinkhorn_knopp
from medgrain.losses.mgca import token_weights_from_attention as weights_from

pytestmark = pytest.mark.distributed

WORLD = 2
N, M, W, DIM_IMAGE, DIM_TEXT, DIM, K = 8, 5, 6, 5, 7, 4, 6
CASES = ["ita", "cpa", "mgca", "mgca+present"]
# Absent reports on both halves of the batch (rank 0: samples 1, 2; rank 1: sample 6).
PRESENT = torch.tensor([1, 0, 0, 1, 1, 1, 0, 1], dtype=torch.bool)


def _model(gather_distributed: bool | None = None) -> nn.ModuleDict:
    torch.manual_seed(0)  # same initialisation on every rank, as DDP guarantees
    return nn.ModuleDict(
        {
            "image": nn.Linear(DIM_IMAGE, DIM),
            "text": nn.Linear(DIM_TEXT, DIM),
            "mgca": MGCALoss(num_prototypes=K, embed_dim=DIM, learnable_cross_attention=True,
                             gather_distributed=gather_distributed),
        }
    )


def _batch():
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(N, DIM_IMAGE, generator=gen)
    texts = torch.randn(N, DIM_TEXT, generator=gen)
    patches = torch.randn(N, M, DIM_IMAGE, generator=gen)
    words = torch.randn(N, W, DIM_TEXT, generator=gen)
    word_mask = torch.arange(W) < torch.randint(
        1, W + 1, (N, 1), generator=gen
    )  # reports of different lengths
    patch_weights = weights_from(torch.rand(N, M, generator=gen), torch.ones(N, M, dtype=torch.bool))
    word_weights = weights_from(torch.rand(N, W, generator=gen), word_mask)
    scores = torch.randn(N, K, generator=gen).clamp(-1, 1)  # cosine-like scores for Sinkhorn
    return images, texts, patches, words, word_mask, patch_weights, word_weights, scores


def _run(case: str, rows: slice, gather_distributed: bool | None = None):
    model = _model(gather_distributed)
    images, texts, patches, words, word_mask, patch_weights, word_weights, _ = (t[rows] for t in _batch())
    image = F.normalize(model["image"](images), dim=-1)
    text = F.normalize(model["text"](texts), dim=-1)
    criterion = model["mgca"]
    if case == "ita":
        out = {"loss": instance_alignment_loss(image, text)}
    elif case == "cpa":
        criterion.normalize_prototypes_()
        out = {"loss": prototype_alignment_loss(image, text, criterion.prototypes)}
    else:
        patch_embeddings = F.normalize(model["image"](patches), dim=-1)
        word_embeddings = F.normalize(model["text"](words), dim=-1)
        present = PRESENT[rows] if case.endswith("+present") else None
        if present is not None:  # an absent report has no words
            word_mask = word_mask & present[:, None]
        out = criterion(
            image, text, patch_embeddings, word_embeddings, word_mask, patch_weights, word_weights, present=present
        )
    out["loss"].backward()
    values = {k: v.detach() for k, v in out.items()}
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    return values, grads


def _on_each_rank():
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * N // world, (rank + 1) * N // world)
    results = {}
    for case in CASES:
        values, grads = _run(case, rows)
        # What DDP does to gradients, and what the trainer does to logged losses: average over ranks.
        for t in [*values.values(), *grads.values()]:
            dist.all_reduce(t)
            t /= world
        results[case] = (values, grads)
    for key, present in (("codes", None), ("codes+present", PRESENT[rows])):
        codes = sinkhorn_knopp(_batch()[-1][rows], epsilon=0.05, iterations=3, present=present)
        parts = [torch.empty_like(codes) for _ in range(world)]
        dist.all_gather(parts, codes)
        results[key] = torch.cat(parts)
    # gather_distributed=False: ITA's negatives and Sinkhorn's batch are this rank's (the released code's way).
    results["local"] = {case: _run(case, rows, gather_distributed=False) for case in ("mgca", "mgca+present")}
    return results


def test_two_ranks_equal_one_process_with_the_whole_batch():
    ranks = run_distributed(_on_each_rank, WORLD)
    whole = slice(None)
    for case in CASES:
        values, grads = _run(case, whole)
        assert grads, case
        if case != "ita":
            assert "mgca.prototypes" in grads
        if case == "mgca":
            assert "mgca.word_to_patch_attention.in_proj_weight" in grads
        for result in ranks:
            rank_values, rank_grads = result[case]
            assert rank_values.keys() == values.keys() and rank_grads.keys() == grads.keys()
            for k in values:
                torch.testing.assert_close(rank_values[k], values[k], rtol=1e-5, atol=1e-6, msg=f"{case} {k}")
            for k in grads:
                torch.testing.assert_close(
                    rank_grads[k], grads[k], rtol=1e-4, atol=1e-6, msg=f"{case} grad {k}"
                )
    codes = sinkhorn_knopp(_batch()[-1], epsilon=0.05, iterations=3)
    present_codes = sinkhorn_knopp(_batch()[-1], epsilon=0.05, iterations=3, present=PRESENT)
    for result in ranks:
        torch.testing.assert_close(result["codes"], codes, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(result["codes+present"], present_codes, rtol=1e-5, atol=1e-7)
    # and the per-rank codes differ from a rank-local Sinkhorn: the global batch mattered
    local = torch.cat([sinkhorn_knopp(s, 0.05, 3) for s in _batch()[-1].chunk(WORLD)])
    assert not torch.allclose(local, codes, atol=1e-3)
    for rank, result in enumerate(ranks):
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        for case, (local_values, local_grads) in result["local"].items():
            alone_values, alone_grads = _run(case, rows)
            for k in alone_values:
                torch.testing.assert_close(local_values[k], alone_values[k], rtol=1e-6, atol=1e-7, msg=f"{case} local {k}")
            for k in alone_grads:
                torch.testing.assert_close(local_grads[k], alone_grads[k], rtol=1e-6, atol=1e-7,
                                           msg=f"{case} local grad {k}")
