"""Export to open_clip: open_clip loads the folder and gives medgrain's embeddings; importing it back too."""

from __future__ import annotations

import pytest
import torch
from openclip_fixtures import TEXTS, TINY_NATIVE, write_open_clip_dir

from medgrain.cli import main
from medgrain.export import export
from medgrain.export.openclip import NotExpressibleError
from medgrain.models import create_model, get_tokenizer, load_pretrained, save_pretrained

TINY_TEXT = {"name_or_path": "tiny-bert", "pretrained": False, "max_length": 32}
TIMM_VIT = {"source": "timm", "name": "vit_tiny_patch16_224", "image_size": 224}
OPEN_CLIP_VIT = {"source": "open_clip", "name": "ViT-B-16", "image_size": 32,
                 "kwargs": {"embed_dim": 32, "vision_cfg": TINY_NATIVE["vision_cfg"]}}
COMBINATIONS = {
    "timm-vit+bert-cls+linear": {"image": TIMM_VIT, "text": {**TINY_TEXT, "pooling": "cls"}, "embed_dim": 32},
    "timm-cnn+bert-mean+gelu-mlp": {"image": {"source": "timm", "name": "resnet18", "image_size": 64},
                                    "text": {**TINY_TEXT, "pooling": "mean"}, "embed_dim": 32, "text_head": "gelu-mlp"},
    "open_clip-vit+bert-mean+identity": {"image": OPEN_CLIP_VIT, "text": {**TINY_TEXT, "pooling": "mean"},
                                         "embed_dim": 32, "image_head": "identity"},
    # a timm image tower with open_clip's own text transformer: open_clip's CLIP class takes both
    "timm-cnn+clip-text": {"image": {"source": "timm", "name": "resnet18", "image_size": 64}, "embed_dim": 32,
                           "text": {"source": "open_clip", "name_or_path": "clip-bpe", "pretrained": False,
                                    "max_length": 77, "config": {"model_type": "open_clip_text", "embed_dim": 32,
                                                                 "text_cfg": TINY_NATIVE["text_cfg"]}},
                           "text_head": "identity"},
    # identity heads: timm_proj none (the trunk's pooled feature is the embedding), no text projection
    "timm-cnn-identity+bert-identity": {"image": {"source": "timm", "name": "resnet18", "image_size": 64},
                                        "text": {**TINY_TEXT, "pooling": "cls", "config": {"hidden_size": 512}},
                                        "embed_dim": 512, "head": "identity"},
}


def _checkpoint(tmp_path, config, seed=0):
    torch.manual_seed(seed)
    model = create_model(config)
    tokenizer = get_tokenizer(config)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    return save_pretrained(model, tokenizer, tmp_path / "checkpoint")


def _embeddings(model, tokenizer, images):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokenizer(TEXTS))


def assert_open_clip_equals_medgrain(checkpoint, out):
    import open_clip

    ours = load_pretrained(checkpoint)
    clip, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    clip.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    size = ours.config.image.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    image, text = _embeddings(ours.model, ours.tokenizer, images)
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_image(images, normalize=True), image, rtol=0, atol=1e-5)
        torch.testing.assert_close(clip.encode_text(tokenizer(TEXTS), normalize=True), text, rtol=0, atol=1e-5)
    assert clip.logit_scale.item() == pytest.approx(ours.model.logit_scale.item())
    assert tuple(preprocess.transforms[-1].mean) == tuple(ours.config.preprocess.mean)
    # round trip: importing the export gives the same model again
    back, back_tokenizer = create_model(f"open_clip:local-dir:{out}"), get_tokenizer(f"open_clip:local-dir:{out}")
    got = _embeddings(back.eval(), back_tokenizer, images)
    torch.testing.assert_close(got[0], image, rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1], text, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_export_loads_in_open_clip_with_the_same_embeddings(name, tmp_path):
    checkpoint = _checkpoint(tmp_path, COMBINATIONS[name])
    out = export(checkpoint, "open_clip", tmp_path / "open_clip")
    assert_open_clip_equals_medgrain(checkpoint, out)


def test_native_clip_round_trip_through_the_cli(tmp_path):
    """An imported native CLIP (open_clip's own text transformer), saved, exported by the command line."""
    source = write_open_clip_dir(tmp_path / "source", TINY_NATIVE)
    model, tokenizer = create_model(f"open_clip:local-dir:{source}"), get_tokenizer(f"open_clip:local-dir:{source}")
    checkpoint = save_pretrained(model, tokenizer, tmp_path / "checkpoint")
    assert main(["export", str(checkpoint), "--format", "open_clip", "--out", str(tmp_path / "out")]) == 0
    assert_open_clip_equals_medgrain(checkpoint, tmp_path / "out")


@pytest.mark.parametrize("override, message", [
    ({"text": {**TINY_TEXT, "pooling": "flair"}}, "text pooling 'flair'"),
    ({"head": "mlp", "head_hidden": 16}, "image head 'mlp'"),
    ({"image": {**OPEN_CLIP_VIT}}, "a 'linear' image head over open_clip's projected"),
    ({"image": {"source": "timm", "name": "vit_tiny_patch16_224", "image_size": 64}}, "at 64 px"),
    ({"image": {"source": "timm", "name": "vit_tiny_patch16_224", "image_size": 64, "kwargs": {"patch_size": 8}}},
     "kwargs"),
])
def test_what_open_clip_cannot_express_is_refused_by_name(override, message, tmp_path):
    config = {"image": {"source": "timm", "name": "resnet18", "image_size": 64}, "text": TINY_TEXT,
              "embed_dim": 32, **override}
    checkpoint = _checkpoint(tmp_path, config)
    with pytest.raises(NotExpressibleError, match=message):
        export(checkpoint, "open_clip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_errors(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, {"image": {"source": "timm", "name": "resnet18", "image_size": 64},
                                        "text": {**TINY_TEXT, "pooling": "flair"}, "embed_dim": 32})
    assert main(["export", str(checkpoint), "--format", "open_clip", "--out", str(tmp_path / "o")]) == 1
    assert "flair" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "o")]) == 1
    assert "unknown export format 'onnx'" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["export", str(checkpoint), "--format", "open_clip", "--out", str(tmp_path / "full")]) == 1
    assert "not an empty folder" in capsys.readouterr().err


def test_medgrains_presets(tmp_path):
    """tiny (ResNet-18, mean-pooled BERT, linear heads) exports; tiny-mgca's BatchNorm MLP heads are refused."""
    tiny = _checkpoint(tmp_path / "tiny", "tiny")
    assert_open_clip_equals_medgrain(tiny, export(tiny, "open_clip", tmp_path / "tiny-open_clip"))
    mgca = _checkpoint(tmp_path / "mgca", "tiny-mgca")
    for fmt in ("open_clip", "hf"):
        with pytest.raises(NotExpressibleError, match="image head 'mlp'"):
            export(mgca, fmt, tmp_path / f"mgca-{fmt}")
