"""Pretraining on two manifests with different granularities (data.sources) and with texts removed on
purpose (data.drop_texts): both sources are drawn, the loss falls, resume stays exact (issue 12)."""

import json

import pytest
from _resume import assert_resumed_losses_match

from medgrain.data.manifest import read_manifest, write_manifest
from medgrain.training.config import load_config
from medgrain.training.loop import train


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    """A synthetic CXR manifest, and a second one whose records have no description text (a corpus
    with labels but no clinical explanations), under another folder name."""
    from medgrain.data.synthetic import generate

    root = tmp_path_factory.mktemp("sources")
    cxr = generate("cxr", root / "cxr", n=96, seed=3, size=48, workers=1)
    other = generate("cxr", root / "labels", n=64, seed=4, size=48, workers=1)
    records = [r.model_copy(update={"texts": {g: t for g, t in r.texts.items() if g != "description"}})
               for r in read_manifest(other).records]
    write_manifest(records, other)
    return cxr, other


def _cfg(sources, out, drop_texts=None, **train_options):
    cfg = {
        "data": {"sources": [{"manifest": str(sources[0]), "weight": 1.0},
                             {"manifest": str(sources[1]), "weight": 1.0, "name": "labels-only"}]},
        "model": {"preset": "tiny", "overrides": {"image": {"image_size": 48}}},
        "objective": {"name": "mgll"},
        "optim": {"lr": 1e-3, "weight_decay": 0.01, "warmup_steps": 2},
        "train": {"output_dir": str(out), "epochs": 3, "batch_size": 16, "log_every": 1, "progress": False,
                  "tensorboard": False, "eval_at_start": True},
    }
    cfg["train"].update(train_options)
    if drop_texts is not None:
        cfg["data"]["drop_texts"] = drop_texts
    return load_config(cfg)


def _rows(out, split):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def test_two_sources_are_both_drawn_and_the_loss_falls(two_sources, tmp_path):
    result = train(_cfg(two_sources, tmp_path / "run"))
    valid = [r["loss"] for r in result.history if r["split"] == "valid"]
    assert valid[-1] < valid[0], valid
    data = _rows(tmp_path / "run", "data")
    assert [r["epoch"] for r in data] == [0, 1, 2]
    first = data[0]
    train_sizes = {"cxr": len(read_manifest(two_sources[0]).split("train")),
                   "labels-only": len(read_manifest(two_sources[1]).split("train"))}
    drawn = first["records_per_source"]
    assert set(drawn) == {"cxr", "labels-only"} and all(n > 0 for n in drawn.values())
    # equal weights: equal halves of the epoch (up to the dropped last partial batch)
    assert abs(drawn["cxr"] - drawn["labels-only"]) <= 16 and sum(drawn.values()) <= sum(train_sizes.values())
    present = first["texts_present"]
    assert present["abnormality"] == sum(drawn.values()) and present["description"] == drawn["cxr"]
    run_yaml = (tmp_path / "run" / "run.yaml").read_text()
    assert "labels-only" in run_yaml


def test_resume_is_exact_with_sources_and_drop_texts(two_sources, tmp_path):
    drop = {"rate": 0.3, "seed": 7, "granularities": ["category", "description"]}
    full = train(_cfg(two_sources, tmp_path / "full", epochs=2, eval_at_start=False, drop_texts=drop))
    train(_cfg(two_sources, tmp_path / "cut", epochs=2, eval_at_start=False, drop_texts=drop, stop_after_steps=5))
    resumed = train(_cfg(two_sources, tmp_path / "cut", epochs=2, eval_at_start=False, drop_texts=drop), resume=True)
    assert_resumed_losses_match(full, resumed, first_step=6)
    dropped = json.loads((tmp_path / "full" / "dropped_texts.json").read_text())
    assert dropped == json.loads((tmp_path / "cut" / "dropped_texts.json").read_text())
    cxr = dropped["sources"]["cxr"]
    assert len(cxr["dropped"]["description"]) == round(0.3 * cxr["records"])
    assert dropped["sources"]["labels-only"]["dropped"]["description"] == []  # it has none to drop
