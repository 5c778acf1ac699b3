"""Image-text retrieval (our protocol: neither MGCA nor MGLL reports retrieval).

Every image of the split is a query against every record's text, and every text against every
image. Texts repeat (two normal studies share "normal chest radiograph"), so an item is correct
when its text equals the query's text: retrieving a duplicate of the right text is a hit, and a
query is never charged for the arbitrary order of identical texts.

On data with one label per record (CheXpert/MIMIC 5x200) every text source also gets GLoRIA's
image-to-text precision by class, ``precision_by_class``: the share of each image's top-K texts whose
record has the image's class (P@1/5/10, per class and overall).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from medgrain.data.text import text_ids
from medgrain.evaluation.context import EvalContext
from medgrain.evaluation.data import image_dataset, require_split
from medgrain.evaluation.features import encode_texts, extract_features
from medgrain.evaluation.metrics import precision_at_k, recall_metrics, retrieval_ranks
from medgrain.evaluation.present import Table, with_ci
from medgrain.evaluation.registry import evaluate, register_task
from medgrain.evaluation.results import TaskResult

KS = (1, 5, 10)


def texts_of(records, source: str) -> list[str]:
    """The report (``source="report"``) or the text at granularity ``source`` of each record."""
    if source == "report":
        texts = [r.report for r in records]
    else:
        texts = [r.texts.get(source) for r in records]
    missing = [r.id for r, t in zip(records, texts) if t is None]
    if missing:
        raise ValueError(f"{len(missing)} records (first: {missing[0]!r}) have no {source!r} text to retrieve")
    return texts


class RetrievalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field("all", description="'report', a granularity, or 'all' (the report, if any, and every granularity)")
    batch_size: int = Field(64, description="feature extraction batch size")


def retrieval_tables(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tables = {}
    for source, values in metrics.get("by_text", {}).items():
        row = {}
        for direction, arrow in (("image_to_text", "i→t"), ("text_to_image", "t→i")):
            for key in ("R@1", "R@5", "R@10", "median_rank"):
                row[f"{arrow} {key.replace('_', ' ')}"] = with_ci(values.get(direction, {}), key)
        for key in ("P@1", "P@5", "P@10"):
            if "precision_by_class" in values:
                row[f"i→t class {key}"] = with_ci(values["precision_by_class"], key)
        tables[f"retrieval ({source})"] = row
    return tables


def retrieval_headline(metrics: dict[str, Any]) -> tuple[str, Any]:
    source, values = next(iter(metrics["by_text"].items()))
    return (f"{source} image→text R@1", values["image_to_text"]["R@1"])


def retrieval_console(record: dict[str, Any]) -> list[Table]:
    by_text = record["metrics"]["by_text"]
    columns = [f"R@{k}" for k in record["options"]["ks"]] + ["median_rank"]
    queries = next(iter(by_text.values()))["queries"] if by_text else 0
    return [Table(f"retrieval on {record['options']['split']} ({queries} records): {record['data']}",
                  ["text", "distinct", *(f"i→t {c}" for c in columns), *(f"t→i {c}" for c in columns)],
                  [[s, m["distinct_texts"], *(with_ci(m["image_to_text"], c) for c in columns),
                    *(with_ci(m["text_to_image"], c) for c in columns)] for s, m in by_text.items()])]


def _has_texts(ctx: EvalContext) -> str | None:
    records = [r for r in ctx.manifest.records if r.image is not None]
    return None if ctx.manifest.granularities or any(r.report for r in records) else "the records have no texts"


@register_task("retrieval", options=RetrievalOptions, context=("cache_dir",), title="retrieval",
               help="image-text retrieval: Recall@1/5/10 and median rank, both directions",
               available=_has_texts, tables=retrieval_tables, console=retrieval_console, headline=retrieval_headline)
def retrieval_task(ctx: EvalContext, options: RetrievalOptions) -> TaskResult:
    """Image→text and text→image Recall@1/5/10 and median rank on the context's split, for the report, a
    granularity, or all of them (``options.text``)."""
    manifest, split, text = ctx.manifest, ctx.split, options.text
    require_split(manifest, split, "retrieval")
    records = image_dataset(manifest, split, None).records
    sources = [text] if text != "all" else (
        (["report"] if any(r.report for r in records) else []) + manifest.granularities)
    if not sources:
        raise ValueError(f"{manifest.path}: the records have neither reports nor texts; retrieval needs texts")
    result = TaskResult({**options.model_dump(mode="json"), "ks": list(KS)}, {})

    images = torch.from_numpy(extract_features(ctx.encoder, manifest, split, "embedding", options.batch_size,
                                               ctx.workers, ctx.cache_dir).features)
    names = manifest.finding_names
    classes = _single_classes(records, names)
    by_text = {}
    for source in sources:
        texts = texts_of(records, source)
        keys = text_ids(texts)
        similarity = images @ encode_texts(ctx.encoder, texts).T
        i2t, t2i = retrieval_ranks(similarity, keys, keys), retrieval_ranks(similarity.T, keys, keys)
        by_text[source] = {
            "image_to_text": recall_metrics(i2t, KS, ctx.intervals),
            "text_to_image": recall_metrics(t2i, KS, ctx.intervals),
            # every query's rank, so that two models can be compared query by query (medgrain compare)
            "ranks": {"ids": [r.id for r in records], "image_to_text": i2t.tolist(), "text_to_image": t2i.tolist()},
            "queries": len(texts),
            "distinct_texts": len(set(texts)),
        }
        if classes is not None:  # one label per record (5x200): GLoRIA's precision by class
            by_text[source]["precision_by_class"] = precision_at_k(similarity, classes, classes, names, KS,
                                                                   ctx.intervals)
    result.metrics = {"by_text": by_text}
    return result


def _single_classes(records, names: list[str]) -> torch.Tensor | None:
    """Each record's class index when every record has exactly one label, else None."""
    if not names or any(len(r.labels) != 1 for r in records):
        return None
    index = {n: i for i, n in enumerate(names)}
    return torch.tensor([index[r.labels[0]] for r in records])


def retrieval(checkpoint: str, data, *, out=None, encoder=None, **kwargs) -> dict:
    """``evaluate("retrieval", ...)``: ``kwargs`` are the context's fields and ``RetrievalOptions``'."""
    return evaluate("retrieval", checkpoint, data, out=out, encoder=encoder, **kwargs)
