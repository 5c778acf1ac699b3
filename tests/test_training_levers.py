"""Training levers: DDP's unused-parameter search decided from the objective, activation
checkpointing with unchanged gradients, torch.compile in place, gradient caching in the trainer."""

from __future__ import annotations

import json

import pytest
import torch

from medgrain.losses.objective import OBJECTIVES
from medgrain.models import create_model
from medgrain.models.factory import create_model_and_tokenizer
from medgrain.training.config import ConfigError, TrainSection, load_config
from medgrain.training.loop import prepare_model


def _objective(name: str, embed_dim: int = 64):
    from medgrain.training.config import ObjectiveConfig

    cfg = ObjectiveConfig(name=name)
    return OBJECTIVES.get(name).from_config(cfg, ["finding", "description"], True, embed_dim)


@pytest.mark.parametrize("name", ["clip", "mgll"])
def test_find_unused_parameters_is_off_for_clip_and_mgll(name):
    model = create_model("tiny")
    notes, find_unused = prepare_model(model, _objective(name), TrainSection())
    assert not find_unused and notes == []
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("image_token_proj.", "text_token_proj.")) for n in frozen)
    # ... and absent texts in the data make DDP search again (a micro-batch may skip the text tower)
    assert prepare_model(create_model("tiny"), _objective(name), TrainSection(), texts_complete=False)[1]


def _batch(tokenizer, n=4):
    texts = ["no finding", "small left pleural effusion", "mild cardiomegaly", "right lower lobe opacity"][:n]
    tokens = tokenizer(texts)
    return {"ids": [str(i) for i in range(n)], "images": torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
            "texts": {"finding": tokens, "description": tokens}, "report": tokens,
            "text_ids": {"finding": torch.arange(n), "description": torch.arange(n)}}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_parameter_left_trainable_gets_a_gradient(name):
    """What lets DDP run without find_unused_parameters: the declared unused parameters are exactly the
    ones the objective's step leaves without a gradient."""
    torch.manual_seed(0)
    model, tokenizer = create_model_and_tokenizer("tiny-mgca" if name.startswith("mgca") else "tiny")
    objective = _objective(name, model.embed_dim)
    objective.set_epoch(5)  # past MGCA's frozen-prototype epochs
    _, find_unused = prepare_model(model, objective, TrainSection())
    assert not find_unused
    objective(model, _batch(tokenizer))["loss"].backward()
    for module in (model, objective):
        missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == [], name


@pytest.mark.parametrize("preset", ["tiny-vit", "tiny"])
def test_grad_checkpointing_leaves_the_gradients_unchanged(preset):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, tokenizer = create_model_and_tokenizer(
            preset, text={"config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}})
        model = model.double()
        prepare_model(model, _objective("mgll"), TrainSection(grad_checkpointing=checkpointing))
        batch = _batch(tokenizer)
        batch["images"] = batch["images"].double()
        _objective("mgll")(model, batch)["loss"].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert model.visual.trunk.grad_checkpointing  # timm's own switch
    text = model.text.transformer
    assert getattr(text, "is_activation_checkpointing", None) or text.is_gradient_checkpointing
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-7, atol=1e-12, msg=n)


def test_compile_wraps_the_towers_in_place():
    model = create_model("tiny")
    names = sorted(model.state_dict())
    prepare_model(model, _objective("clip"), TrainSection(compile=True))
    assert model.visual._compiled_call_impl is not None and model.text._compiled_call_impl is not None
    assert sorted(model.state_dict()) == names  # checkpoints keep their names


def test_chunk_errors_name_the_setting():
    with pytest.raises(ValueError, match="contrastive_chunks=9 is more than train.batch_size=8"):
        TrainSection(batch_size=8, contrastive_chunks=9)
    for name in ("mgca", "mgca+mgll"):
        with pytest.raises(ConfigError, match="train.contrastive_chunks=2 with objective .* BatchNorm"):
            prepare_model(create_model("tiny-mgca"), _objective(name, 128), TrainSection(contrastive_chunks=2))
    notes, _ = prepare_model(create_model("tiny"), _objective("clip"), TrainSection(contrastive_chunks=2))
    assert len(notes) == 1 and "BatchNorm layers (visual.trunk" in notes[0]


@pytest.mark.slow
def test_the_trainer_with_chunks_gives_the_unchunked_losses(tmp_path):
    """One process, tiny-vit with dropout off: 4 chunks of a batch of 16 train as the whole batch."""
    from medgrain.data.synthetic import generate
    from medgrain.training.loop import train

    manifest = generate("cxr", tmp_path / "data", n=48, seed=2, size=48, workers=1)

    def run(out, chunks):
        cfg = load_config("tiny-mgll", [
            f"data.manifest={manifest}", "model.preset=tiny-vit", "model.overrides.image.image_size=48",
            "model.overrides.text.config.hidden_dropout_prob=0.0",
            "model.overrides.text.config.attention_probs_dropout_prob=0.0", "train.epochs=1",
            "train.stop_after_steps=2", "train.log_every=1", "train.progress=false", "train.tensorboard=false",
            "train.eval_at_start=false", "train.batch_size=16", f"train.contrastive_chunks={chunks}",
            f"train.output_dir={tmp_path / out}"])
        train(cfg)
        rows = [json.loads(x) for x in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["grad_norm"]) for r in rows if r["split"] == "train"]

    whole, chunked = run("whole", 1), run("chunked", 4)
    assert [s for s, *_ in whole] == [s for s, *_ in chunked] == [1, 2]
    for (_, loss_a, norm_a), (_, loss_b, norm_b) in zip(whole, chunked):
        assert loss_b == pytest.approx(loss_a, rel=1e-5) and norm_b == pytest.approx(norm_a, rel=1e-4)
