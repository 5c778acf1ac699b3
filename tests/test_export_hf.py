"""Export to Hugging Face: a process that cannot import medgrain loads the folder with transformers, following
the model card's own code, and gets medgrain's embeddings; medgrain loads the folder back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from openclip_fixtures import TEXTS, TINY_NATIVE
from test_export_open_clip import TINY_TEXT, _checkpoint

from medgrain.export import export
from medgrain.export.openclip import NotExpressibleError
from medgrain.models import load_pretrained

OPEN_CLIP_VIT = {"source": "open_clip", "name": "ViT-B-16", "image_size": 32,
                 "kwargs": {"embed_dim": 32, "vision_cfg": TINY_NATIVE["vision_cfg"]}}
NATIVE_TEXT = {"source": "open_clip", "name_or_path": "clip-bpe", "pretrained": False, "max_length": 77,
               "config": {"model_type": "open_clip_text", "text_cfg": TINY_NATIVE["text_cfg"], "embed_dim": 32,
                          "quick_gelu": False}}
COMBINATIONS = {
    "clip-vit+bert-cls+linear": {"image": OPEN_CLIP_VIT, "text": {**TINY_TEXT, "pooling": "cls"}, "embed_dim": 32,
                                 "image_head": "identity"},
    "timm-vit+bert-mean+gelu-mlp": {"image": {"source": "timm", "name": "vit_tiny_patch16_224", "image_size": 32,
                                              "kwargs": {"patch_size": 8}},
                                    "text": {**TINY_TEXT, "pooling": "mean"}, "embed_dim": 32, "text_head": "gelu-mlp"},
    "clip-vit+clip-text (native CLIP)": {"image": OPEN_CLIP_VIT, "embed_dim": 32, "image_head": "identity",
                                         "text_head": "identity", "text": NATIVE_TEXT},
    "timm-cnn+bert-cls+linear": {"image": {"source": "timm", "name": "resnet18", "image_size": 64},
                                 "text": {**TINY_TEXT, "pooling": "cls"}, "embed_dim": 32},
}

# Runs in a fresh interpreter where importing medgrain fails: the model card's code blocks, as written.
CONSUMER = r'''
import importlib.abc, json, re, sys
class NoMedgrain(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "medgrain":
            raise ImportError("medgrain must not be needed")
sys.meta_path.insert(0, NoMedgrain())
import torch
from safetensors.torch import load_file, save_file
for folder, inputs, out in json.loads(sys.argv[1]):
    pixels = load_file(inputs)["pixels"]
    texts = json.loads(open(inputs + ".json").read())
    card = open(folder + "/README.md").read()
    blocks = [b.replace("DIR", folder) for b in re.findall(r"```python\n(.*?)```", card, flags=re.S)]
    scope = {"pixels": pixels, "texts": texts}
    with torch.no_grad():
        for block in blocks:
            exec(block, scope)
    save_file({"image": scope["image_embedding"].contiguous(), "text": scope["text_embedding"].contiguous()}, out)
assert not any(m.split(".")[0] == "medgrain" for m in sys.modules)
'''


def _consume(jobs):
    """Run the consumer once for every (folder, pixels, work folder): one interpreter start for all."""
    from safetensors.torch import load_file, save_file

    args = []
    for folder, pixels, work in jobs:
        inputs = work / "inputs.safetensors"
        save_file({"pixels": pixels}, str(inputs))
        (work / "inputs.safetensors.json").write_text(json.dumps(TEXTS))
        args.append((str(folder), str(inputs), str(work / "got.safetensors")))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", CONSUMER, json.dumps(args)],
                          env={**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, capture_output=True,
                          text=True, cwd=jobs[0][2], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [load_file(out) for _, _, out in args]


def test_hf_folders_load_in_transformers_alone(tmp_path):
    jobs, expected = [], []
    for name, config in COMBINATIONS.items():
        work = tmp_path / name
        work.mkdir()
        checkpoint = _checkpoint(work, config)
        out = export(checkpoint, "hf", work / "hf")
        ours = load_pretrained(checkpoint)
        size = ours.config.image.image_size
        pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            image, text = ours.model.encode_image(pixels), ours.model.encode_text(ours.tokenizer(TEXTS))
        processor = json.loads((out / "image" / "preprocessor_config.json").read_text())
        assert str(size) in json.dumps(processor) and str(ours.config.preprocess.mean[0]) in json.dumps(processor)
        # medgrain loads the folder back, the same model
        back = load_pretrained(out)
        with torch.no_grad():
            torch.testing.assert_close(back.model.encode_image(pixels), image, rtol=0, atol=1e-5)
            torch.testing.assert_close(back.model.encode_text(back.tokenizer(TEXTS)), text, rtol=0, atol=1e-5)
        jobs.append((out, pixels, work))
        expected.append((name, image, text))
    norm = torch.nn.functional.normalize
    for got, (name, image, text) in zip(_consume(jobs), expected):
        torch.testing.assert_close(norm(got["image"], dim=-1), image, rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(norm(got["text"], dim=-1), text, rtol=0, atol=1e-5, msg=name)


def test_model_card_metadata_from_the_run(tmp_path):
    checkpoint = _checkpoint(tmp_path, COMBINATIONS["timm-cnn+bert-cls+linear"])
    (checkpoint / "run.yaml").write_text(yaml.safe_dump({"objective": {"name": "mgll"},
                                                         "data": {"manifest": "data/mimic/manifest.jsonl"}}))
    (tmp_path / "zero-shot.json").write_text(json.dumps({
        "task": "zero-shot", "data": "data/mimic/manifest.jsonl",
        "metrics": {"macro": {"auroc": {"value": 0.75, "ci": [0.7, 0.8]}, "accuracy": 0.5}}}))
    (checkpoint / "train_log.json").write_text("[1, 2]")  # not a result: ignored
    out = export(checkpoint, "hf", tmp_path / "hf")
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "other" and "objective-mgll" in meta["tags"]
    results = meta["model-index"][0]["results"]
    assert results[0]["task"]["type"] == "zero-shot"
    assert {m["type"]: m["value"] for m in results[0]["metrics"]} == {"auroc": 0.75, "accuracy": 0.5}
    assert "data/mimic/manifest.jsonl" in card and "AutoModelForImageClassification" in card


@pytest.mark.parametrize("override, message", [
    ({"head": "mlp", "head_hidden": 16}, "image head 'mlp'"),
    ({"text": {**TINY_TEXT, "pooling": "flair"}}, "text pooling 'flair'"),
    ({"image": OPEN_CLIP_VIT}, "a 'linear' image head over open_clip"),
])
def test_what_hf_cannot_express_is_refused(override, message, tmp_path):
    config = {"image": {"source": "timm", "name": "resnet18", "image_size": 64}, "text": TINY_TEXT, "embed_dim": 32,
              **override}
    checkpoint = _checkpoint(tmp_path, config)
    with pytest.raises(NotExpressibleError, match=message):
        export(checkpoint, "hf", tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("hf", ".hf"))) == []  # no staging left
