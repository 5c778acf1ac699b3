"""medgrain.load_pretrained and every evaluation command take an open_clip model or an hf export too."""

from __future__ import annotations

import json

import pytest
import torch
from openclip_fixtures import TEXTS, TINY_NATIVE, assert_encoders_equal, write_open_clip_dir

from medgrain.cli import main
from medgrain.models import create_model, get_tokenizer, load_pretrained
from medgrain.models.factory import create_model_and_tokenizer


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return write_open_clip_dir(tmp_path_factory.mktemp("native"), TINY_NATIVE)


def test_load_pretrained_takes_an_open_clip_reference(native):
    loaded = load_pretrained(f"open_clip:local-dir:{native}")
    model, tokenizer = create_model(f"open_clip:local-dir:{native}"), get_tokenizer(f"open_clip:local-dir:{native}")
    assert not loaded.model.training
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_text(loaded.tokenizer(TEXTS)),
                                   model.eval().encode_text(tokenizer(TEXTS)))
    assert loaded.transform is not None and loaded.config.text.source == "open_clip"


@pytest.mark.parametrize("kind", ["open_clip", "hf export"])
def test_evaluate_zero_shot_on_a_foreign_model(kind, native, tmp_path):
    from medgrain.data.synthetic import generate
    from medgrain.export import export
    from medgrain.models import save_pretrained

    manifest = generate("cxr", tmp_path / "cxr", n=24, seed=1, size=32, workers=1)
    if kind == "open_clip":
        checkpoint = f"open_clip:local-dir:{native}"
    else:
        torch.manual_seed(0)
        model, tokenizer = create_model_and_tokenizer("tiny")
        checkpoint = str(export(save_pretrained(model, tokenizer, tmp_path / "tiny"), "hf", tmp_path / "hf"))
    out = tmp_path / "zero-shot.json"
    code = main(["evaluate", "zero-shot", "--checkpoint", checkpoint, "--data", str(manifest),
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["task"] == "zero-shot" and result["checkpoint"] == checkpoint
    assert result["metrics"]


def test_builtin_name_with_a_local_weights_file(tmp_path):
    """open_clip:NAME:/path/to/weights is open_clip's create_model(NAME, pretrained=FILE)."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(1)
    clip = open_clip.create_model("ViT-S-32").eval()
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    torch.manual_seed(2)  # another random initialisation: only the file can make them equal
    model, tokenizer = create_model_and_tokenizer(f"open_clip:ViT-S-32:{weights}")
    assert_encoders_equal(model, tokenizer, clip, "ViT-S-32")


def test_not_a_checkpoint_names_what_is_accepted(tmp_path, capsys):
    from medgrain.evaluation import load_encoder

    with pytest.raises(FileNotFoundError, match="open_clip:local-dir:DIR"):
        load_encoder(tmp_path)


@pytest.mark.parametrize("which", ["native", "custom"])
def test_pretrain_from_an_open_clip_preset_with_token_objectives(which, native, tmp_path_factory, tmp_path):
    """model.preset=open_clip:<ref>: MGCA+MGLL (global, token and prototype levels) trains on both imported
    shapes, and the checkpoint reloads."""
    from openclip_fixtures import TINY_TIMM_VISION, biomedclip_cfg, write_bert_dir

    from medgrain.data.synthetic import generate
    from medgrain.training.config import load_config
    from medgrain.training.loop import train

    if which == "native":
        source, size = native, 32
    else:
        bert = write_bert_dir(tmp_path / "bert")
        source = write_open_clip_dir(tmp_path / "custom", biomedclip_cfg(TINY_TIMM_VISION, 48), bert_dir=bert)
        size = 224
    manifest = generate("cxr", tmp_path_factory.mktemp("synth"), n=16, seed=5, size=32, workers=1)  # resized to size
    cfg = load_config({
        "data": {"manifest": str(manifest)},
        "model": {"preset": f"open_clip:local-dir:{source}"},
        "objective": {"name": "mgca+mgll", "mgca": {"num_prototypes": 8}},
        "optim": {"lr": 1e-4, "warmup_steps": 1},
        "train": {"output_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 8, "log_every": 1,
                  "progress": False, "tensorboard": False},
    })
    result = train(cfg)
    assert all(v == v for v in result.valid_losses)
    loaded = load_pretrained(result.last_checkpoint)
    assert loaded.config.token_heads and loaded.config.image.image_size == size
