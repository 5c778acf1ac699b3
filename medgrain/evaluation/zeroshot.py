"""Zero-shot classification by prompts (our protocol: neither MGCA nor MGLL evaluates zero-shot).

Multi-label data: for every finding a positive and a negative prompt; the probability of the
finding is the softmax over the pair, ``sigmoid(scale * (s_pos - s_neg))`` (CheXzero's protocol).
Multi-class data (one label per record): a softmax over the findings' positive prompts.

Prompts are written per granularity, in the words of that granularity's texts, so a model trained
on category names and one trained on reports are each asked in their own language. Every
granularity is scored alone and in the ensemble: per granularity the average of its templates'
normalised embeddings, then the average over granularities (each weighs the same), normalised.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medgrain.evaluation.context import EvalContext
from medgrain.evaluation.data import is_multiclass, require_findings, require_split
from medgrain.evaluation.features import encode_texts, extract_features
from medgrain.evaluation.metrics import f1_thresholds, multiclass_metrics, multilabel_metrics
from medgrain.evaluation.present import Table, per_class_rows, record_title, with_ci
from medgrain.evaluation.registry import evaluate, register_task
from medgrain.evaluation.results import PerImageScores, TaskResult

ENSEMBLE = "ensemble"


class PolarTemplates(BaseModel):
    """Templates of one granularity. ``{finding}`` is the finding's wording, ``{Finding}`` the same
    capitalised; a template without either (``normal chest radiograph``) is the same for all findings."""

    model_config = ConfigDict(extra="forbid")
    positive: list[str]
    negative: list[str] = []


class Prompts(BaseModel):
    """A prompt file (YAML or JSON): ``templates: {granularity: {positive: [...], negative: [...]}}``
    and optionally ``names: {finding: wording}`` (default: the finding name in lower case), and
    ``classes: {finding: {list name: [words, ...], ...}}``: class-specific prompts in GLoRIA's style, every
    combination of one entry per list (in the lists' order, e.g. severity x subtype x location) joined
    by spaces, scored as the granularity ``classes`` (positive prompts only: softmax over the findings)."""

    model_config = ConfigDict(extra="forbid")
    templates: dict[str, PolarTemplates]
    names: dict[str, str] = {}
    classes: dict[str, dict[str, list[str]]] = {}

    def class_prompts(self, name: str) -> list[str]:
        """Every combination of ``classes[name]``'s word lists, blank parts left out."""
        import itertools

        lists = list(self.classes[name].values())
        return [" ".join(w for w in combo if w.strip()) for combo in itertools.product(*lists)]


CLASSES = "classes"  # the granularity of class-specific prompts
PUBLISHED_PROMPTS = {"chexpert-5x200": Path(__file__).parent / "prompts" / "chexpert_5x200.yaml"}


# Defaults in the words of the field, per granularity (see docs/evaluation.md).
DEFAULT_PROMPTS = {
    "cxr": Prompts(templates={
        "abnormality": PolarTemplates(positive=["abnormal chest radiograph"], negative=["normal chest radiograph"]),
        "category": PolarTemplates(positive=["{finding}"], negative=["no {finding}"]),
        "description": PolarTemplates(
            positive=["There is {finding}.", "{Finding} is present.", "Findings consistent with {finding}."],
            negative=["No {finding}.", "There is no {finding}.", "No evidence of {finding}."],
        ),
        "report": PolarTemplates(
            positive=["FINDINGS: There is {finding}. IMPRESSION: {Finding}."],
            negative=["FINDINGS: No {finding}. IMPRESSION: No acute cardiopulmonary process."],
        ),
    }),
    "fundus": Prompts(templates={
        "abnormality": PolarTemplates(positive=["abnormal fundus photograph"], negative=["normal fundus photograph"]),
        "category": PolarTemplates(positive=["{finding}"], negative=["no {finding}"]),
        "description": PolarTemplates(
            positive=["Fundus photograph showing {finding}.", "Signs of {finding} in the fundus."],
            negative=["Fundus photograph without {finding}.", "No signs of {finding} in the fundus."],
        ),
    }),
}


def load_prompts(path: str | Path) -> Prompts:
    path = Path(path)
    try:
        return Prompts.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))  # YAML reads JSON too
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read prompt file {path}: {e}") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: field '{where}': {first['msg']}") from None


def wording(name: str) -> str:
    """How a finding is named inside a sentence: lower case except acronyms (``AMD``)."""
    return " ".join(w if w.isupper() and len(w) > 1 else w.lower() for w in name.replace("_", " ").split())


def fill(template: str, finding: str) -> str:
    return template.replace("{Finding}", finding[:1].upper() + finding[1:]).replace("{finding}", finding)


