"""What the report reads and draws beyond the numbers: ROC inputs, embedding maps, attention maps and
the data sample. One encoder per method is loaded at a time and used for the figures that need it.

ROC inputs are the per-image scores an evaluation stored (``scores`` in its JSON, or in the suite's
entry of the task; ``metrics["roc"]`` in files written by hand). The report never recomputes a metric
or refits a model: an evaluation without stored scores is named, and its curves are not drawn.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medgrain.data.manifest import Manifest, Record
from medgrain.report.results import BASELINES, Run

EMBEDDING_SPLITS = ("valid", "test")  # images no method trained on
# Words that carry no finding: a report's section names and function words, left out of the
# attention figures so the panels show what the report says about the image.
FUNCTION_WORDS = frozenset("""
    a an and are as at be by for from has have in is it no not of on or the there this to was were with
    findings impression frontal view chest noted seen evidence
""".split())


@dataclass
class Scores:
    names: list[str]
    scores: np.ndarray  # (N, F)
    labels: np.ndarray  # (N, F) bool
    how: str  # where they come from, for the caption


@dataclass
class Source:
    """A method's encoder: a run's checkpoint, or a baseline named in an evaluation."""

    name: str
    checkpoint: str
    preset: str
    seed: int
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    objective: str | None = None


def resolve_manifest(data: str | Path | None, results: dict[str, Any], runs: list[Run]) -> Path | None:
    """The manifest the figures read: the one given, else the results', else the evaluations', else
    the first pretraining run's (as written in run.yaml, relative to the current directory)."""
    candidates = [data, results.get("data")]
    candidates += [r.get("data") for run in runs for _, r in run.evaluations]
    candidates += [run.manifest for run in runs]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    if data:
        raise FileNotFoundError(f"manifest not found: {data}")
    return None


def sources(runs: list[Run]) -> list[Source]:
    """One encoder per method: the first run with a checkpoint (its seed), and each baseline found
    among the evaluations."""
    found: dict[str, Source] = {}
    for run in runs:
        for _, result in run.evaluations:
            if result.get("checkpoint") in BASELINES:
                name = result["checkpoint"]
                if name not in found:
                    seed = result.get("seed", 0)
                    found[name] = Source(name, name, result.get("options", {}).get("model", "tiny"),
                                         seed[0] if isinstance(seed, list) else int(seed))
                found[name].evaluations.append(result)
        if run.checkpoint is not None and run.name not in found:
            own = [r for _, r in run.evaluations if r.get("checkpoint") not in BASELINES]
            found[run.name] = Source(run.name, str(run.checkpoint), run.preset or "tiny", run.seed or 0, own,
                                     run.objective)
    return list(found.values())


def load(source: Source, device: str = "cpu"):
    from medgrain.evaluation.encoder import load_encoder

    return load_encoder(source.checkpoint, model=source.preset, seed=source.seed, device=device)


# ------------------------------------------------------------------------------------ ROC


def roc_tasks() -> dict[str, str]:
    """{task: its title} of the registered tasks whose results store per-image scores of the findings."""
    from medgrain.evaluation import task_specs

    return {spec.name: spec.title for spec in task_specs() if spec.scores}


def stored_scores(evaluation: dict[str, Any]) -> Scores | None:
    """The per-image scores an evaluation stored (a task's JSON or the suite's entry), or None."""
    holder = evaluation.get("scores") or evaluation.get("metrics", {}).get("roc")
    if not isinstance(holder, dict) or "scores" not in holder or "labels" not in holder:
        return None
    how = "saved by the evaluation" + (f" ({holder['description']})" if holder.get("description") else "")
    return Scores(list(holder["names"]), np.asarray(holder["scores"], dtype=np.float64),
                  np.asarray(holder["labels"]).astype(bool), how)


def evaluation_of(source: Source, task: str) -> dict[str, Any] | None:
    """The result of ``task`` among the source's evaluations (a task's JSON or the suite's entry)."""
    for result in source.evaluations:
        if result["task"] == task:
            return result
        if result["task"] == "all" and "metrics" in result["metrics"].get(task, {}):
            return result["metrics"][task]
    return None


