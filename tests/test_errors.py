"""The one map from error types to user messages (medgrain.errors) and the CLI's use of it."""

import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from medgrain import cli
from medgrain.data.imageio import ImageReadError
from medgrain.data.manifest import ManifestError
from medgrain.errors import CheckpointError, loading, user_error, user_message


def test_project_errors_map_to_their_own_message():
    e = ManifestError("m.jsonl", 3, "texts.disease", "text is empty")
    assert user_message(e) == "m.jsonl:3: field 'texts.disease': text is empty"
    assert user_message(ImageReadError("a.png", "file is empty")) == "cannot read image a.png: file is empty"
    assert user_message(FileNotFoundError(2, "No such file or directory", "x.yaml")) == "No such file or directory: x.yaml"


def test_bugs_are_not_user_errors():
    assert user_message(KeyError("images")) is None
    assert user_message(TypeError("unsupported operand")) is None
    assert user_message(AttributeError("x")) is None


def test_new_error_types_join_the_map():
    class LabelError(Exception):
        pass

    assert user_message(LabelError("y")) is None
    user_error(LabelError, format=lambda e: f"labels: {e}")
    assert user_message(LabelError("y")) == "labels: y"


def test_dataloader_worker_trace_keeps_only_the_error():
    # what torch's ExceptionWrapper raises when the worker's error type cannot be rebuilt from a message
    msg = ("Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
           '  File "x.py", line 1, in f\n    read()\n'
           "medgrain.data.imageio.ImageReadError: cannot read image a.png: image file is truncated\n")
    assert user_message(RuntimeError(msg)) == "cannot read image a.png: image file is truncated"


class _NotATensor:
    pass


def test_loading_names_the_file_and_the_reason(tmp_path):
    good = tmp_path / "state.pt"
    torch.save({"step": torch.tensor(3)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:40])
    tampered = tmp_path / "tampered.pt"
    with tampered.open("wb") as f:
        pickle.dump({"step": _NotATensor()}, f, protocol=2)
    cases = [(truncated, "truncated"), (tampered, "something other than tensors")]
    for path, reason in cases:
        with pytest.raises(CheckpointError, match=reason) as info, loading(path):
            torch.load(path, weights_only=True)
        assert str(path) in str(info.value) and info.value.path == str(path)

    weights = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2)}, str(weights))
    weights.write_bytes(weights.read_bytes()[:10])
    with pytest.raises(CheckpointError, match=r"w\.safetensors: not a valid safetensors file"), loading(weights):
        load_file(str(weights))


def test_cli_status_1_and_debug_shows_the_trace(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"id": "a", "image": null, "split": "nope"}\n')
    assert cli.main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1: field 'split'" in err and "Traceback" not in err
    with pytest.raises(ManifestError):
        cli.main(["--debug", "info", str(bad)])
    with pytest.raises(ManifestError):
        cli.main(["info", str(bad), "--debug"])
    monkeypatch.setenv("MEDGRAIN_DEBUG", "1")
    with pytest.raises(ManifestError):
        cli.main(["info", str(bad)])


def test_an_unreadable_feature_cache_is_computed_again(tmp_path):
    import json

    import numpy as np
    from safetensors.numpy import save_file as save_numpy

    from medgrain.evaluation.features import _read_cache

    path = tmp_path / "f.safetensors"
    assert _read_cache(path) is None
    save_numpy({"features": np.ones((2, 3), np.float32)}, str(path), metadata={"ids": json.dumps(["a", "b"])})
    ids, features = _read_cache(path)
    assert ids == ["a", "b"] and features.shape == (2, 3)
    path.write_bytes(path.read_bytes()[:30])  # a write cut short
    assert _read_cache(path) is None


def test_an_encode_part_cut_short_names_its_file(tmp_path):
    from medgrain.export.encode import _read

    path = tmp_path / "part-0.safetensors"
    save_file({"image": torch.zeros(2, 3)}, str(path), metadata={"ids": '["a", "b"]'})
    assert _read(path)[0] == ["a", "b"]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"part-0\.safetensors: not a valid safetensors file"):
        _read(path)
