"""2 gloo processes with half the batch each give the loss value and the (DDP-averaged) parameter
gradients of 1 process with the whole batch, for ClipLoss and MGLLLoss, also with absent texts on both
ranks (``present`` masks); and gather_with_grad's
gradient is right when the gathered tensor is permuted before use."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _dist import run_distributed
from torch import nn

from medgrain.distributed import gather_with_grad
from medgrain.losses import ClipLoss, MGLLLoss

pytestmark = pytest.mark.distributed

WORLD = 2
N, DIM_IMAGE, DIM_TEXT, DIM, G_MAX, CLASSES = 8, 5, 7, 4, 3, 4

# (name, loss kwargs, number of granularities, label kind)
CASES = [
    ("clip", {}, 1, None),
    ("mgll_ids_g3", {}, 3, "ids"),
    ("mgll_ids_g1", {"alpha_kl": 0.25}, 1, "ids"),
    ("mgll_jaccard_soft_sum", {"cooccurrence": "jaccard", "point_target": "soft", "granularity_reduction": "sum"}, 2, "bool"),
    ("mgll_exact_multi_hot", {"alpha_clip": 1.0, "alpha_point": 0.5}, 2, "float"),
    # Absent texts on both ranks (see _present): name suffix "+present".
    ("clip+present", {}, 1, None),
    ("mgll_ids_g3+present", {}, 3, "ids"),
    ("mgll_jaccard_soft_sum+present", {"cooccurrence": "jaccard", "point_target": "soft", "granularity_reduction": "sum"}, 3, "bool"),
]


def _present() -> torch.Tensor:
    """(G_MAX, N): absent texts on both halves; granularity 2 has a text only on rank 1's half."""
    present = torch.ones(G_MAX, N, dtype=torch.bool)
    present[0, [1, 6]] = False
    present[1, [0, 2, 3, 5]] = False
    present[2, : N // 2 + 1] = False
    return present


def _model() -> nn.ModuleDict:
    torch.manual_seed(0)  # same initialisation on every rank, as DDP guarantees
    model = nn.ModuleDict({"image": nn.Linear(DIM_IMAGE, DIM), "text": nn.Linear(DIM_TEXT, DIM)})
    model.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
    return model


def _batch():
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(N, DIM_IMAGE, generator=gen)
    texts = torch.randn(G_MAX, N, DIM_TEXT, generator=gen)
    # Few distinct labels, so positives repeat inside and across the two halves of the batch.
    ids = torch.randint(0, 3, (G_MAX, N), generator=gen)
    multi_hot = torch.rand(G_MAX, N, CLASSES, generator=gen) > 0.6
    multi_hot[:, :2] = False  # two empty rows (they co-occur with each other)
    multi_hot[:, 5] = multi_hot[:, 1]  # an identical pair across ranks
    return images, texts, ids, multi_hot


def _loss_and_grads(case, rows: slice, gather_distributed: bool | None = None):
    name, kwargs, granularities, label_kind = case
    model = _model()
    images, texts, ids, multi_hot = _batch()
    image_features = F.normalize(model["image"](images[rows]), dim=-1)
    text_features = [F.normalize(model["text"](texts[g, rows]), dim=-1) for g in range(granularities)]
    scale = model.logit_scale.exp()
    present = [p[rows] for p in _present()[:granularities]] if name.endswith("+present") else None
    if name.startswith("clip"):
        out = ClipLoss(gather_distributed=gather_distributed)(image_features, text_features[0], scale, present=None if present is None else present[0])
    else:
        labels = {"ids": ids, "bool": multi_hot, "float": multi_hot.float()}[label_kind]
        labels = [labels[g, rows] for g in range(granularities)]
        out = MGLLLoss(**kwargs, gather_distributed=gather_distributed)(image_features, text_features, labels, scale, present=present)
    out["loss"].backward()
    values = {k: v.detach() for k, v in out.items()}
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    return values, grads


def _gather_grad_through_permuted_consumer():
    """Gradient reaching this rank's part of ``gather_with_grad`` when the gathered tensor is permuted
    before use (as MGLL does with stacked granularities), and the value it must have."""
    rank, world = dist.get_rank(), dist.get_world_size()
    x = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(rank)).requires_grad_()
    weights = torch.randn(3, 4, 2 * world, dtype=torch.float64, generator=torch.Generator().manual_seed(99))
    (gather_with_grad(x).permute(1, 2, 0) * weights).sum().backward()
    # Every rank's loss reads every rank's part with the same weights, and backward sums over ranks.
    expected = world * weights[:, :, 2 * rank : 2 * rank + 2].permute(2, 0, 1)
    return x.grad, expected


def _on_each_rank(cases):
    rank, world = dist.get_rank(), dist.get_world_size()
    n = N // world
    results = [_gather_grad_through_permuted_consumer()]
    for case in cases:
        values, grads = _loss_and_grads(case, slice(rank * n, (rank + 1) * n))
        # What DDP does to gradients, and what the trainer does to logged losses: average over ranks.
        for t in [*values.values(), *grads.values()]:
            dist.all_reduce(t)
            t /= world
        results.append((values, grads))
    # gather_distributed=False: each rank's loss is one process's loss over that rank's samples alone.
    results.append([_loss_and_grads(case, slice(rank * n, (rank + 1) * n), gather_distributed=False)
                    for case in cases])
    return results


def test_two_processes_match_one_process():
    per_rank = run_distributed(_on_each_rank, WORLD, CASES)
    for rank in range(WORLD):
        grad, expected = per_rank[rank][0]
        torch.testing.assert_close(grad, expected, msg=f"gather_with_grad gradient on rank {rank}")
    for c, case in enumerate(CASES, start=1):
        values, grads = _loss_and_grads(case, slice(None))
        for rank in range(WORLD):
            dist_values, dist_grads = per_rank[rank][c]
            for k, v in values.items():
                torch.testing.assert_close(dist_values[k], v, atol=1e-5, rtol=1e-5, msg=f"{case[0]} {k}")
            for k, g in grads.items():
                assert g.abs().sum() > 0, f"{case[0]}: no gradient for {k}"
                torch.testing.assert_close(dist_grads[k], g, atol=1e-5, rtol=1e-5, msg=f"{case[0]} grad {k}")
    n = N // WORLD
    for c, case in enumerate(CASES):
        for rank in range(WORLD):
            alone_values, alone_grads = _loss_and_grads(case, slice(rank * n, (rank + 1) * n))
            local_values, local_grads = per_rank[rank][-1][c]
            for k, v in alone_values.items():
                torch.testing.assert_close(local_values[k], v, atol=1e-6, rtol=1e-6, msg=f"{case[0]} local {k}")
            for k, g in alone_grads.items():
                torch.testing.assert_close(local_grads[k], g, atol=1e-6, rtol=1e-6, msg=f"{case[0]} local grad {k}")
        # and per rank is not the global batch's loss (the flag mattered)
        assert not torch.allclose(per_rank[0][-1][c][0]["loss"], _loss_and_grads(case, slice(None))[0]["loss"])
