"""Several sources in one run: quotas, a deterministic, resumable, sharded mixture of batches, the union
of granularities, per-epoch counts, and drop_texts (issue 12.6-12.7)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medgrain.data.manifest import Manifest, parse_record
from medgrain.data.sources import SourcesDataset, drop_texts, union_granularities
from medgrain.training.config import DataConfig
from medgrain.training.sampling import MixtureBatchSampler, source_quotas


def _manifest(name, n, texts):
    records = [parse_record({"id": f"{name}{i}", "image": None, "split": "train", "texts": texts(i)}, name, i + 1)
               for i in range(n)]
    return Manifest(Path(f"/data/{name}/manifest.jsonl"), records)


def test_quotas_follow_weights_and_sum_to_the_total():
    assert source_quotas(10, [1, 1]) == [5, 5]
    assert source_quotas(10, [3, 1]) == [8, 2]  # 7.5 and 2.5: the tie goes to the first
    assert source_quotas(7, [1, 1, 1]) == [3, 2, 2]
    with pytest.raises(ValueError, match="> 0"):
        source_quotas(10, [1, 0])


def test_mixture_draws_in_proportion_with_replacement_where_needed():
    sizes, weights = [12, 4], [1.0, 3.0]  # the small source is asked for 12 samples: each record 3 times
    sampler = MixtureBatchSampler(sizes, weights, batch_size=4, seed=3)
    indices = torch.tensor([i for batch in sampler for i in batch])
    assert len(indices) == 16 and sampler.quotas == [4, 12]
    small = indices[indices >= 12]
    assert len(small) == 12 and torch.bincount(small - 12).tolist() == [3, 3, 3, 3]
    big = indices[indices < 12]
    assert len(big) == 4 and len(set(big.tolist())) == 4  # no repeat within a source that holds enough
    assert torch.equal(sampler.epoch_indices(), indices)


def test_mixture_is_deterministic_resumable_and_sharded():
    def batches(rank=0, world=1, epoch=0, start=0, seed=5):
        s = MixtureBatchSampler([10, 7, 3], [1, 2, 1], batch_size=2, seed=seed, rank=rank, world_size=world)
        s.set_epoch(epoch, start)
        return list(s)

    one = batches(world=1, epoch=1)
    assert one == batches(world=1, epoch=1) and one != batches(world=1, epoch=2) and one != batches(seed=6, epoch=1)
    assert batches(epoch=1, start=3) == one[3:]  # resume skips exactly the consumed batches
    ranks = [batches(rank=r, world=2, epoch=1) for r in range(2)]
    merged = [a + b for a, b in zip(*ranks)]  # global batch k is rank 0's slice then rank 1's
    flat = [i for b in one for i in b]
    assert [i for b in merged for i in b] == flat[: len(merged) * 4]


def test_union_of_granularities_and_a_chosen_order():
    a = _manifest("a", 2, lambda i: {"status": "x", "disease": "y"})
    b = _manifest("b", 2, lambda i: {"status": "x", "description": "z"})
    # union_of_orders: a name new in a later source goes right after the one preceding it there
    assert union_granularities([a, b]) == ["status", "description", "disease"]
    assert union_granularities([a, b], ["description", "status", "disease"]) == ["description", "status", "disease"]
    with pytest.raises(ValueError, match=r"\['grade'\] are in no source"):
        union_granularities([a, b], ["grade"])
    with pytest.raises(ValueError, match="'status' twice"):
        union_granularities([a, b], ["status", "status"])


def test_sources_dataset_counts_records_and_texts():
    class Items:
        def __init__(self, m):
            self.records = m.records

        def __len__(self):
            return len(self.records)

        def __getitem__(self, i):
            return self.records[i].id

    a = _manifest("a", 3, lambda i: {"status": "x", "disease": "y"} if i else {"status": "x"})
    b = _manifest("b", 2, lambda i: {"description": "z"})
    ds = SourcesDataset(["a", "b"], [Items(a), Items(b)], ["status", "disease", "description"])
    assert ds.sizes == [3, 2] and ds[3] == "b0"
    counts = ds.counts(torch.tensor([0, 1, 1, 3, 4]))
    assert counts["records_per_source"] == {"a": 3, "b": 2}
    assert counts["texts_present"] == {"status": 3, "disease": 2, "description": 2, "report": 0}


def test_drop_texts_removes_the_rate_deterministically():
    m = _manifest("a", 20, lambda i: {"status": "x", "disease": f"d{i % 3}"} if i < 10 else {"status": "x"})
    records, dropped = drop_texts(m.records, 0.3, seed=1, granularities=["status", "disease"])
    assert len(dropped["status"]) == 6 and len(dropped["disease"]) == 3
    assert all("status" not in r.texts for r in records if r.id in dropped["status"])
    assert sum("status" in r.texts for r in records) == 14 and sum("disease" in r.texts for r in records) == 7
    assert [r.line for r in records] == [r.line for r in m.records]
    assert drop_texts(m.records, 0.3, 1, ["status", "disease"])[1] == dropped  # same seed, same records
    assert drop_texts(m.records, 0.3, 2, ["status"])[1]["status"] != dropped["status"]
    assert drop_texts(m.records, 0.3, 1, ["disease"])[1]["disease"] == dropped["disease"]  # per granularity
    assert all("status" in r.texts for r in m.records)  # the manifest's records are untouched
    assert drop_texts(m.records, 0.0, 1, ["status"])[1] == {"status": []}


def test_data_config_takes_exactly_one_source():
    two = [{"manifest": "a/manifest.jsonl", "weight": 2}, {"manifest": "b/manifest.jsonl", "name": "bee"}]
    cfg = DataConfig(sources=two, drop_texts={"rate": 0.3, "granularities": ["disease"]})
    assert cfg.source_names() == ["a", "bee"] and cfg.sources[0].weight == 2 and cfg.drop_texts.seed == 0
    for bad, message in (
        ({"manifest": "m.jsonl", "sources": two}, "exactly one"),
        ({}, "exactly one"),
        ({"sources": []}, "is empty"),
        ({"sources": [{"manifest": "a/m.jsonl"}, {"manifest": "a/n.jsonl"}]}, "'a' is used twice"),
        ({"sources": [{"manifest": "a/m.jsonl", "weight": 0}]}, "greater than 0"),
        ({"manifest": "m.jsonl", "drop_texts": {"rate": 1.0, "granularities": ["x"]}}, "less than 1"),
        ({"manifest": "m.jsonl", "drop_texts": {"rate": 0.3, "granularities": []}}, "at least 1"),
    ):
        with pytest.raises(ValueError, match=message):
            DataConfig(**bad)


def test_sources_replace_the_manifest_from_the_command_line():
    from medgrain.training.config import load_config

    cfg = load_config({"data": {"manifest": "m.jsonl"}, "objective": {"name": "mgll"}}, [
        "data.manifest=null", "data.sources=[{manifest: a/m.jsonl, weight: 3}, {manifest: b/m.jsonl, name: bee}]",
        "data.drop_texts={rate: 0.6, seed: 2, granularities: [category]}",
    ])
    assert cfg.data.manifest is None and cfg.data.source_names() == ["a", "bee"] and cfg.data.sources[0].weight == 3
    assert cfg.data.drop_texts.rate == 0.6 and cfg.data.drop_texts.granularities == ["category"]


def test_run_data_errors_name_the_source_and_granularity(tmp_path):
    from medgrain.data.sources import Source
    from medgrain.losses import ClipLoss
    from medgrain.training.config import load_config
    from medgrain.training.data import apply_drop_texts, open_sources

    cfg = load_config({"objective": {"name": "mgll"}, "data": {
        "sources": [{"manifest": str(tmp_path / "nowhere" / "m.jsonl"), "name": "gone"}],
        "drop_texts": {"rate": 0.3, "granularities": ["grade"]}}})
    with pytest.raises(FileNotFoundError, match="manifest of source 'gone' not found"):
        open_sources(cfg, open_single=None)
    a = _manifest("a", 3, lambda i: {"status": "x"})
    with pytest.raises(ValueError, match=r"drop_texts.granularities: \['grade'\] are not granularities"):
        apply_drop_texts(cfg, [Source("a", a)], ["status"], tmp_path, is_main=True)
    features = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    with pytest.raises(TypeError, match="present must be a 1-D bool tensor"):
        ClipLoss()(features, features, 10.0, present=torch.ones(3))
