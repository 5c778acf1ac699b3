"""Several manifests in one run, and removing texts on purpose.

MGLL is meant for a union of corpora annotated at different granularities (one with reports, one with
disease labels only, one with a grade and a description; Li et al., ICLR 2026, arXiv 2511.15943). A
run's granularities are then the union of the sources', and a record lacking one has it absent
(docs/manifest.md, *Absent texts*). ``drop_texts`` removes a fraction of the texts of named
granularities from the training records: the paper's robustness experiment (30% missing).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import ConcatDataset

from .manifest import Manifest, Record, union_of_orders
from .text import text_id


@dataclass
class Source:
    name: str
    manifest: Manifest
    weight: float = 1.0


def union_granularities(manifests: Iterable[Manifest], order: Sequence[str] | None = None) -> list[str]:
    """Every granularity of any source, in ``order`` when given (it must name each of them exactly once),
    else coarse to fine as the sources order them (``union_of_orders``: where one source lacks a
    granularity, it goes where the others put it)."""
    union = union_of_orders(m.granularities for m in manifests)
    if order is None:
        return union
    order = list(order)
    duplicated = sorted({g for g in order if order.count(g) > 1})
    if duplicated:
        raise ValueError(f"data.granularities names {duplicated[0]!r} twice")
    unknown = [g for g in order if g not in union]
    if unknown:
        raise ValueError(f"data.granularities: {unknown} are in no source (they have {union})")
    return order


def drop_texts(records: Sequence[Record], rate: float, seed: int, granularities: Sequence[str]
               ) -> tuple[list[Record], dict[str, list[str]]]:
    """Remove the text of each named granularity from ``round(rate * k)`` of the ``k`` records that have
    one, drawn by a generator seeded from ``seed`` and the granularity's name (so adding a granularity
    to the list does not change which records lose another's). Returns the new records (the others are
    the same objects) and, per granularity, the ids of the records that lost it, in record order."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_texts rate must be in [0, 1), got {rate}")
    lose: dict[int, set[str]] = {}
    dropped: dict[str, list[str]] = {}
    for g in granularities:
        having = [i for i, r in enumerate(records) if g in r.texts]
        count = round(rate * len(having))
        generator = torch.Generator().manual_seed((seed * 1_000_003 + text_id(g)) % 2**63)
        chosen = sorted(having[k] for k in torch.randperm(len(having), generator=generator)[:count].tolist())
        for i in chosen:
            lose.setdefault(i, set()).add(g)
        dropped[g] = [records[i].id for i in chosen]
    out = list(records)
    for i, gone in lose.items():
        r = records[i]
        kept = {g: t for g, t in r.texts.items() if g not in gone}
        out[i] = r.model_copy(update={"texts": kept})
        out[i]._line = r.line
    return out, dropped


class SourcesDataset(ConcatDataset):
    """The sources' datasets end to end, knowing which source each index belongs to and which texts it
    has, so that an epoch's draw can be counted per source and per granularity."""

    def __init__(self, names: Sequence[str], datasets: Sequence, granularities: Sequence[str]):
        super().__init__(datasets)
        self.names, self.granularities = list(names), list(granularities)
        self.source_of = torch.cat([torch.full((len(d),), k, dtype=torch.long) for k, d in enumerate(datasets)])
        self.has_text = torch.tensor(
            [[g in r.texts for g in self.granularities] + [r.report is not None] for d in datasets for r in d.records],
            dtype=torch.bool,
        ).reshape(len(self.source_of), len(self.granularities) + 1)

    @property
    def sizes(self) -> list[int]:
        return [len(d) for d in self.datasets]

    def counts(self, indices: torch.Tensor) -> dict:
        """Records per source and texts present per granularity (and report) among ``indices``."""
        per_source = torch.bincount(self.source_of[indices], minlength=len(self.names)).tolist()
        present = self.has_text[indices].sum(0).tolist()
        return {
            "records_per_source": dict(zip(self.names, per_source)),
            "texts_present": dict(zip([*self.granularities, "report"], present)),
        }
