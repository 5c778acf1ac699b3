"""Image-text retrieval (our protocol: neither MGCA nor MGLL reports retrieval).

Every image of the split is a query against every record's text, and every text against every
image. Texts repeat (two normal studies share "normal chest radiograph"), so an item is correct
when its text equals the query's text: retrieving a duplicate of the right text is a hit, and a
query is never charged for the arbitrary order of identical texts.
"""

from __future__ import annotations

import torch

from medgrain.data.text import text_ids
from medgrain.evaluation.common import (
    Result,
    image_dataset,
    load_encoder,
    open_manifest,
    print_table,
    require_split,
    write_result,
)
from medgrain.evaluation.features import encode_texts, extract_features
from medgrain.evaluation.metrics import recall_metrics, retrieval_ranks

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


def retrieval(checkpoint: str, data, *, text: str = "all", split: str = "test", model: str = "tiny",
              batch_size: int = 64, workers: int = 0, cache_dir=None, device=None, seed: int = 0,
              imagenet_weights: str | None = None, out=None, encoder=None) -> dict:
    """Image→text and text→image Recall@1/5/10 and median rank on ``split``.

    ``text``: ``report``, a granularity name, or ``all`` (the report, if the data has reports, and
    every granularity)."""
    manifest = open_manifest(data)
    require_split(manifest, split, "retrieval")
    records = image_dataset(manifest, split, None).records
    sources = [text] if text != "all" else (
        (["report"] if any(r.report for r in records) else []) + manifest.granularities)
    if not sources:
        raise ValueError(f"{manifest.path}: the records have neither reports nor texts; retrieval needs texts")
    encoder = encoder or load_encoder(checkpoint, model, seed, device, imagenet_weights)
    options = {"text": text, "split": split, "model": model, "batch_size": batch_size, "ks": list(KS)}
    result = Result("retrieval", encoder, manifest, options, seed)

    images = torch.from_numpy(extract_features(encoder, manifest, split, "embedding", batch_size, workers,
                                               cache_dir).features)
    by_text = {}
    for source in sources:
        texts = texts_of(records, source)
        keys = text_ids(texts)
        similarity = images @ encode_texts(encoder, texts).T
        by_text[source] = {
            "image_to_text": recall_metrics(retrieval_ranks(similarity, keys, keys), KS),
            "text_to_image": recall_metrics(retrieval_ranks(similarity.T, keys, keys), KS),
            "queries": len(texts),
            "distinct_texts": len(set(texts)),
        }
    result.metrics = {"by_text": by_text}

    columns = [f"R@{k}" for k in KS] + ["median_rank"]
    print_table(f"retrieval on {split} ({len(records)} records): {manifest.path}",
                ["text", "distinct", *(f"i→t {c}" for c in columns), *(f"t→i {c}" for c in columns)],
                [[s, m["distinct_texts"], *(m["image_to_text"][c] for c in columns),
                  *(m["text_to_image"][c] for c in columns)] for s, m in by_text.items()])
    return write_result(result.to_dict(), out)
