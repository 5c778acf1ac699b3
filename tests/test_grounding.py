"""Phrase grounding: pairs from findings with phrases, regions on the model's input grid, similarity
maps from known embeddings, and the whole run for a tiny CLIP (global head) and a tiny MGCA (token
heads) on synthetic data, with CNR and mIoU and their intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medgrain.data.manifest import Finding, Record, read_manifest, write_manifest
from medgrain.evaluation.bootstrap import Bootstrap
from medgrain.evaluation.grounding import (
    GroundingDataset,
    ground,
    grounding_metrics,
    grounding_pairs,
    similarity_maps,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from medgrain.data.synthetic import generate

    root = tmp_path_factory.mktemp("grounding")
    return read_manifest(generate("cxr", root / "cxr", n=24, seed=5, size=64, workers=1, progress=False))


def _encoder(tmp_path, preset, **overrides):
    from medgrain.evaluation import load_encoder
    from medgrain.models import create_model, get_tokenizer, save_pretrained

    torch.manual_seed(0)
    model, tokenizer = create_model(preset, **overrides), get_tokenizer(preset, **overrides)
    return load_encoder(str(save_pretrained(model, tokenizer, tmp_path / preset)), device="cpu")


def test_pairs_merge_boxes_of_one_phrase():
    record = Record(id="a", image="a.png", split="test", labels=["effusion", "nodule"], findings=[
        Finding(name="effusion", box=[0, 0, 2, 2], phrase="small effusion"),
        Finding(name="effusion", box=[4, 4, 6, 6], phrase="small effusion"),
        Finding(name="nodule", mask="m.png", phrase="a nodule"),
        Finding(name="nodule", box=[1, 1, 2, 2]),  # no phrase: not a grounding pair
    ])
    pairs = grounding_pairs([record])
    assert [(p.finding, p.phrase, p.boxes, p.masks) for p in pairs] == [
        ("effusion", "small effusion", ((0, 0, 2, 2), (4, 4, 6, 6)), ()), ("nodule", "a nodule", (), ("m.png",))]


def test_region_follows_the_eval_transform(tmp_path):
    # a 20 x 40 (H x W) image shown at 10 x 10: halved, then the centre 10 columns of 20 kept (cols 5..14)
    from PIL import Image

    Image.fromarray(np.zeros((20, 40), np.uint8)).save(tmp_path / "a.png")
    record = Record(id="a", image="a.png", split="test", labels=["x"],
                    findings=[Finding(name="x", box=[12, 4, 20, 12], phrase="x here")])
    write_manifest([record], tmp_path / "m.jsonl")
    manifest = read_manifest(tmp_path / "m.jsonl")
    dataset = GroundingDataset(manifest, grounding_pairs(manifest.records), lambda im: im.float(), 10)
    _, region = dataset[0]
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[2:6, 1:5] = True  # box /2 = [6, 2, 10, 6], minus the 5 cropped columns = [1, 2, 5, 6]
    assert torch.equal(region, expected)


class _KnownEmbeddings(torch.nn.Module):
    """Patches on a 2 x 2 grid with known unit vectors; phrases pick a direction."""

    token_heads = False

    def patch_embeddings(self, images, level):
        e = torch.eye(3)
        patches = torch.stack([e[0], e[1], e[2], (e[0] + e[1]) / math.sqrt(2)])
        return patches.expand(len(images), 4, 3), (2, 2)

    def phrase_embeddings(self, tokens, level):
        return torch.eye(3)[tokens["which"]]


def test_similarity_maps_are_cosines_upsampled_by_patch():
    def tokenizer(phrases):
        return {"which": torch.tensor([int(p) for p in phrases])}

    maps = similarity_maps(_KnownEmbeddings(), tokenizer, torch.zeros(2, 1, 4, 4), ["0", "2"])
    assert maps.shape == (2, 4, 4)
    first = torch.tensor([[1, 0], [0, 1 / math.sqrt(2)]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.allclose(maps[0], first)
    assert torch.allclose(maps[1], torch.tensor([[0, 0], [1, 0]]).float().repeat_interleave(2, 0).repeat_interleave(2, 1))


@pytest.mark.parametrize("preset,overrides,level", [("tiny", {"token_heads": False}, "global"),
                                                    ("tiny-mgca", {}, "token")])
def test_grounding_runs_for_clip_and_mgca(synthetic, tmp_path, preset, overrides, level):
    encoder = _encoder(tmp_path, preset, **overrides)
    scored = ground(encoder, synthetic, split="train", batch_size=4, keep_maps=3)
    pairs = grounding_pairs(synthetic.split("train"))
    assert scored["level"] == level and len(scored["cnr"]) == len(scored["miou"]) == len(pairs) > 0
    assert scored["maps"].shape == (3, 64, 64) and scored["regions"].dtype == bool
    metrics = grounding_metrics(scored, Bootstrap(resamples=50))
    macro = metrics["macro"]
    assert macro["cnr"] >= 0 and 0 <= macro["miou"] <= 1
    assert macro["cnr_ci"][0] <= macro["cnr"] <= macro["cnr_ci"][1]
    assert macro["miou_ci"][0] <= macro["miou"] <= macro["miou_ci"][1]
    assert set(metrics["per_finding"]) == {p.finding for p in pairs}
    assert sum(v["pairs"] for v in metrics["per_finding"].values()) == len(pairs)
    if level == "token":  # the same MGCA model through its global head is a different map
        other = ground(encoder, synthetic, split="train", level="global", batch_size=4)
        assert not np.allclose(other["cnr"], scored["cnr"], equal_nan=True)


def test_grounding_errors(synthetic, tmp_path):
    encoder = _encoder(tmp_path, "tiny", token_heads=False)
    with pytest.raises(ValueError, match="needs a model with token heads"):
        ground(encoder, synthetic, level="token")
    with pytest.raises(ValueError, match="level must be one of"):
        ground(encoder, synthetic, level="words")
    bare = [r.model_copy(update={"findings": []}) for r in synthetic.records]
    write_manifest(bare, tmp_path / "bare.jsonl")
    with pytest.raises(ValueError, match="no finding with a phrase and a box or mask"):
        ground(encoder, read_manifest(tmp_path / "bare.jsonl"))


def test_dense_features_are_what_the_global_feature_pools():
    # a CNN's pooled feature is the mean of its last stage: through a linear global head, the mean of
    # the locations' embeddings is the image embedding itself
    from medgrain.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny", token_heads=False)
    model.eval()
    images = torch.rand(2, model.config.preprocess_config().in_chans, 64, 64)
    with torch.no_grad():
        pooled = model.encode_image(images, normalize=False)
        dense, grid = model.visual.dense(images)
        assert dense.shape[1] == grid[0] * grid[1]
        assert torch.allclose(model.image_proj(dense).mean(1), pooled, atol=1e-5)


def test_token_phrase_embedding_is_the_attention_weighted_word_mean():
    from medgrain.models import create_model, get_tokenizer

    torch.manual_seed(0)
    model, tokenizer = create_model("tiny"), get_tokenizer("tiny")
    model.eval()
    tokens = tokenizer(["small left pleural effusion", "cardiomegaly"])
    with torch.no_grad():
        got = model.phrase_embeddings(tokens, "token")
        out = model.text_tokens(tokens)
    for i in range(2):
        total = torch.zeros(out["words"].shape[-1], dtype=torch.float64)
        weight_sum = 0.0
        for w in range(out["words"].shape[1]):
            if out["word_mask"][i, w]:
                total += float(out["attention"][i, w]) * out["words"][i, w].double()
                weight_sum += float(out["attention"][i, w])
        assert weight_sum > 0
        assert torch.allclose(got[i].double(), total / total.norm(), atol=1e-5)


def test_evaluate_grounding_command_for_tiny_clip_and_mgca(synthetic, tmp_path, capsys):
    import json

    from medgrain.cli import main

    clip = _encoder(tmp_path, "tiny", token_heads=False).checkpoint
    mgca = _encoder(tmp_path, "tiny-mgca").checkpoint
    for name, checkpoint in (("clip", clip), ("mgca", mgca)):
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", "grounding", "--checkpoint", checkpoint, "--data", str(synthetic.path),
                     "--split", "train", "--bootstrap", "100", "--out", str(out)]) == 0
        record = json.loads(out.read_text())
        macro = record["metrics"]["macro"]
        assert record["task"] == "grounding" and set(macro) == {"cnr", "cnr_ci", "miou", "miou_ci"}
        assert record["metrics"]["level"] == ("global" if name == "clip" else "token")
        example = record["metrics"]["examples"][0]
        assert np.asarray(example["map"]).ndim == 2 and example["phrase"]
        printed = capsys.readouterr().out
        assert "phrase grounding" in printed and "CNR" in printed and "[" in printed
