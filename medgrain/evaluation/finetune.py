"""Fine-tuning: the whole image tower with a linear head, at label fractions of the train split.

MGLL's protocol (research/mgll.md §4): every weight is trained, BCE-with-logits for multi-label and
cross-entropy for multi-class data, AdamW; here with MGCA's early stopping on the validation loss
(patience 10) and the test split scored once with the best weights. ``select="accuracy"`` picks the
weights by MGLL's rule (best validation accuracy) instead, ``"auroc"`` by the mean AUROC;
``schedule="cosine", warmup_epochs=1`` is MGLL's learning-rate schedule (the default is constant).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from medgrain.data.transforms import pretrain_transform
from medgrain.evaluation.common import (
    SCHEDULES,
    SELECT_CRITERIA,
    Result,
    classification_loss,
    finish_classification,
    fit_with_early_stopping,
    higher_is_better,
    image_dataset,
    image_loader,
    is_multiclass,
    load_encoder,
    note,
    open_manifest,
    require_findings,
    require_split,
    subset,
    validation_score,
)
from medgrain.evaluation.fractions import FRACTIONS, fraction_name, fraction_plan
from medgrain.evaluation.metrics import classification_metrics


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


def finetune(checkpoint: str, data, *, model: str = "tiny", fractions=FRACTIONS, seeds=(0, 1, 2),
             epochs: int = 50, patience: int = 10, lr: float = 1e-4, weight_decay: float = 1e-4,
             batch_size: int = 32, select: str = "loss", schedule: str = "constant", warmup_epochs: float = 0.0,
             split: str = "test", valid_split: str = "valid", fractions_dir=None, workers: int = 0, device=None,
             imagenet_weights: str | None = None, out=None, encoder=None) -> dict:
    """Fine-tune the image tower and a linear head per label fraction and seed; the metrics of the
    linear probe on ``split``, with their mean and standard deviation over seeds."""
    if select not in SELECT_CRITERIA:
        raise ValueError(f"select must be one of {SELECT_CRITERIA}, got {select!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    manifest = open_manifest(data)
    for s in ("train", split):
        require_split(manifest, s, "fine-tuning")
    names = require_findings(manifest, "fine-tuning")
    seeds = list(seeds)
    encoder = encoder or load_encoder(checkpoint, model, seeds[0], device, imagenet_weights)
    options = {"model": model, "fractions": [fraction_name(f) for f in fractions], "seeds": seeds, "epochs": epochs,
               "patience": patience, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size, "select": select,
               "schedule": schedule, "warmup_epochs": warmup_epochs,
               "split": split, "valid_split": valid_split, "optimizer": "AdamW", "augmentation": "pretrain_transform"}
    result = Result("finetune", encoder, manifest, options, seeds)

    train_set = image_dataset(manifest, "train", pretrain_transform(encoder.preprocess))
    test_loader = image_loader(image_dataset(manifest, split, encoder.transform), batch_size, workers=workers)
    valid_loader = None
    if any(r.image for r in manifest.split(valid_split)):
        valid_loader = image_loader(image_dataset(manifest, valid_split, encoder.transform), batch_size, workers=workers)
    else:
        note(f"split '{valid_split}' has no images: every epoch runs, the last weights are scored, "
             "F1 uses the threshold 0.5", result.warnings)
    multiclass = is_multiclass(train_set.labels.numpy())
    device = next(encoder.model.parameters()).device

    runs = []
    for fraction, seed, ids in fraction_plan(manifest, fractions, seeds, fractions_dir):
        torch.manual_seed(seed)
        classifier = ImageClassifier(copy.deepcopy(encoder.model.visual), len(names)).to(device)
        records = subset(train_set, ids)
        # drop_last: a lone last sample would give BatchNorm a batch of one
        loader = image_loader(records, min(batch_size, len(records)), shuffle=True, workers=workers, seed=seed,
                              drop_last=len(records) > batch_size)

        def batch_loss(batch, classifier=classifier):
            return classification_loss(classifier(batch["images"].to(device)), batch["labels"].to(device), multiclass)

        def validate(classifier=classifier):
            probabilities, labels, loss = predict(classifier, valid_loader, multiclass)
            return loss if select == "loss" else validation_score(select, probabilities, labels, multiclass)

        fit = fit_with_early_stopping(classifier, classifier.parameters(), loader, batch_loss,
                                      validate if valid_loader else None, epochs, patience, lr, weight_decay,
                                      f"finetune {fraction_name(fraction)} seed {seed}",
                                      maximize=higher_is_better(select), schedule=schedule,
                                      warmup_epochs=warmup_epochs)
        scores, labels, _ = predict(classifier, test_loader, multiclass)
        valid_scores, valid_labels = predict(classifier, valid_loader, multiclass)[:2] if valid_loader else (None, None)
        metrics = classification_metrics(scores, labels, names, multiclass, valid_scores, valid_labels)
        runs.append({"fraction": fraction, "seed": seed, "n_train": len(records), **fit, "metrics": metrics})

    return finish_classification(result, runs, multiclass, manifest, split, "fine-tuning", out)