def roc_input(source: Source, task: str) -> Scores | str:
    """The stored scores of ``task`` for this method, or why there are none."""
    evaluation = evaluation_of(source, task)
    if evaluation is None:
        return f"no {task} evaluation of {source.name} was found"
    stored = stored_scores(evaluation)
    if stored is None:
        return (f"the {task} evaluation of {source.name} stored no per-image scores (written by an older "
                "medgrain); evaluate again to draw its curves")
    return stored


# ------------------------------------------------------------------------------------ embeddings


def finding_category(labels: list[str]) -> str:
    """How a point is coloured: its finding, "normal", or "several findings"."""
    if not labels:
        return "normal"
    return labels[0] if len(labels) == 1 else "several findings"


def embedding_points(encoder, manifest: Manifest, cache_dir=None, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """2-D t-SNE (deterministic: PCA initialisation, fixed seed) of the image embeddings of the images
    no method trained on, with each point's category."""
    from sklearn.manifold import TSNE

    from medgrain.evaluation.features import extract_features

    features, categories = [], []
    labels_of = {r.id: r.labels for r in manifest.records}
    for split in EMBEDDING_SPLITS:
        if not any(r.image for r in manifest.split(split)):
            continue
        extracted = extract_features(encoder, manifest, split, "embedding", cache_dir=cache_dir)
        features.append(extracted.features)
        categories += [finding_category(labels_of[i]) for i in extracted.ids]
    n = sum(len(f) for f in features)
    if n < 5:
        raise ValueError(f"only {n} images in the {'/'.join(EMBEDDING_SPLITS)} splits; t-SNE needs at least 5")
    x = np.concatenate(features).astype(np.float64)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    # Exact gradients up to a thousand points: faster there than Barnes-Hut, whose per-step overhead
    # dominates small maps (tens of seconds for a dozen points on a busy 2-core machine).
    method = "exact" if n <= 1000 else "barnes_hut"
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method=method).fit_transform(x)
    return xy, categories


# ------------------------------------------------------------------------------------ attention and data


def example_records(manifest: Manifest, k: int, with_normal: bool = True) -> list[Record]:
    """``k`` records with an image, test split first (then valid, then train): a normal one (if
    ``with_normal``) and records whose findings differ, so a few examples show the range of the data."""
    pool = [r for split in ("test", "valid", "train") for r in manifest.split(split) if r.image]
    chosen: list[Record] = []
    if with_normal:
        chosen += [r for r in pool if not r.labels][:1]
    covered: set[str] = set()
    for r in pool:  # greedy: each new record brings findings not shown yet
        if len(chosen) < k and r.labels and not covered & set(r.labels):
            chosen.append(r)
            covered |= set(r.labels)
    chosen += [r for r in pool if r not in chosen and (r.labels or with_normal)][: k - len(chosen)]
    return chosen[:k]


def content_word_indices(words: list[str], max_words: int, finding_words: set[str] = frozenset()) -> list[int]:
    """Up to ``max_words`` words, each once, no function words: those in ``finding_words`` (the words of
    the record's finding texts) first, then the others in reading order."""
    candidates, seen = [], set()
    for i, word in enumerate(words):
        key = word.lower()
        if key in FUNCTION_WORDS or key in seen or not re.search(r"[^\W\d]", word):
            continue
        seen.add(key)
        candidates.append(i)
    first = [i for i in candidates if words[i].lower() in finding_words]
    rest = [i for i in candidates if words[i].lower() not in finding_words]
    return sorted((first + rest)[:max_words])


def attention_examples(encoder, manifest: Manifest, records: list[Record], max_words: int = 9):
    """(record, text, AttentionMaps of a few content words, truncated) for each record: the report when
    it has one, else its finest granularity's text. ``truncated``: the text was longer than the
    tokenizer's max_length."""
    from medgrain.models.attention_maps import word_attention_maps

    out = []
    for record in records:
        text = record.report or (list(record.texts.values())[-1] if record.texts else None)
        if not text:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            maps = word_attention_maps(encoder.model, encoder.tokenizer, manifest.resolve(record.image), text,
                                       encoder.transform)
        finding_words = {w.lower() for t in [*record.texts.values(), *record.labels] for w in re.findall(r"\w+", t)}
        chosen = content_word_indices(maps.words, max_words, finding_words - FUNCTION_WORDS)
        out.append((record, text, maps.select(chosen), bool(caught)))
    return out