def class_embeddings(encoder, templates: list[str], names: list[str], prompts: Prompts) -> torch.Tensor:
    """(F, E): per finding, the normalised mean of its templates' normalised embeddings."""
    texts = [fill(t, prompts.names.get(n, wording(n))) for n in names for t in templates]
    embeddings = encode_texts(encoder, texts).reshape(len(names), len(templates), -1)
    return F.normalize(embeddings.mean(1), dim=-1)


class ZeroShotOptions(BaseModel):
    """Options of zero-shot classification (the split, the threshold split and the cache are the context's)."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["auto", "pairs", "softmax"] = Field(
        "auto", description="pairs: a positive and a negative prompt per finding (multi-label); softmax over the "
                            "findings (multi-class); auto: softmax when every record has exactly one label")
    prompts: Path | None = Field(None, description="prompt templates (YAML or JSON, see docs/evaluation.md)")
    domain: Literal[tuple(DEFAULT_PROMPTS)] | None = Field(
        None, description="whose default prompts (default: the records' domain)")
    batch_size: int = Field(64, description="feature extraction batch size")


def _score_by_prompts(ctx: EvalContext, options: ZeroShotOptions, result: TaskResult, mode: str, names: list[str]):
    """(prompts, positives, negatives, usable granularities): the prompt embeddings per granularity and
    their ensemble."""
    prompt_set = load_prompts(options.prompts) if options.prompts else default_prompts(ctx.manifest, options.domain)
    positives, negatives = {}, {}
    if prompt_set.classes:
        missing = [n for n in names if n not in prompt_set.classes]
        if missing:
            raise ValueError(f"the prompts' classes have no prompts for {missing}; add them or leave 'classes' out")
        if mode == "pairs":
            result.warn("class prompts ('classes') have no negatives; they are left out of the pairwise scores")
        else:
            embeddings = [F.normalize(encode_texts(ctx.encoder, prompt_set.class_prompts(n)).mean(0), dim=-1)
                          for n in names]
            positives[CLASSES] = torch.stack(embeddings)
    for granularity, templates in prompt_set.templates.items():
        positives[granularity] = class_embeddings(ctx.encoder, templates.positive, names, prompt_set)
        if templates.negative:
            negatives[granularity] = class_embeddings(ctx.encoder, templates.negative, names, prompt_set)
        elif mode == "pairs":
            result.warn(f"granularity '{granularity}' has no negative prompts; it is left out of the pairwise scores")
    usable = list(negatives) if mode == "pairs" else list(positives)
    if not usable:
        raise ValueError("no granularity has both positive and negative prompts; pairwise zero-shot needs both")
    for embeddings in (positives, negatives) if mode == "pairs" else (positives,):
        embeddings[ENSEMBLE] = F.normalize(torch.stack([embeddings[g] for g in usable]).mean(0), dim=-1)
    return prompt_set, positives, negatives, usable


def zero_shot_tables(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    macro = metrics.get("macro", {})
    first = ("accuracy", "AUROC", "AP", "F1") if metrics.get("mode") == "softmax" else ("AUROC", "AP", "F1", "accuracy")
    return {"zero-shot": {label: with_ci(macro, label.lower()) for label in first}}


def zero_shot_headline(metrics: dict[str, Any]) -> tuple[str, Any]:
    key = "auroc" if metrics["mode"] == "pairs" else "accuracy"
    return ("macro AUROC" if key == "auroc" else "accuracy", metrics["macro"][key])


def zero_shot_console(record: dict[str, Any]) -> list[Table]:
    metrics = record["metrics"]
    mode, by_prompt, names = metrics["mode"], metrics["by_prompt"], list(metrics["per_class"])
    columns = ["auroc", "ap", "f1", "accuracy"] if mode == "pairs" else ["auroc", "ap", "f1"]
    tables = [Table(record_title(f"zero-shot ({mode}, prompt ensemble)", record), ["finding", *columns],
                    per_class_rows(metrics, names, columns))]
    if mode == "softmax":
        tables.append(Table("zero-shot accuracy", ["prompts", "accuracy"],
                            [[g, with_ci(m["macro"], "accuracy")] for g, m in by_prompt.items()]))
    tables.append(Table("zero-shot by granularity", ["prompts", "AUROC", "AP", "F1"],
                        [[g, *(with_ci(m["macro"], k) for k in ("auroc", "ap", "f1"))] for g, m in by_prompt.items()]))
    return tables


@register_task("zero-shot", options=ZeroShotOptions, context=("valid_split", "cache_dir"), title="zero-shot",
               help="classification by prompts at every granularity and their ensemble (CheXzero's protocol)",
               available=lambda ctx: None if ctx.manifest.finding_names else "no record has a label",
               tables=zero_shot_tables, console=zero_shot_console, headline=zero_shot_headline, scores=True)
def zero_shot_task(ctx: EvalContext, options: ZeroShotOptions) -> TaskResult:
    """Zero-shot classification of the context's split by prompts at every granularity and their ensemble.

    F1 and accuracy use per-finding thresholds chosen for the best F1 on the context's validation split."""
    manifest, split, mode = ctx.manifest, ctx.split, options.mode
    require_split(manifest, split, "zero-shot")
    names = require_findings(manifest, "zero-shot classification")
    result = TaskResult(options.model_dump(mode="json"), {})

    def features(s):
        return extract_features(ctx.encoder, manifest, s, "embedding", options.batch_size, ctx.workers, ctx.cache_dir)

    test = features(split)
    if mode == "auto":
        mode = "softmax" if is_multiclass(test.labels) else "pairs"
    if mode == "softmax" and not is_multiclass(test.labels):
        raise ValueError(f"{manifest.path}: mode 'softmax' needs exactly one label per record in split '{split}'")
    valid = None
    if mode == "pairs":
        if ctx.has_images(ctx.valid_split):
            valid = features(ctx.valid_split)
        else:
            result.warn(f"split '{ctx.valid_split}' has no images: F1 and accuracy use the threshold 0.5")

    prompt_set, positives, negatives, usable = _score_by_prompts(ctx, options, result, mode, names)
    scale = float(ctx.encoder.model.logit_scale_value().detach())

    def probabilities(features: np.ndarray, granularity: str) -> np.ndarray:
        images = torch.from_numpy(features)
        positive = images @ positives[granularity].T
        if mode == "softmax":
            return torch.softmax(scale * positive, dim=1).numpy()
        return torch.sigmoid(scale * (positive - images @ negatives[granularity].T)).numpy()

    by_prompt = {}
    for granularity in [*usable, ENSEMBLE]:
        if mode == "softmax":
            by_prompt[granularity] = multiclass_metrics(probabilities(test.features, granularity),
                                                        test.labels.argmax(1), names, ctx.intervals)
            continue
        thresholds = None
        if valid is not None:
            thresholds = f1_thresholds(probabilities(valid.features, granularity), valid.labels)
        by_prompt[granularity] = multilabel_metrics(probabilities(test.features, granularity), test.labels,
                                                    names, thresholds, ctx.intervals)
    # with published class prompts (5x200), the headline is theirs, as the papers report it
    scored_by = CLASSES if CLASSES in by_prompt else ENSEMBLE
    headline = by_prompt[scored_by]
    if headline["excluded"]:
        result.warn(f"left out of the macro means (undefined on split '{split}'): {headline['excluded']}")
    result.options["mode"] = mode
    result.metrics = {"mode": mode, **headline, "headline_prompts": scored_by, "by_prompt": by_prompt,
                      "prompts": prompt_set.model_dump(), "logit_scale": scale}
    result.scores = PerImageScores(test.ids, names, probabilities(test.features, scored_by), test.labels,
                                   "class prompts" if scored_by == CLASSES else "prompt ensemble")
    return result


