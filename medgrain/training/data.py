"""What a pretraining run trains on: one manifest (or its shards) or several sources, with
``data.drop_texts`` applied to the training split. The loop asks for the sources, the datasets and
the batch sampler; everything about mixing sources and removing texts lives here and in
``medgrain.data.sources``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import ConcatDataset

from ..data.dataset import ImageTextDataset
from ..data.manifest import Manifest, read_manifest
from ..data.sources import Source, SourcesDataset, drop_texts, union_granularities
from .config import RunConfig
from .sampling import MixtureBatchSampler, ShardedBatchSampler

DROPPED_TEXTS = "dropped_texts.json"


def open_sources(cfg: RunConfig, open_single: Callable[[], Manifest]) -> list[Source]:
    """``data.sources`` read and validated, or the one manifest (or shards) that ``open_single`` opens."""
    if cfg.data.sources is None:
        manifest = open_single()
        return [Source(manifest.path.parent.name or manifest.path.stem, manifest, 1.0)]
    sources = []
    for name, s in zip(cfg.data.source_names(), cfg.data.sources):
        if not Path(s.manifest).is_file():
            raise FileNotFoundError(f"data.sources: manifest of source {name!r} not found: {s.manifest}")
        sources.append(Source(name, read_manifest(s.manifest, on_error=cfg.data.on_error), s.weight))
    return sources


def run_granularities(cfg: RunConfig, sources: Sequence[Source]) -> list[str]:
    """The union of the sources' granularities, in ``data.granularities``' order when given. With one
    manifest ``data.granularities`` may also choose a subset, as it always could."""
    manifests = [s.manifest for s in sources]
    if cfg.data.sources is None:
        return list(cfg.data.granularities or union_granularities(manifests))
    return union_granularities(manifests, cfg.data.granularities)


def apply_drop_texts(cfg: RunConfig, sources: list[Source], granularities: Sequence[str], out: Path,
                     is_main: bool) -> list[Source]:
    """Remove ``data.drop_texts.rate`` of the named granularities' texts from each source's training
    split, and write which records lost which text to ``out/dropped_texts.json``."""
    drop = cfg.data.drop_texts
    if drop is None:
        return sources
    unknown = [g for g in drop.granularities if g not in granularities]
    if unknown:
        raise ValueError(f"data.drop_texts.granularities: {unknown} are not granularities of the run ({list(granularities)})")
    split = cfg.data.train_split
    changed, record = [], {"rate": drop.rate, "seed": drop.seed, "split": split, "sources": {}}
    for s in sources:
        train = [r for r in s.manifest.records if r.split == split]
        kept, dropped = drop_texts(train, drop.rate, drop.seed, drop.granularities)
        new = iter(kept)
        records = [next(new) if r.split == split else r for r in s.manifest.records]
        changed.append(dataclasses.replace(s, manifest=dataclasses.replace(s.manifest, records=records)))
        record["sources"][s.name] = {"records": len(train), "dropped": dropped}
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / DROPPED_TEXTS).write_text(json.dumps(record, indent=1) + "\n")
    return changed


def build_datasets(cfg: RunConfig, sources: Sequence[Source], granularities: Sequence[str], common: dict,
                   train_transform, eval_transform) -> tuple[SourcesDataset, ConcatDataset | ImageTextDataset | None]:
    """``(train, valid or None)``: the sources' training splits end to end, and their validation splits
    (a source without one contributes nothing to validation). Every dataset uses the sources' union of
    finding names, so that multi-hot labels line up across sources."""
    common = {**common, "finding_names": sorted({n for s in sources for n in s.manifest.finding_names})}
    train = SourcesDataset(
        [s.name for s in sources],
        [ImageTextDataset(s.manifest, cfg.data.train_split, transform=train_transform, **common) for s in sources],
        granularities,
    )
    split = cfg.data.valid_split
    valid = [ImageTextDataset(s.manifest, split, transform=eval_transform, **common)
             for s in sources if split and s.manifest.split(split)]
    if not valid:
        return train, None
    return train, (valid[0] if len(valid) == 1 else ConcatDataset(valid))


def build_train_sampler(cfg: RunConfig, sources: Sequence[Source], train: SourcesDataset, rank: int,
                        world_size: int) -> ShardedBatchSampler:
    """Today's sampler for one manifest; the weighted mixture for ``data.sources``."""
    t = cfg.train
    if cfg.data.sources is None:
        return ShardedBatchSampler(len(train), t.batch_size, t.seed, rank, world_size, multiple_of=t.grad_accum)
    return MixtureBatchSampler(train.sizes, [s.weight for s in sources], t.batch_size, t.seed, rank, world_size,
                               multiple_of=t.grad_accum)
