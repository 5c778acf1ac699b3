"""Fine-tuning: the whole image tower with a linear head, at label fractions of the train split.

MGLL's protocol (Li et al., ICLR 2026, arXiv:2511.15943): every weight is trained, BCE-with-logits for multi-label and
cross-entropy for multi-class data, AdamW; here with MGCA's early stopping on the validation loss
(patience 10) and the test split scored once with the best weights. ``select="accuracy"`` picks the
weights by MGLL's rule (best validation accuracy) instead, ``"auroc"`` by the mean AUROC;
``schedule="cosine", warmup_epochs=1`` is MGLL's learning-rate schedule (the default is constant).
"""

from __future__ import annotations

import copy
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from medgrain.data.transforms import pretrain_transform
from medgrain.evaluation.context import EvalContext
from medgrain.evaluation.data import (
    image_dataset,
    image_loader,
    is_multiclass,
    require_findings,
    require_split,
    subset,
)
from medgrain.evaluation.fitting import (
    SCHEDULES,
    SELECT_CRITERIA,
    classification_loss,
    fit_with_early_stopping,
    higher_is_better,
    validation_score,
)
from medgrain.evaluation.fractions import fraction_name, fraction_plan
from medgrain.evaluation.metrics import classification_metrics
from medgrain.evaluation.present import (
    CLASSIFICATION_COLUMNS,
    fraction_console,
    fraction_headline,
    fraction_report,
)
from medgrain.evaluation.registry import evaluate, register_task
from medgrain.evaluation.results import PerImageScores, TaskResult, finish_classification


class FinetuneOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # What `evaluate all` sizes for the data when the user does not set it (suite.sized_defaults).
    sized: ClassVar[tuple[str, ...]] = ("epochs", "patience", "batch_size")
    epochs: int = Field(50, description="at most this many epochs")
    patience: int = Field(10, description="early stopping: epochs without a better validation score")
    lr: float = Field(1e-4, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, description="AdamW weight decay")
    batch_size: int = Field(32, description="training and scoring batch size")
    select: Literal[SELECT_CRITERIA] = Field(
        "loss", description="what the validation split picks the weights by: loss (MGCA's rule), auroc, or "
                            "accuracy (MGLL's)")
    schedule: Literal[SCHEDULES] = Field(
        "constant", description="learning rate constant, or warm-up then cosine to 0 (MGLL's)")
    warmup_epochs: float = Field(0.0, description="warm-up length with --schedule cosine")


class ImageClassifier(nn.Module):
    def __init__(self, visual: nn.Module, n_classes: int):
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(visual.width, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(images).pooled)