def zero_shot(checkpoint: str, data, *, out=None, encoder=None, **kwargs) -> dict:
    """``evaluate("zero-shot", ...)``: ``kwargs`` are the context's fields (``ContextOptions``: model, split,
    valid_split, cache_dir, workers, device ...) and ``ZeroShotOptions``' (mode, prompts, domain, batch_size)."""
    return evaluate("zero-shot", checkpoint, data, out=out, encoder=encoder, **kwargs)


def default_prompts(manifest, domain: str | None) -> Prompts:
    """The default prompts of the data's domain (the records' ``domain``, else ``domain``). Data whose
    findings are CheXpert 5x200's five also get class prompts in GLoRIA's style (``prompts/chexpert_5x200.yaml``)."""
    names = set(manifest.finding_names)
    published = load_prompts(PUBLISHED_PROMPTS["chexpert-5x200"])
    if names and names <= set(published.classes) and (domain or "cxr") == "cxr":
        return DEFAULT_PROMPTS["cxr"].model_copy(update={"classes": published.classes})
    if domain is None:
        domains = Counter(r.domain for r in manifest.records if r.domain)
        domain = domains.most_common(1)[0][0] if domains else None
    if domain not in DEFAULT_PROMPTS:
        raise ValueError(
            f"{manifest.path}: no default prompts for domain {domain!r} (known: {sorted(DEFAULT_PROMPTS)}); "
            "pass domain= (--domain) or a prompt file (--prompts FILE, see docs/evaluation.md)"
        )
    return DEFAULT_PROMPTS[domain]
