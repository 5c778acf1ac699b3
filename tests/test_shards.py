"""WebDataset shards: the same records, bytes, batches and losses as the files they came from."""

import json
import subprocess
import sys

import pytest
import torch
from _resume import assert_resumed_losses_match, train_losses

from medgrain.data.dataset import ImageTextDataset
from medgrain.data.imageio import ImageReadError
from medgrain.data.manifest import ManifestError, read_manifest
from medgrain.data.shards import read_shards, write_shards
from medgrain.training.config import ConfigError, load_config
from medgrain.training.loop import train


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from medgrain.data.synthetic import generate

    return generate("cxr", tmp_path_factory.mktemp("synth"), n=60, seed=3, size=48, workers=1)


@pytest.fixture(scope="module")
def shards(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "s"
    write_shards(synth, out, shard_size=16)
    return out


def test_shards_hold_every_record_and_file_byte_for_byte(synth, shards):
    files, sharded = read_manifest(synth), read_shards(shards)
    assert len(sharded.reader.shards) == -(-len(files) // 16)
    assert [r.id for r in sharded.records] == [r.id for r in files.records]
    for a, b in zip(files.records, sharded.records):
        assert (a.texts, a.report, a.labels, a.split, a.patient_id) == (b.texts, b.report, b.labels, b.split, b.patient_id)
        assert files.resolve(a.image).read_bytes() == sharded.reader.read(b.image)
        assert [f.box for f in a.findings] == [f.box for f in b.findings]


def test_dataset_items_from_shards_equal_those_from_files(synth, shards):
    opts = dict(return_masks=True, return_boxes=True)
    a = ImageTextDataset(synth, "train", **opts)
    b = ImageTextDataset(read_shards(shards), "train", **opts)
    assert len(a) == len(b) and len(a) > 0
    assert any(x.any() for i in range(len(a)) for x in a[i]["masks"])  # the fixture has masks to compare
    for i in range(len(a)):
        x, y = a[i], b[i]
        for key in ("image", "labels", "masks", "boxes", "box_labels"):
            assert torch.equal(x[key], y[key]), (i, key)
        assert (x["id"], x["texts"], x["report"]) == (y["id"], y["texts"], y["report"])


def test_plain_webdataset_streams_the_shards(synth, shards):
    # open_clip's loader reads shards this way; a subprocess keeps webdataset's workers out of pytest
    code = (
        "import json, sys, webdataset as wds, pathlib\n"
        "urls = sorted(str(p) for p in pathlib.Path(sys.argv[1]).glob('shard-*.tar'))\n"
        "ids = [json.loads(s['json'])['id'] for s in wds.WebDataset(urls, shardshuffle=False)]\n"
        "print(json.dumps(ids))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(shards)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [r.id for r in read_manifest(synth).records]


def test_resize_reencodes_and_moves_boxes_and_masks(synth, tmp_path):
    write_shards(synth, tmp_path / "r", shard_size=100, resize=32)
    files, sharded = read_manifest(synth), read_shards(tmp_path / "r")
    ds = ImageTextDataset(sharded, None, return_masks=True, return_boxes=True)
    item = ds[0]
    assert item["image"].shape[-2:] == (32, 32) and item["masks"].shape[-2:] == (32, 32)
    for a, b in zip(files.records, sharded.records):
        for fa, fb in zip(a.findings, b.findings):
            if fa.box:
                assert fb.box == pytest.approx([c * 32 / 48 for c in fa.box])


def _cfg(out, train_options=None, **data):
    return load_config({
        "data": data,
        "model": {"preset": "tiny", "overrides": {"image": {"image_size": 48}}},
        "objective": {"name": "mgll"},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"output_dir": str(out), "epochs": 2, "batch_size": 16, "log_every": 1, "progress": False,
                  "tensorboard": False, "eval_at_start": False, **(train_options or {})},
    })


@pytest.mark.slow
def test_pretraining_on_shards_equals_files_and_resumes_exactly(synth, shards, tmp_path):
    on_files = train(_cfg(tmp_path / "files", manifest=str(synth)))
    on_shards = train(_cfg(tmp_path / "shards", shards=str(shards)))
    assert train_losses(on_files.history) == train_losses(on_shards.history)

    train(_cfg(tmp_path / "cut", {"stop_after_steps": 3}, shards=str(shards)))
    resumed = train(_cfg(tmp_path / "cut", shards=str(shards)), resume=True)
    assert_resumed_losses_match(on_shards, resumed, first_step=4, rel=1e-6, abs=1e-7)


def test_config_takes_exactly_one_source(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of data.manifest, data.shards and data.sources"):
        _cfg(tmp_path, manifest="a.jsonl", shards="dir")
    with pytest.raises(ConfigError, match="exactly one of data.manifest, data.shards and data.sources"):
        _cfg(tmp_path)
    cfg = load_config(_cfg(tmp_path, manifest="a.jsonl").model_dump(mode="json"),
                      ["data.manifest=null", f"data.shards={tmp_path}"])
    assert cfg.data.shards == tmp_path and cfg.data.manifest is None


def test_bad_shard_folders_are_named(synth, shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder written by `medgrain shard`"):
        read_shards(tmp_path)
    (tmp_path / "index.json").write_text('{"format": "other"}')
    with pytest.raises(ManifestError, match="index.json: field 'format'"):
        read_shards(tmp_path)
    with pytest.raises(FileExistsError, match="already holds shards"):
        write_shards(synth, shards)


def test_truncated_shard_is_an_image_error_naming_shard_and_member(synth, tmp_path):
    write_shards(synth, tmp_path / "t", shard_size=100)
    sharded = read_shards(tmp_path / "t")
    tar = sharded.reader.shards[0]
    tar.write_bytes(tar.read_bytes()[:2048])
    with pytest.raises(ImageReadError, match=r"shard-000000\.tar#.*truncated"):
        sharded.read_image(sharded.records[-1].image)
