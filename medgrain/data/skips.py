"""Counting what ``on_error="skip"`` left out, per reason, so a run reports it at its end.

Three places leave a record out: reading the manifest (a bad line), building a dataset (a file that
is not there, a record without the report the others have) and loading an item (an image that cannot
be decoded). Each names a short reason (``ManifestError.kind``, ``ImageReadError.kind``); a
``SkipReport`` counts the distinct records (or manifest lines) per reason, keeping the first few of
each so the user can find them. A record that fails in every epoch is counted once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

SHOWN = 5  # places kept per reason in the report


class LoadFailure(NamedTuple):
    """What a dataset gives instead of an item whose files failed to load under ``on_error="skip"``."""

    where: str  # file:line of the record
    kind: str


class SkipReport:
    """Distinct skipped records (or manifest lines) per reason: ``add(kind, where)``."""

    def __init__(self, places: dict[str, Iterable[str]] | None = None):
        self.places: dict[str, set[str]] = {k: set(v) for k, v in (places or {}).items()}

    def add(self, kind: str, where: str) -> None:
        self.places.setdefault(kind, set()).add(where)

    def update(self, other: SkipReport) -> None:
        for kind, places in other.places.items():
            self.places.setdefault(kind, set()).update(places)

    @property
    def total(self) -> int:
        return sum(len(p) for p in self.places.values())

    def counts(self) -> dict[str, int]:
        return {k: len(self.places[k]) for k in sorted(self.places)}

    def state(self) -> dict[str, list[str]]:
        """Plain values (for a checkpoint loaded with weights_only=True, or JSON)."""
        return {k: sorted(v) for k, v in sorted(self.places.items())}

    def summary(self) -> dict[str, Any]:
        """What a run writes: the total, the count per reason and the first places of each."""
        return {"total": self.total, "by_reason": self.counts(),
                "first": {k: sorted(v)[:SHOWN] for k, v in sorted(self.places.items())}}

    def format(self) -> str:
        if not self.total:
            return "skipped: nothing (every record was used)"
        lines = [f"skipped {self.total} record(s) with bad input (on_error=skip), by reason:"]
        for kind, places in sorted(self.places.items()):
            shown = sorted(places)[:SHOWN]
            more = f" and {len(places) - SHOWN} more" if len(places) > SHOWN else ""
            lines.append(f"  {kind}: {len(places)} ({', '.join(shown)}{more})")
        return "\n".join(lines)


def manifest_skips(manifest) -> SkipReport:
    """The lines ``read_manifest(on_error="skip")`` rejected, as ``file:line``."""
    report = SkipReport()
    for s in manifest.skipped:
        report.add(s.kind, f"{manifest.path}:{s.line}")
    return report


def dataset_skips(dataset) -> SkipReport:
    """The records an ``ImageTextDataset`` left out when it was built, as ``file:line``."""
    report = SkipReport()
    for s in getattr(dataset, "skipped", []):
        report.add(s.kind, f"{dataset.manifest.path}:{s.line}")
    return report
