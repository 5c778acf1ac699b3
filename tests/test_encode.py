"""medgrain encode: the embeddings medgrain computes, with ids and present masks; resumable."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from medgrain.cli import main
from medgrain.data.dataset import Collator, ImageTextDataset
from medgrain.export import encode as encode_module
from medgrain.export.encode import encode
from medgrain.models import create_model, get_tokenizer, load_pretrained, save_pretrained


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from medgrain.data.synthetic import generate

    root = tmp_path_factory.mktemp("encode")
    manifest = generate("cxr", root / "cxr", n=10, seed=2, size=64, workers=1)
    torch.manual_seed(0)
    model, tokenizer = create_model("tiny"), get_tokenizer("tiny")
    return manifest, save_pretrained(model, tokenizer, root / "tiny")


def _read(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["ids"]), {k: f.get_tensor(k) for k in f.keys()}


def test_encode_writes_medgrains_embeddings(setup, tmp_path):
    manifest, checkpoint = setup
    out = tmp_path / "emb.safetensors"
    assert main(["encode", str(checkpoint), "--data", str(manifest), "--out", str(out), "--batch-size", "4"]) == 0
    ids, tensors = _read(out)
    loaded = load_pretrained(checkpoint)
    dataset = ImageTextDataset(manifest, None, loaded.transform)
    assert ids == [r.id for r in dataset.records]
    batch = Collator(loaded.tokenizer, dataset.granularities)([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        torch.testing.assert_close(tensors["image"], loaded.model.encode_image(batch["images"]))
        for g in dataset.granularities:
            present = batch["present"][g]
            assert torch.equal(tensors[f"present.{g}"], present)
            torch.testing.assert_close(tensors[f"text.{g}"][present], loaded.model.encode_text(batch["texts"][g]))
            assert (tensors[f"text.{g}"][~present] == 0).all()
    assert "text.report" in tensors
    assert not (tmp_path / "emb.safetensors.parts").exists()


def test_encode_resumes_where_it_stopped(setup, tmp_path, monkeypatch):
    manifest, checkpoint = setup
    whole = encode(checkpoint, manifest, tmp_path / "whole.safetensors", batch_size=3)
    out = tmp_path / "emb.safetensors"
    real, calls = encode_module.embed_batch, []

    def stop_after_two(*args):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(encode_module, "embed_batch", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        encode(checkpoint, manifest, out, batch_size=3)
    assert len(list((tmp_path / "emb.safetensors.parts").iterdir())) == 2 and not out.exists()
    calls.clear()
    monkeypatch.setattr(encode_module, "embed_batch", lambda *a: calls.append(1) or real(*a))
    encode(checkpoint, manifest, out, batch_size=3)
    assert len(calls) == 2  # 10 records, 6 written: two batches of 3 and 1
    got, expected = _read(out), _read(whole)
    assert got[0] == expected[0]
    for key, value in expected[1].items():
        torch.testing.assert_close(got[1][key], value)
    encode(checkpoint, manifest, out, batch_size=3)  # everything written: nothing to encode, same file
    assert len(calls) == 2 and _read(out)[0] == expected[0]


def test_bad_output_names(setup, tmp_path):
    manifest, checkpoint = setup
    with pytest.raises(ValueError, match="must end in .safetensors or .parquet"):
        encode(checkpoint, manifest, tmp_path / "emb.npy")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="Parquet needs pyarrow"):
            encode(checkpoint, manifest, tmp_path / "emb.parquet")
    else:
        out = encode(checkpoint, manifest, tmp_path / "emb.parquet")
        ids, tensors = encode_module._read(out)
        reference = _read(encode(checkpoint, manifest, tmp_path / "emb.safetensors"))
        assert ids == reference[0]
        torch.testing.assert_close(tensors["image"], reference[1]["image"])