@torch.no_grad()
def predict(model: nn.Module, loader, multiclass: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities, labels and the mean loss over ``loader``."""
    device = next(model.parameters()).device
    logits, labels = [], []
    for batch in loader:
        logits.append(model(batch["images"].to(device)).float().cpu())
        labels.append(batch["labels"])
    logits, labels = torch.cat(logits), torch.cat(labels)
    probabilities = logits.softmax(1) if multiclass else logits.sigmoid()
    return probabilities.numpy(), labels.numpy(), float(classification_loss(logits, labels, multiclass))


def _has_labels(ctx: EvalContext) -> str | None:
    return None if ctx.manifest.finding_names else "no record has a label"


@register_task("finetune", options=FinetuneOptions, title="fine-tuning",
               context=("valid_split", "seeds", "fractions", "fractions_dir"),
               help="the whole image tower and a linear head, at label fractions (MGLL's protocol)",
               available=_has_labels, tables=fraction_report("fine-tuning", CLASSIFICATION_COLUMNS),
               console=fraction_console("fine-tuning", ["auroc", "ap", "f1", "accuracy"]),
               headline=lambda metrics: fraction_headline(metrics, "auroc"), scores=True)
def finetune_task(ctx: EvalContext, options: FinetuneOptions) -> TaskResult:
    """Fine-tune the image tower and a linear head per label fraction and seed; the metrics of the
    linear probe on the context's split, with their mean and standard deviation over seeds. The per-image
    scores are those of the largest fraction's first seed."""
    manifest, split, encoder, batch_size = ctx.manifest, ctx.split, ctx.encoder, options.batch_size
    for s in ("train", split):
        require_split(manifest, s, "fine-tuning")
    names = require_findings(manifest, "fine-tuning")
    result = TaskResult({**options.model_dump(mode="json"), "optimizer": "AdamW",
                         "augmentation": "pretrain_transform"}, {})

    train_set = image_dataset(manifest, "train", pretrain_transform(encoder.preprocess))
    test_set = image_dataset(manifest, split, encoder.transform)
    test_loader = image_loader(test_set, batch_size, workers=ctx.workers)
    valid_loader = None
    if ctx.has_images(ctx.valid_split):
        valid_loader = image_loader(image_dataset(manifest, ctx.valid_split, encoder.transform), batch_size,
                                    workers=ctx.workers)
    else:
        result.warn(f"split '{ctx.valid_split}' has no images: every epoch runs, the last weights are scored, "
                    "F1 uses the threshold 0.5")
    multiclass = is_multiclass(train_set.labels.numpy())

    runs = []
    for fraction, seed, ids in fraction_plan(manifest, ctx.fractions, ctx.seeds, ctx.fractions_dir):
        records = subset(train_set, ids)
        classifier, fit = _train_classifier(ctx, options, records, valid_loader, len(names), multiclass, seed,
                                            f"finetune {fraction_name(fraction)} seed {seed}")
        scores, labels, _ = predict(classifier, test_loader, multiclass)
        valid_scores, valid_labels = predict(classifier, valid_loader, multiclass)[:2] if valid_loader else (None, None)
        metrics = classification_metrics(scores, labels, names, multiclass, valid_scores, valid_labels, ctx.intervals)
        runs.append({"fraction": fraction, "seed": seed, "n_train": len(records), **fit, "metrics": metrics})
        if fraction == max(ctx.fractions) and result.scores is None:
            result.scores = PerImageScores([r.id for r in test_set.records], names, scores, labels,
                                           f"{fraction_name(fraction)} labels, seed {seed}")
    return finish_classification(result, runs, multiclass, split)


def _train_classifier(ctx: EvalContext, options: FinetuneOptions, records, valid_loader, n_classes: int,
                      multiclass: bool, seed: int, description: str):
    """A copy of the image tower with a linear head, trained on ``records`` with early stopping."""
    torch.manual_seed(seed)
    device, batch_size, select = ctx.device, options.batch_size, options.select
    classifier = ImageClassifier(copy.deepcopy(ctx.encoder.model.visual), n_classes).to(device)
    # drop_last: a lone last sample would give BatchNorm a batch of one
    loader = image_loader(records, min(batch_size, len(records)), shuffle=True, workers=ctx.workers, seed=seed,
                          drop_last=len(records) > batch_size)

    def batch_loss(batch):
        return classification_loss(classifier(batch["images"].to(device)), batch["labels"].to(device), multiclass)

    def validate():
        probabilities, labels, loss = predict(classifier, valid_loader, multiclass)
        return loss if select == "loss" else validation_score(select, probabilities, labels, multiclass)

    fit = fit_with_early_stopping(classifier, classifier.parameters(), loader, batch_loss,
                                  validate if valid_loader else None, options.epochs, options.patience, options.lr,
                                  options.weight_decay, description, maximize=higher_is_better(select),
                                  schedule=options.schedule, warmup_epochs=options.warmup_epochs)
    return classifier, fit


def finetune(checkpoint: str, data, *, out=None, encoder=None, **kwargs) -> dict:
    """``evaluate("finetune", ...)``: ``kwargs`` are the context's fields and ``FinetuneOptions``'."""
    return evaluate("finetune", checkpoint, data, out=out, encoder=encoder, **kwargs)
