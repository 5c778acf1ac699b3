"""What is in a manifest: split sizes, finding frequencies, text variety, co-occurrences, skips.

Behind ``medgrain info PATH``; the dict is plain JSON so it can also be saved next to a run.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .manifest import SPLITS, Manifest
from .skips import SHOWN


def summarize(manifest: Manifest, top: int = 5) -> dict[str, Any]:
    """Counts over all records; ``top`` bounds the most-common lists."""
    records = manifest.records
    n = len(records)
    names = manifest.finding_names
    index = {name: i for i, name in enumerate(names)}
    labels = torch.zeros(n, len(names))
    pairs = [(i, index[name]) for i, r in enumerate(records) for name in r.labels]
    if pairs:
        labels[tuple(torch.tensor(pairs).T)] = 1.0

    counts = labels.sum(0)
    findings = {
        names[k]: {"count": int(counts[k]), "percent": round(100.0 * float(counts[k]) / max(n, 1), 2)}
        for k in counts.argsort(descending=True, stable=True).tolist()
    }
    together = labels.T @ labels  # (F, F): how many records carry both findings
    upper = torch.triu_indices(len(names), len(names), offset=1)
    pair_counts = together[upper[0], upper[1]]
    order = pair_counts.argsort(descending=True, stable=True)[:top]
    cooccurring = [
        {"findings": [names[int(upper[0, k])], names[int(upper[1, k])]], "count": int(pair_counts[k])}
        for k in order.tolist()
        if pair_counts[k] > 0
    ]

    granularities = {}
    for g in manifest.granularities:
        texts = Counter(r.texts[g] for r in records if g in r.texts)
        granularities[g] = {
            "distinct": len(texts),
            "missing": n - sum(texts.values()),
            # a text may be absent (docs/manifest.md): how many records of each split have one
            "present": _per_split(r for r in records if g in r.texts),
            "most_common": [{"text": t, "count": c} for t, c in texts.most_common(top)],
        }

    split_counts = Counter(r.split for r in records)
    return {
        "path": str(manifest.path),
        "records": n,
        "splits": {s: split_counts.get(s, 0) for s in SPLITS},
        "with_image": sum(r.image is not None for r in records),
        "with_report": sum(r.report is not None for r in records),
        "reports": _per_split(r for r in records if r.report is not None),
        "normal": int((labels.sum(1) == 0).sum()),
        "findings": findings,
        "cooccurring": cooccurring,
        "granularities": granularities,
        "skipped": [{"line": s.line, "field": s.field, "reason": s.reason, "kind": s.kind}
                    for s in manifest.skipped],
        "skipped_by_reason": dict(sorted(Counter(s.kind for s in manifest.skipped).items())),
    }


def _per_split(records) -> dict[str, int]:
    counts = Counter(r.split for r in records)
    return {s: counts.get(s, 0) for s in SPLITS}


def format_summary(summary: dict[str, Any], width: int = 100) -> str:
    """The summary as plain-text tables (rich, without colour codes)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    n = summary["records"]
    console.print(f"{escape(summary['path'])}: {n} records, {summary['with_image']} with an image, "
                  f"{summary['with_report']} with a report, {summary['normal']} normal (no labels)")

    splits = Table(title="splits")
    for s in summary["splits"]:
        splits.add_column(s, justify="right")
    splits.add_row(*(str(c) for c in summary["splits"].values()))
    console.print(splits)

    findings = Table(title="findings")
    findings.add_column("finding")
    findings.add_column("records", justify="right")
    findings.add_column("%", justify="right")
    for name, f in summary["findings"].items():
        findings.add_row(escape(name), str(f["count"]), f"{f['percent']:.1f}")
    console.print(findings)

    if summary["cooccurring"]:
        pairs = Table(title="co-occurring findings")
        pairs.add_column("findings")
        pairs.add_column("records", justify="right")
        for p in summary["cooccurring"]:
            pairs.add_row(escape(" + ".join(p["findings"])), str(p["count"]))
        console.print(pairs)

    texts = Table(title="texts per granularity (coarse to fine)")
    texts.add_column("granularity")
    texts.add_column("distinct", justify="right")
    texts.add_column("missing", justify="right")
    texts.add_column("with text\n" + "/".join(SPLITS), justify="right")
    texts.add_column("most common")
    for g, t in summary["granularities"].items():
        common = "\n".join(f"{c['count']}x {escape(_shorten(c['text']))}" for c in t["most_common"])
        texts.add_row(escape(g), str(t["distinct"]), str(t["missing"]), "/".join(str(t["present"][s]) for s in SPLITS), common)
    texts.add_row("report", "", str(n - summary["with_report"]), "/".join(str(summary["reports"][s]) for s in SPLITS), "")
    console.print(texts)

    skipped = summary["skipped"]
    console.print(f"skipped records: {len(skipped)}")
    for kind, count in summary["skipped_by_reason"].items():  # counted per reason; the first lines of each shown
        lines = [s for s in skipped if s["kind"] == kind]
        console.print(f"  {kind}: {count}", markup=False, highlight=False)
        for s in lines[:SHOWN]:
            field = f" field '{s['field']}'" if s["field"] else ""
            console.print(f"    line {s['line']}{field}: {s['reason']}", markup=False, highlight=False)
        if count > SHOWN:
            console.print(f"    and {count - SHOWN} more (--json lists every line)", markup=False, highlight=False)
    return console.file.getvalue()


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
