"""Models: towers, heads, the dual encoder, presets and the checkpoint directory (tiny models only)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import timm
import torch
from pydantic import ValidationError

import medgrain
from medgrain.models import (
    DualEncoder,
    MLPHead,
    ModelConfig,
    PretrainedUnavailableError,
    TokenHead,
    create_image_tower,
    create_model,
    create_text_tower,
    create_tokenizer,
    get_model_config,
    get_tokenizer,
    list_models,
    load_pretrained,
    save_pretrained,
)
from medgrain.models import text as text_module

TINY_VIT_KWARGS = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"layers": 1, "width": 32, "heads": 2, "context_length": 8, "vocab_size": 64},
}
TEXTS = ["no acute cardiopulmonary process", "small left pneumothorax", "cardiomegaly"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def tiny():
    model = create_model("tiny-vit")
    tokenizer, preprocess = get_tokenizer(model.config), model.config.preprocess_config()
    return model.eval(), tokenizer, preprocess


def images(n=2, size=64, channels=3):
    return torch.randn(n, channels, size, size)


def reference_timm_attention(tower, x):
    """[CLS]->patch attention from timm's own non-fused path, read at attn_drop."""
    attn = tower.trunk.blocks[-1].attn
    attn.fused_attn = False
    probs = []
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(o))
    try:
        tower(x)
    finally:
        handle.remove()
        attn.fused_attn = True
    row = probs[0].mean(dim=1)[:, 0, tower.trunk.num_prefix_tokens :]
    return row / row.sum(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------------
# Image towers


@pytest.mark.parametrize("extra", [{}, {"qk_norm": True, "reg_tokens": 2, "qkv_bias": False}])
def test_timm_vit_tower_shapes_and_cls_attention(extra):
    tower = create_image_tower("timm", "vit_tiny_patch16_224", image_size=48, **TINY_VIT_KWARGS, **extra).eval()
    x = images(3, 48)
    with torch.no_grad():
        out = tower(x, tokens=True)
        reference = reference_timm_attention(tower, x)
        pooled_only = tower(x)
    assert tower.width == tower.token_width == 64
    assert out.pooled.shape == (3, 64) and out.tokens.shape == (3, 36, 64)
    assert out.grid == (6, 6) and out.cls_attention.shape == (3, 36)
    assert pooled_only.tokens is None and torch.allclose(pooled_only.pooled, out.pooled)
    assert torch.allclose(out.cls_attention.sum(-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out.cls_attention, reference, atol=1e-6)
    # tokens come after the final norm: the same as timm's forward_features
    feats = tower.trunk.forward_features(x)
    assert torch.allclose(out.tokens, feats[:, tower.trunk.num_prefix_tokens :], atol=1e-6)


def test_timm_resnet_tower():
    tower = create_image_tower("timm", "resnet18", image_size=64).eval()
    with torch.no_grad():
        out = tower(images(2), tokens=True)
    assert (tower.token_width, tower.width) == (256, 512)
    assert out.pooled.shape == (2, 512) and out.tokens.shape == (2, 16, 256) and out.grid == (4, 4)
    assert torch.allclose(out.cls_attention, torch.full((2, 16), 1 / 16))


def test_open_clip_tower_shapes_and_cls_attention():
    tower = create_image_tower("open_clip", "ViT-B-16", image_size=32, **TINY_OPEN_CLIP).eval()
    attn = tower.trunk.transformer.resblocks[-1].attn
    seen = []
    handle = attn.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = images(2, 32)
    with torch.no_grad():
        out = tower(x, tokens=True)
        q = seen[0]
        _, weights = attn(q, q, q, need_weights=True, average_attn_weights=True)  # torch's own probabilities
    handle.remove()
    reference = weights[:, 0, 1:] / weights[:, 0, 1:].sum(-1, keepdim=True)
    assert (tower.width, tower.token_width) == (32, 64)
    assert out.pooled.shape == (2, 32) and out.tokens.shape == (2, 16, 64) and out.grid == (4, 4)
    assert torch.allclose(out.cls_attention, reference, atol=1e-6)
    assert torch.allclose(out.cls_attention.sum(-1), torch.ones(2), atol=1e-5)


def test_timm_local_weights(tmp_path):
    from safetensors.torch import save_file

    source = create_image_tower("timm", "vit_tiny_patch16_224", image_size=32, **TINY_VIT_KWARGS)
    state = {k: v.contiguous() for k, v in source.trunk.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "vit.pth")
    loaded = create_image_tower(
        "timm", "vit_tiny_patch16_224", pretrained=str(tmp_path / "vit.pth"), image_size=32, **TINY_VIT_KWARGS
    )
    assert torch.equal(loaded.trunk.pos_embed, source.trunk.pos_embed)

    full = timm.create_model("resnet18")
    save_file(full.state_dict(), tmp_path / "resnet.safetensors")
    cnn = create_image_tower("timm", "resnet18", pretrained=str(tmp_path / "resnet.safetensors"))
    assert torch.equal(cnn.trunk.layer3[0].conv1.weight, full.layer3[0].conv1.weight)

    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        create_image_tower("timm", "resnet18", pretrained=str(tmp_path / "missing.safetensors"))


def test_open_clip_local_weights(tmp_path):
    import open_clip

    clip = open_clip.create_model("ViT-B-16", force_image_size=32, **TINY_OPEN_CLIP)
    torch.save(clip.state_dict(), tmp_path / "clip.bin")
    tower = create_image_tower("open_clip", "ViT-B-16", pretrained=str(tmp_path / "clip.bin"), image_size=32,
                               **TINY_OPEN_CLIP)
    assert torch.equal(tower.trunk.conv1.weight, clip.visual.conv1.weight)


# ---------------------------------------------------------------------------------------------------
# Text tower


def test_tiny_bert_tower_outputs():
    tower = create_text_tower("tiny-bert", pretrained=False).eval()
    tokenizer = create_tokenizer("tiny-bert")
    batch = tokenizer(TEXTS)
    with torch.no_grad():
        out = tower(batch["input_ids"], batch["attention_mask"], tokens=True)
        raw = tower.transformer(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_attentions=True)
    n, length = batch["input_ids"].shape
    assert out.pooled.shape == (n, 64) and out.hidden.shape == (n, length, 64)
    assert out.cls_attention.shape == (n, length)
    assert torch.allclose(out.pooled, out.hidden[:, 0])
    # eager attention's own probabilities (eval mode: no dropout) are the reference
    assert torch.allclose(out.cls_attention, raw.attentions[-1][:, :, 0].mean(1), atol=1e-6)
    padding = batch["attention_mask"] == 0
    assert padding.any() and torch.all(out.cls_attention[padding] == 0)
    assert torch.allclose(out.cls_attention.sum(-1), torch.ones(n), atol=1e-5)
    assert tower.transformer.pooler is None


def test_text_cls_attention_is_taken_before_dropout():
    tower = create_text_tower("tiny-bert", pretrained=False, config={"attention_probs_dropout_prob": 0.5})
    batch = create_tokenizer("tiny-bert")(TEXTS)
    train = tower.train()(batch["input_ids"], batch["attention_mask"], tokens=True)
    assert torch.allclose(train.cls_attention.sum(-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert not train.cls_attention.requires_grad and train.hidden.requires_grad
    torch.manual_seed(1)  # same hidden-state dropout for both passes: only attention dropout would differ
    a = tower(batch["input_ids"], batch["attention_mask"], tokens=True)
    torch.manual_seed(1)
    tower.transformer.encoder.layer[-1].attention.self.dropout.p = 0.0
    b = tower(batch["input_ids"], batch["attention_mask"], tokens=True)
    # the last layer's input (and so the recomputed attention) does not depend on its own attention dropout
    assert torch.allclose(a.cls_attention, b.cls_attention)


@pytest.mark.parametrize("pooling", ["flair", "flair-masked"])
def test_flair_pooling_matches_a_loop_over_samples_and_tokens(pooling):
    """MGLL's BERT pooling: layers 1, 2 and the last averaged, then over positions (real ones only when masked)."""
    tower = create_text_tower("tiny-bert", pretrained=False, pooling=pooling).eval()
    batch = create_tokenizer("tiny-bert")(TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        pooled = tower(ids, mask).pooled
        states = tower.transformer(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(states) == 3  # embeddings + 2 layers: layers 1, 2 and the last are 1, 2, 2
    for n in range(len(TEXTS)):
        positions = range(ids.shape[1]) if pooling == "flair" else [t for t in range(ids.shape[1]) if mask[n, t]]
        total = torch.zeros(tower.width, dtype=torch.float64)
        for t in positions:
            total += (states[1][n, t].double() + states[2][n, t].double() + states[-1][n, t].double()) / 3
        torch.testing.assert_close(pooled[n].double(), total / len(positions), rtol=1e-5, atol=1e-6)
    if pooling == "flair":  # the original code's embedding depends on the batch's padding; the masked one does not
        with torch.no_grad():
            short = create_tokenizer("tiny-bert")(TEXTS[2:])
            alone = tower(short["input_ids"], short["attention_mask"]).pooled
        assert not torch.allclose(alone, pooled[2:], atol=1e-4)


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="pooling must be one of"):
        create_text_tower("tiny-bert", pretrained=False, pooling="max")


@pytest.mark.parametrize("pooling", ["mean", "flair-masked"])
def test_masked_pooling_ignores_padding(pooling):
    tower = create_text_tower("tiny-bert", pretrained=False, pooling=pooling).eval()
    tokenizer = create_tokenizer("tiny-bert")
    alone = tokenizer(TEXTS[2:])
    padded = tokenizer(TEXTS)
    with torch.no_grad():
        a = tower(alone["input_ids"], alone["attention_mask"]).pooled
        b = tower(padded["input_ids"], padded["attention_mask"]).pooled[2:]
    assert torch.allclose(a, b, atol=1e-5)


def test_text_tower_truncation_and_local_folder(tmp_path):
    folder = tmp_path / "minilm"
    shutil.copytree(text_module.minilm_path(), folder)
    tower = create_text_tower(str(folder), num_hidden_layers=2)
    assert len(tower.transformer.encoder.layer) == 2 and tower.width == 384
    with pytest.raises(FileNotFoundError, match="not-there"):
        create_text_tower(str(tmp_path / "a" / "not-there"))


# ---------------------------------------------------------------------------------------------------
# Heads


def test_token_head_batchnorm_uses_real_tokens_only():
    head = TokenHead(MLPHead(8, 4, hidden_features=16)).train()
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    garbage = x.clone()
    garbage[~mask] = 1e4 * torch.randn(int((~mask).sum()), 8)

    out = head(x, mask)
    stats = (head.head.bn1.running_mean.clone(), head.head.bn1.running_var.clone(), head.head.bn2.running_mean.clone())
    for bn in (head.head.bn1, head.head.bn2):
        bn.reset_running_stats()
    out_garbage = head(garbage, mask)
    assert torch.allclose(out, out_garbage)
    assert torch.allclose(stats[0], head.head.bn1.running_mean)
    assert torch.allclose(stats[1], head.head.bn1.running_var)
    assert torch.allclose(stats[2], head.head.bn2.running_mean)
    assert torch.all(out[~mask] == 0)
    # exactly the head applied to the real tokens as one batch
    for bn in (head.head.bn1, head.head.bn2):
        bn.reset_running_stats()
    assert torch.allclose(out[mask], head.head(x[mask]))


def test_mlp_head_layout():
    head = MLPHead(32, 8, hidden_features=16)
    assert [type(m).__name__ for m in head.children()] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert head.bn2.affine is False and head.bn1.affine is True


# ---------------------------------------------------------------------------------------------------
# Dual encoder


def test_dual_encoder_outputs(tiny):
    model, tokenizer, preprocess = tiny
    x, text = images(3), tokenizer(TEXTS)
    with torch.no_grad():
        img, txt, scale = model(x, text)
        it, tt = model.image_tokens(x), model.text_tokens(text)
        raw = model.encode_image(x, normalize=False)
    assert img.shape == txt.shape == (3, 64) and preprocess.image_size == 64
    assert torch.allclose(img.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))
    assert math.isclose(float(scale), 1 / 0.07, rel_tol=1e-5)
    assert torch.allclose(it["global"], img, atol=1e-6) and torch.allclose(tt["global"], txt, atol=1e-6)
    assert it["tokens"].shape == (3, 64, 64) and it["attention"].shape == (3, 64) and it["grid"] == (8, 8)
    assert torch.allclose(it["tokens"].norm(dim=-1), torch.ones(3, 64), atol=1e-5)
    words, mask = tt["words"], tt["word_mask"]
    assert words.shape[:2] == mask.shape == tt["attention"].shape
    assert mask.sum(1).tolist() == [4, 3, 1]  # words per text ("cardiopulmonary" is several pieces)
    assert torch.allclose(words[mask].norm(dim=-1), torch.ones(int(mask.sum())), atol=1e-5)
    assert torch.all(words[~mask] == 0) and torch.all(tt["attention"][~mask] == 0)


def test_logit_scale_init_and_clamp(tiny):
    model = tiny[0]
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    saved = model.logit_scale.data.clone()
    try:
        model.logit_scale.data.fill_(10.0)
        assert math.isclose(model.logit_scale_value().item(), 100.0, rel_tol=1e-5)
        model.logit_scale.data.fill_(-3.0)
        assert model.logit_scale_value().item() == 1.0
    finally:
        model.logit_scale.data.copy_(saved)


def test_mgca_heads_and_resnet_preset():
    model = create_model("tiny-mgca")
    tokenizer = get_tokenizer(model.config)
    assert isinstance(model.image_proj, MLPHead) and model.embed_dim == 128
    model.train()
    tt = model.text_tokens(tokenizer(TEXTS))
    assert tt["words"].shape[-1] == 128 and torch.all(tt["words"][~tt["word_mask"]] == 0)

    model = create_model("tiny")
    preprocess = model.config.preprocess_config()
    it = model.eval().image_tokens(images(2, preprocess.image_size))
    assert it["tokens"].shape == (2, 16, 64) and torch.allclose(it["attention"], torch.full((2, 16), 1 / 16))


def test_word_attention_off_by_one_reproduces_mgca_code():
    """MGCA's code gives the piece at position j the [CLS] attention to position j + 1; a loop over pieces."""
    model = create_model("tiny")
    tokenizer = get_tokenizer(model.config)
    model.eval()
    text = tokenizer(["pneumothorax with cardiomegaly", "no acute disease", "effusion"])
    with torch.no_grad():
        pieces = model.text(text["input_ids"], text["attention_mask"], tokens=True).cls_attention
        fixed = model.text_tokens(text)
        buggy = model.text_tokens(text, attention_off_by_one=True)
    n, length = pieces.shape
    expected_fixed = torch.zeros_like(fixed["attention"])
    expected_buggy = torch.zeros_like(buggy["attention"])
    for i in range(n):
        for j in range(length):
            w = int(text["word_ids"][i, j])
            if w < 0:
                continue
            expected_fixed[i, w] += pieces[i, j]
            expected_buggy[i, w] += pieces[i, j + 1] if j + 1 < length else 0.0
    torch.testing.assert_close(fixed["attention"], expected_fixed)
    torch.testing.assert_close(buggy["attention"], expected_buggy)
    assert not torch.allclose(fixed["attention"], buggy["attention"])
    torch.testing.assert_close(fixed["words"], buggy["words"])  # only the weights move
    assert torch.equal(fixed["word_mask"], buggy["word_mask"])


def test_single_channel_images():
    model = create_model("tiny", preprocess={"mean": [0.5], "std": [0.25], "in_chans": 1})
    preprocess = model.config.preprocess_config()
    assert preprocess.in_chans == 1 and preprocess.mean == (0.5,)
    with torch.no_grad():
        assert model.eval().encode_image(images(2, 64, channels=1)).shape == (2, 64)


def test_token_outputs_need_token_heads():
    model = create_model("tiny-vit", token_heads=False)
    tokenizer = get_tokenizer(model.config)
    assert not hasattr(model, "image_token_proj")
    with pytest.raises(RuntimeError, match="token_heads"):
        model.text_tokens(tokenizer(TEXTS))


def test_factory_follows_open_clip_and_timm():
    """create_model returns the module (timm, open_clip); create_model_and_transforms returns
    (model, preprocess_train, preprocess_val) and get_tokenizer the preset's tokenizer (open_clip)."""
    import medgrain
    from medgrain.data.transforms import eval_transform

    model = medgrain.create_model("tiny", embed_dim=32)
    assert isinstance(model, DualEncoder) and model.embed_dim == 32
    model, preprocess_train, preprocess_val = medgrain.create_model_and_transforms("tiny", embed_dim=32)
    assert isinstance(model, DualEncoder) and model.embed_dim == 32
    image = torch.randint(0, 256, (3, 80, 96), dtype=torch.uint8)
    expected = eval_transform(model.config.preprocess_config())(image)
    assert torch.equal(preprocess_val(image), expected) and expected.shape == (3, 64, 64)
    assert preprocess_train(image).shape == (3, 64, 64)
    tokenizer = medgrain.get_tokenizer("tiny", text={"max_length": 8})
    assert tokenizer.max_length == 8
    assert tokenizer(TEXTS)["input_ids"].shape == (3, 8)
    with torch.no_grad():
        assert model.eval().encode_text(tokenizer(TEXTS)).shape == (3, 32)


# ---------------------------------------------------------------------------------------------------
# Presets and configs


def test_presets_resolve_without_network():
    names = list_models()
    for name in ("tiny-vit", "tiny", "tiny-mgca", "minilm-vit-small", "mgll-paper", "mgca-vit-paper",
                 "mgca-resnet50-paper"):
        assert name in names
        get_model_config(name)
    mgca = get_model_config("mgca-vit-paper")
    assert (mgca.text.num_hidden_layers, mgca.text.max_length, mgca.head, mgca.embed_dim) == (6, 112, "mlp", 128)
    assert get_model_config("mgll-paper").image.name == "ViT-L-14-quickgelu"


def test_bad_config_key_is_named():
    with pytest.raises(ValidationError, match="embed_dimm"):
        create_model("tiny-vit", embed_dimm=32)
    with pytest.raises(ValidationError, match="max_lenght"):
        create_model("tiny-vit", text={"max_lenght": 32})
    with pytest.raises(ValidationError, match="head"):
        ModelConfig.model_validate({"image": {"name": "resnet18"}, "head": "transformer"})


def test_hub_names_offline_give_a_clear_error():
    with pytest.raises(PretrainedUnavailableError, match="local folder"):
        create_text_tower("emilyalsentzer/Bio_ClinicalBERT")
    with pytest.raises(PretrainedUnavailableError, match="local file"):
        create_image_tower("timm", "resnet18", pretrained="default")
    with pytest.raises(PretrainedUnavailableError, match="local file"):
        create_model("mgll-paper")


def test_minilm_preset_loads_offline():
    model = create_model("minilm-vit-small")
    tokenizer, preprocess = get_tokenizer(model.config), model.config.preprocess_config()
    from safetensors.torch import load_file

    reference = load_file(f"{text_module.minilm_path()}/model.safetensors")
    key = next(k for k in reference if k.endswith("word_embeddings.weight"))
    assert torch.equal(model.text.transformer.embeddings.word_embeddings.weight, reference[key])
    assert preprocess.image_size == 224 and model.embed_dim == 256
    with torch.no_grad():
        assert model.eval().encode_text(tokenizer(TEXTS)).shape == (3, 256)


# ---------------------------------------------------------------------------------------------------
# Checkpoint directory


def _assert_same_outputs(a: DualEncoder, b: DualEncoder, tokenizer, size):
    x, text = images(2, size), tokenizer(TEXTS)
    with torch.no_grad():
        assert torch.equal(a.encode_image(x), b.encode_image(x))
        assert torch.equal(a.encode_text(text), b.encode_text(text))
        assert torch.equal(a.text_tokens(text)["words"], b.text_tokens(text)["words"])
        assert torch.equal(a.image_tokens(x)["attention"], b.image_tokens(x)["attention"])


def test_save_load_round_trip_without_original_sources(tiny, tmp_path, monkeypatch):
    model, tokenizer, preprocess = tiny
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "run.yaml").write_text("kept: true\n")
    save_pretrained(model, tokenizer, tmp_path / "ckpt", extra={"step": 7})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors", "run.yaml",
                                                                    "tokenizer"]
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["extra"] == {"step": 7} and meta["text_config"]["hidden_size"] == 64
    assert meta["preprocess"]["image_size"] == 64

    # MiniLM's folder (tiny-bert's vocabulary) is gone: everything must come from the directory
    monkeypatch.setattr(text_module, "minilm_path", lambda: str(tmp_path / "gone"))
    loaded = medgrain.load_pretrained(tmp_path / "ckpt")
    assert not loaded.model.training and loaded.config == model.config
    assert loaded.tokenizer(TEXTS)["input_ids"].tolist() == tokenizer(TEXTS)["input_ids"].tolist()
    assert loaded.transform is not None
    _assert_same_outputs(model, loaded.model, tokenizer, preprocess.image_size)

    save_pretrained(loaded.model, loaded.tokenizer, tmp_path / "ckpt")  # overwrite in place
    assert (tmp_path / "ckpt" / "run.yaml").read_text() == "kept: true\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_round_trip_after_text_folder_is_deleted(tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(text_module.minilm_path(), folder)
    model = create_model(
        "tiny", text={"name_or_path": str(folder), "pretrained": True, "num_hidden_layers": 1}
    )
    tokenizer, preprocess = get_tokenizer(model.config), model.config.preprocess_config()
    save_pretrained(model.eval(), tokenizer, tmp_path / "ckpt")
    shutil.rmtree(folder)
    loaded = load_pretrained(tmp_path / "ckpt")
    assert len(loaded.model.text.transformer.encoder.layer) == 1
    _assert_same_outputs(model, loaded.model, tokenizer, preprocess.image_size)


def test_open_clip_round_trip(tmp_path):
    model = create_model(
        {"image": {"source": "open_clip", "name": "ViT-B-16", "image_size": 32, "kwargs": TINY_OPEN_CLIP},
         "text": {"name_or_path": "tiny-bert", "pretrained": False}, "embed_dim": 16, "token_heads": True}
    )
    tokenizer = get_tokenizer(model.config)
    save_pretrained(model.eval(), tokenizer, tmp_path / "ckpt")
    _assert_same_outputs(model, load_pretrained(tmp_path / "ckpt").model, tokenizer, 32)


def test_identity_image_head_keeps_open_clips_projection(tmp_path):
    """mgll-paper's image embedding is CLIP's own projected [CLS]: no fresh head scrambles it."""
    config = {"image": {"source": "open_clip", "name": "ViT-B-16", "image_size": 32, "kwargs": TINY_OPEN_CLIP},
              "text": {"name_or_path": "tiny-bert", "pretrained": False}, "embed_dim": 32,
              "head": "linear", "image_head": "identity", "token_heads": True}
    model = create_model(config)
    tokenizer = get_tokenizer(model.config)
    model.eval()
    assert isinstance(model.image_proj, torch.nn.Identity) and isinstance(model.text_proj, torch.nn.Linear)
    x = images(2, 32)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.visual.trunk(x)[0], dim=-1)  # open_clip's projected [CLS]
        torch.testing.assert_close(model.encode_image(x), expected)
    save_pretrained(model, tokenizer, tmp_path / "ckpt")
    _assert_same_outputs(model, load_pretrained(tmp_path / "ckpt").model, tokenizer, 32)
    assert get_model_config("mgll-paper").image_head == "identity"
    with pytest.raises(ValueError, match=r"tower's width \(32\) to equal .* embed_dim \(16\)"):
        create_model({**config, "embed_dim": 16})


def test_load_names_mismatched_keys(tiny, tmp_path):
    model, tokenizer, _ = tiny
    save_pretrained(model, tokenizer, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    meta = json.loads(path.read_text())
    meta["model"]["token_heads"] = False
    path.write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="unexpected keys.*image_token_proj"):
        load_pretrained(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)


def test_import_medgrain_is_cheap():
    code = "import sys, medgrain; assert 'torch' not in sys.modules; assert 'load_pretrained' in dir(medgrain)"
    subprocess.run([sys.executable, "-c", code], check=True)
