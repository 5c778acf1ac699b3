"""Objectives with absent texts: the text tower runs on the present texts only, absent rows are zero
features, and the losses get the masks (issue 12)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medgrain.losses import ClipLoss, MGLLLoss
from medgrain.losses.objective import ClipObjective, MGLLObjective

N, D = 5, 4


class CountingModel(nn.Module):
    """encode_text embeds the token ids and records how many texts it saw."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Linear(3, D)
        self.embed = nn.Embedding(50, D)
        self.seen: list[int] = []

    def logit_scale_value(self):
        return torch.tensor(10.0)

    def encode_image(self, images):
        return F.normalize(self.image(images), dim=-1)

    def encode_text(self, tokens):
        self.seen.append(tokens["input_ids"].shape[0])
        return F.normalize(self.embed(tokens["input_ids"]).mean(1), dim=-1)


def _tokens(ids):
    ids = torch.tensor(ids)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "word_ids": torch.zeros_like(ids)}


def _batch():
    present = {"a": torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool), "b": torch.zeros(N, dtype=torch.bool)}
    return {
        "ids": list("vwxyz"),
        "images": torch.randn(N, 3, generator=torch.Generator().manual_seed(1)),
        "texts": {"a": _tokens([[1, 2], [3, 4], [1, 2]]), "b": None},
        "text_ids": {"a": torch.tensor([7, -1, 7, 8, -1]), "b": torch.full((N,), -1)},
        "present": present,
    }


def test_mgll_objective_runs_the_tower_on_present_texts_only():
    model, batch = CountingModel(), _batch()
    out = MGLLObjective(["a", "b"])(model, batch)
    assert model.seen == [3]  # granularity a: 3 present texts; b: none, the tower is not run
    image = model.encode_image(batch["images"])
    text_a = torch.zeros(N, D)
    text_a[batch["present"]["a"]] = model.encode_text(batch["texts"]["a"])
    ref = MGLLLoss()(image, [text_a, torch.zeros(N, D)], [batch["text_ids"]["a"], batch["text_ids"]["b"]], 10.0,
                     present=[batch["present"]["a"], batch["present"]["b"]])
    for k, v in ref.items():
        torch.testing.assert_close(out[k], v, msg=k)
    out["loss"].backward()
    assert model.embed.weight.grad.abs().sum() > 0


def test_clip_objective_over_present_texts_and_without_any():
    model, batch = CountingModel(), _batch()
    out = ClipObjective(["a", "b"], "a")(model, batch)
    present = batch["present"]["a"]
    image = model.encode_image(batch["images"])
    ref = ClipLoss()(image[present], model.encode_text(batch["texts"]["a"]), 10.0)["loss"]
    torch.testing.assert_close(out["loss"], ref)
    none = ClipObjective(["a", "b"], "b")(model, batch)["loss"]
    assert none.item() == 0.0 and none.requires_grad
