"""Gradient caching (train.contrastive_chunks; Gao et al. 2021, arXiv:2101.06983) gives the parameter
gradients of the unchunked step, in one process and under 2-process DDP, and replays dropout."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _dist import run_distributed

from medgrain.data.dataset import slice_rows
from medgrain.losses.objective import ClipObjective, MGLLObjective
from medgrain.models import create_model
from medgrain.models.factory import create_model_and_tokenizer
from medgrain.training.grad_cache import batchnorm_modules, cached_backward, chunk_bounds

N = 8
TEXTS = ["no finding", "small left pleural effusion", "cardiomegaly with mild edema", "right lower lobe opacity"]


def _model(dropout: float = 0.0):
    torch.manual_seed(0)  # the same weights on every rank and in every call
    drop = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    model, tokenizer = create_model_and_tokenizer("tiny-vit", text={"config": drop}, image={"kwargs": {"drop_rate": dropout,
                                                                              "proj_drop_rate": dropout}})
    return model.double().train(), tokenizer


def _batch(tokenizer, absent: bool = False):
    """A Collator-like batch; with ``absent``, some texts are missing (their tokens are left out, as the
    Collator does, and ``present`` says which)."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, len(TEXTS), (2, N), generator=gen)  # few distinct texts: MGLL's soft targets repeat
    present = {"finding": torch.ones(N, dtype=torch.bool), "description": torch.ones(N, dtype=torch.bool)}
    if absent:  # rows 2 and 3 lack a description: with 4 chunks of 2, one chunk has none at all
        present["description"][[2, 3, 6]] = False
    texts = {g: tokenizer([TEXTS[i] for i, p in zip(ids[k], present[g]) if p])
             for k, g in enumerate(("finding", "description"))}
    text_ids = {g: torch.where(present[g], ids[k], -1) for k, g in enumerate(("finding", "description"))}
    return {"ids": [str(i) for i in range(N)], "images": torch.randn(N, 3, 64, 64, generator=gen, dtype=torch.float64),
            "texts": texts, "text_ids": text_ids, "present": present}


def _objective(name: str):
    return ClipObjective(["finding"], "finding") if name == "clip" else MGLLObjective(["finding", "description"])


def _grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def _step(name: str, rows: slice, chunks: int):
    model, tokenizer = _model()
    batch = slice_rows(_batch(tokenizer, absent=name.endswith("+absent")), rows.start or 0, rows.stop or N)
    objective = _objective(name.removesuffix("+absent"))
    if chunks == 1:
        objective(model, batch)["loss"].backward()
    else:
        cached_backward(objective, model, batch, chunks)
    return _grads(model)


def _assert_same(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), what
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-12, msg=f"{what}: {k}")


def test_chunk_bounds_cover_the_batch():
    assert chunk_bounds(8, 3) == [(0, 3), (3, 6), (6, 8)]
    assert chunk_bounds(2, 4) == [(0, 1), (1, 2)]


@pytest.mark.parametrize("name", ["clip", "mgll", "mgll+absent"])
def test_chunked_gradients_equal_unchunked_in_one_process(name):
    whole = _step(name, slice(None), 1)
    assert "logit_scale" in whole and any(k.startswith("visual.") for k in whole)
    _assert_same(_step(name, slice(None), 4 if name.endswith("+absent") else 3), whole, f"{name}, chunks")


def _on_each_rank(names: list[str]):
    rank, world = dist.get_rank(), dist.get_world_size()
    n = N // world
    results = {}
    for name in names:
        grads = _step(name, slice(rank * n, (rank + 1) * n), 2)
        for g in grads.values():  # what the trainer does after a chunked step under DDP
            dist.all_reduce(g)
            g /= world
        results[name] = grads
    return results


@pytest.mark.distributed
def test_chunked_gradients_equal_unchunked_under_two_processes():
    names = ["clip", "mgll"]
    per_rank = run_distributed(_on_each_rank, 2, names)  # one spawn for both objectives
    for name in names:
        whole = _step(name, slice(None), 1)
        for rank, grads in enumerate(per_rank):
            _assert_same(grads[name], whole, f"{name}, rank {rank}, 2 chunks per rank")


def test_both_passes_of_a_chunk_draw_the_same_dropout_masks():
    model, tokenizer = _model(dropout=0.3)
    batch = _batch(tokenizer)
    objective = _objective("mgll")
    seen = []
    embed = objective.embed

    def recording(model, piece):
        out = embed(model, piece)
        seen.append({k: v.detach().clone() for k, v in out.items()})
        return out

    objective.embed = recording
    cached_backward(objective, model, batch, chunks=2)
    assert len(seen) == 4
    for first, second in ((seen[0], seen[2]), (seen[1], seen[3])):
        for k in first:
            assert torch.equal(first[k], second[k]), k
    # dropout was on: the same chunk embedded in eval mode differs
    with torch.no_grad():
        plain = embed(model.eval(), {k: v for k, v in batch.items()})
    assert not torch.allclose(plain["image"][:4], seen[0]["image"])
    assert not torch.allclose(plain["text:description"][:4], seen[0]["text:description"])


def test_batchnorm_layers_are_found():
    assert batchnorm_modules(create_model("tiny"))  # ResNet-18
    assert batchnorm_modules(_model()[0]) == []
