"""Starting from an open_clip model: ``create_model("open_clip:<ref>")`` equals open_clip's own encoders."""

from __future__ import annotations

import json

import pytest
import torch
from openclip_fixtures import (
    BIOMEDCLIP_VISION,
    TEXTS,
    TINY_NATIVE,
    TINY_TIMM_VISION,
    assert_encoders_equal,
    biomedclip_cfg,
    write_bert_dir,
    write_open_clip_dir,
)

from medgrain.models import (
    PretrainedUnavailableError,
    create_model,
    get_tokenizer,
    load_pretrained,
    save_pretrained,
)
from medgrain.models.factory import create_model_and_tokenizer


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return write_bert_dir(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def tiny_native(tmp_path_factory):
    return write_open_clip_dir(tmp_path_factory.mktemp("native"), TINY_NATIVE)


@pytest.fixture(scope="module")
def tiny_custom(tmp_path_factory, bert_dir):
    return write_open_clip_dir(tmp_path_factory.mktemp("custom"), biomedclip_cfg(TINY_TIMM_VISION, 48), bert_dir=bert_dir)


def _open_clip(ref):
    import open_clip

    return open_clip.create_model(ref).eval(), open_clip.get_tokenizer(ref)


def assert_same_embeddings(ref, model, tokenizer, size, n_images=2):
    """medgrain's encoders equal open_clip's on the same pixels and the same texts (float32, 1e-5)."""
    clip, clip_tokenizer = _open_clip(ref)
    model.eval()
    images = torch.randn(n_images, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected_image = clip.encode_image(images, normalize=True)
        expected_text = clip.encode_text(clip_tokenizer(TEXTS), normalize=True)
        got_image = model.encode_image(images)
        got_text = model.encode_text(tokenizer(TEXTS))
        # medgrain's tokenizer gives open_clip's ids up to the end of each text (padding may differ)
        ours, theirs = tokenizer(TEXTS), clip_tokenizer(TEXTS)
        mask = ours["attention_mask"].bool()
        assert torch.equal(ours["input_ids"][mask], theirs[:, : mask.shape[1]][mask])
    torch.testing.assert_close(got_image, expected_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_text, expected_text, rtol=0, atol=1e-5)
    assert model.logit_scale.item() == pytest.approx(clip.logit_scale.item())


@pytest.mark.parametrize("which", ["tiny_native", "tiny_custom"])
def test_import_equals_open_clip(which, request):
    directory = request.getfixturevalue(which)
    ref = f"local-dir:{directory}"
    model = create_model(f"open_clip:{ref}")
    tokenizer, preprocess = get_tokenizer(f"open_clip:{ref}"), model.config.preprocess_config()
    assert preprocess.mean == (0.5, 0.4, 0.3) and preprocess.std == (0.2, 0.25, 0.3)
    assert preprocess.image_size == (32 if which == "tiny_native" else 224)
    assert_same_embeddings(ref, model, tokenizer, preprocess.image_size)


def test_custom_text_maps_onto_medgrains_towers(tiny_custom):
    model = create_model(f"open_clip:local-dir:{tiny_custom}")
    config = model.config
    assert (config.image.source, config.image.name) == ("timm", "vit_tiny_patch16_224")
    assert (config.text.pooling, config.text_head, config.image_head) == ("cls", "gelu-mlp", "linear")


@pytest.mark.parametrize("which", ["tiny_native", "tiny_custom"])
def test_token_outputs_on_imported_towers(which, request):
    """MGCA's inputs: patch tokens with a grid and [CLS] attention, word pieces merged by word ids."""
    directory = request.getfixturevalue(which)
    model = create_model(f"open_clip:local-dir:{directory}")
    tokenizer, preprocess = get_tokenizer(f"open_clip:local-dir:{directory}"), model.config.preprocess_config()
    model.eval()
    text = tokenizer(TEXTS)
    size = preprocess.image_size
    with torch.no_grad():
        image = model.image_tokens(torch.randn(2, 3, size, size))
        words = model.text_tokens(text)
    side = size // (8 if which == "tiny_native" else 16)
    assert image["tokens"].shape == (2, side * side, model.embed_dim) and image["grid"] == (side, side)
    torch.testing.assert_close(image["attention"].sum(-1), torch.ones(2))
    n_words = int(text["word_ids"].max()) + 1
    assert words["words"].shape[:2] == (3, n_words)
    real = words["word_mask"]
    # special tokens ([CLS]/start, [SEP]/end) take part of the attention: words get at most all of it
    assert (words["attention"][real] > 0).all() and (words["attention"].sum(-1) <= 1 + 1e-6).all()
    assert (words["attention"][~real] == 0).all()
    assert torch.equal(real.sum(-1), text["word_ids"].max(-1).values + 1)
    torch.testing.assert_close(words["words"][real].norm(dim=-1), torch.ones(int(real.sum())))


def test_native_text_attention_is_the_end_of_text_row(tiny_native):
    """The pooled (end-of-text) token's last-block attention, over the tokens it can see, from a direct
    float64 recomputation of the block's attention."""
    model = create_model(f"open_clip:local-dir:{tiny_native}")
    tokenizer = get_tokenizer(f"open_clip:local-dir:{tiny_native}")
    model.eval()
    text = tokenizer(TEXTS)
    ids = text["input_ids"]
    tower = model.text.transformer
    block = tower.transformer.resblocks[-1]
    inputs = {}
    handle = block.ln_1.register_forward_hook(lambda m, a, out: inputs.setdefault("x", out))
    with torch.no_grad():
        got = model.text(ids, text["attention_mask"], tokens=True).cls_attention
    handle.remove()
    x = inputs["x"].double()
    attn = block.attn
    dim, heads = attn.embed_dim, attn.num_heads
    w, b = attn.in_proj_weight.detach().double(), attn.in_proj_bias.detach().double()
    for row in range(len(TEXTS)):
        eot = int(ids[row].argmax())
        expected = torch.zeros(ids.shape[1], dtype=torch.float64)
        for h in range(heads):
            sl = slice(h * dim // heads, (h + 1) * dim // heads)
            q = x[row, eot] @ w[:dim][sl].T + b[:dim][sl]
            scores = [float(q @ (x[row, j] @ w[dim:2 * dim][sl].T + b[dim:2 * dim][sl])) / (dim // heads) ** 0.5
                      for j in range(eot + 1)]
            p = torch.tensor(scores).softmax(0)
            expected[: eot + 1] += p / heads
        torch.testing.assert_close(got[row].double(), expected, rtol=0, atol=1e-5)


def test_imported_model_saves_and_loads(tiny_native, tiny_custom, tmp_path):
    for i, directory in enumerate((tiny_native, tiny_custom)):
        model = create_model(f"open_clip:local-dir:{directory}")
        tokenizer, preprocess = get_tokenizer(f"open_clip:local-dir:{directory}"), model.config.preprocess_config()
        save_pretrained(model, tokenizer, tmp_path / str(i))
        loaded = load_pretrained(tmp_path / str(i))
        images = torch.randn(2, 3, preprocess.image_size, preprocess.image_size)
        with torch.no_grad():
            torch.testing.assert_close(loaded.model.encode_image(images), model.eval().encode_image(images))
            torch.testing.assert_close(loaded.model.encode_text(loaded.tokenizer(TEXTS)), model.encode_text(tokenizer(TEXTS)))


def test_overrides_that_keep_the_towers_apply(tiny_native):
    model = create_model(f"open_clip:local-dir:{tiny_native}", head="mlp", head_hidden=16)
    assert model.config.head == "mlp" and model.config.text_head == "identity"
    with pytest.raises(ValueError, match="change the architecture"):
        create_model(f"open_clip:local-dir:{tiny_native}", image={"image_size": 64})


def test_builtin_name_random_weights_and_published_vit_b16():
    """A built-in name without a tag: open_clip's architecture with its random initialisation; ViT-B/16 as
    published (MGLL's CLIP family), equal to open_clip's encoders."""
    import open_clip

    torch.manual_seed(0)
    model, tokenizer = create_model_and_tokenizer("open_clip:ViT-B-16")  # open_clip's model built once
    preprocess = model.config.preprocess_config()
    assert preprocess.image_size == 224 and model.embed_dim == 512
    assert model.config.image.kwargs["vision_cfg"]["width"] == 768
    # same weights into open_clip's own model: compare through its encoders
    clip = open_clip.create_model("ViT-B-16").eval()
    state = {f"visual.{k[len('visual.trunk.'):]}": v for k, v in model.state_dict().items() if k.startswith("visual.trunk.")}
    state.update({k[len("text.transformer."):]: v for k, v in model.state_dict().items() if k.startswith("text.transformer.")})
    state["logit_scale"] = model.logit_scale.detach()
    clip.load_state_dict(state)
    assert_encoders_equal(model, tokenizer, clip, "ViT-B-16")


def test_biomedclip_shape(tmp_path, bert_dir):
    """BiomedCLIP's layout at its published image size: timm ViT-B/16, 224 px, BERT [CLS], MLP projection."""
    directory = write_open_clip_dir(tmp_path / "biomedclip", biomedclip_cfg(BIOMEDCLIP_VISION), bert_dir=bert_dir)
    model = create_model(f"open_clip:local-dir:{directory}")
    tokenizer, preprocess = get_tokenizer(f"open_clip:local-dir:{directory}"), model.config.preprocess_config()
    assert preprocess.image_size == 224 and model.config.image.name == "vit_base_patch16_224"
    assert_same_embeddings(f"local-dir:{directory}", model, tokenizer, 224, n_images=1)


def test_unreachable_hub_names_the_local_directory_to_pass():
    with pytest.raises(PretrainedUnavailableError, match="open_clip:local-dir:DIR"):
        create_model("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    with pytest.raises(PretrainedUnavailableError, match="open_clip:local-dir:DIR"):
        create_model("open_clip:ViT-B-16:openai")


def test_unsupported_models_are_refused_by_name(tmp_path, bert_dir):
    with pytest.raises(ValueError, match="hf_pooler_type='max_pooler'"):
        cfg = biomedclip_cfg(TINY_TIMM_VISION, 48, text={"hf_pooler_type": "max_pooler"})
        create_model(f"open_clip:local-dir:{write_open_clip_dir(tmp_path / 'a', cfg, bert_dir=bert_dir)}")
    with pytest.raises(ValueError, match="pools with 'avg'; medgrain's timm tower for it pools \\[CLS\\]"):
        cfg = biomedclip_cfg({**TINY_TIMM_VISION, "timm_pool": "avg"}, 48)
        create_model(f"open_clip:local-dir:{write_open_clip_dir(tmp_path / 'b', cfg, bert_dir=bert_dir)}")
    with pytest.raises(ValueError, match="trunk's own classifier"):
        cfg = biomedclip_cfg({**TINY_TIMM_VISION, "timm_proj": ""}, 48)
        create_model(f"open_clip:local-dir:{write_open_clip_dir(tmp_path / 'd', cfg, bert_dir=bert_dir)}")
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        create_model(f"open_clip:local-dir:{tmp_path}")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        create_model("open_clip:ViT-Nope")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "open_clip_config.json").write_text(json.dumps({"preprocess_cfg": {}}))
    with pytest.raises(ValueError, match="no model_cfg"):
        create_model(f"open_clip:local-dir:{tmp_path / 'c'}")


def test_unreachable_text_tower_config_names_the_field_to_point_at_a_folder(tmp_path, bert_dir):
    """A local-dir whose text_cfg.hf_model_name is a hub id (BiomedCLIP's as published), offline."""
    directory = write_open_clip_dir(tmp_path / "m", biomedclip_cfg(TINY_TIMM_VISION, 48), bert_dir=bert_dir)
    config = json.loads((directory / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_model_name"] = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedUnavailableError, match="set text_cfg.hf_model_name in open_clip_config.json"):
        create_model(f"open_clip:local-dir:{directory}")
