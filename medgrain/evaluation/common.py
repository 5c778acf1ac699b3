"""What every evaluation task shares: the encoder under test (a checkpoint or a baseline), data
loaders over a manifest, progress bars, the result JSON and the printed table."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from torch.utils.data import DataLoader, Subset

from medgrain.data.manifest import SPLITS, Manifest, read_manifest

BASELINES = ("random", "imagenet")


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr)
    # A log file or a pipe gets wide tables, not the 80 columns rich assumes without a terminal.
    return console if console.is_terminal else Console(stderr=stderr, width=160)


# Progress and notes go to stderr, tables to stdout: `medgrain evaluate ... > table.txt` stays clean.
STDERR = _console(stderr=True)
STDOUT = _console(stderr=False)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def progress(iterable: Iterable, description: str, total: int | None = None) -> Iterator:
    """A rich progress bar (stage, count, elapsed, ETA) over ``iterable``."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=STDERR) as bar:
        yield from bar.track(iterable, total=total, description=description)


def note(message: str, warnings: list[str] | None = None) -> None:
    """Tell the user something that changes how to read the result, and keep it in the result JSON."""
    STDERR.print(f"[yellow]note:[/yellow] {message}")
    if warnings is not None:
        warnings.append(message)


# ------------------------------------------------------------------------------------ the encoder


@dataclass
class Encoder:
    """The dual encoder under test and how it was obtained.

    ``checkpoint`` is what the user named (a directory, ``random`` or ``imagenet``); ``key``
    identifies its weights for the feature cache (a content hash for a checkpoint)."""

    model: Any  # medgrain.models.DualEncoder
    tokenizer: Any  # medgrain.data.text.Tokenizer
    preprocess: Any  # medgrain.data.transforms.PreprocessConfig
    config: Any  # medgrain.models.ModelConfig
    checkpoint: str
    key: str

    @property
    def transform(self):
        from medgrain.data.transforms import eval_transform

        return eval_transform(self.preprocess)

    @property
    def is_cnn(self) -> bool:
        from medgrain.models import TimmCNNTower

        return isinstance(self.model.visual, TimmCNNTower)


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_encoder(checkpoint: str | Path, model: str = "tiny", seed: int = 0, device: str | torch.device | None = None,
                 imagenet_weights: str | None = None) -> Encoder:
    """The encoder to evaluate.

    - a checkpoint directory (``save_pretrained``/the trainer's output): ``load_pretrained``;
    - ``random``: preset ``model`` with its random initialisation (seeded by ``seed``);
    - ``imagenet``: preset ``model`` with its image tower's ImageNet weights, from timm's default tag
      (needs the weights in the local hub cache) or from ``imagenet_weights``, a local weights file.
    """
    from medgrain.models import PretrainedUnavailableError, create_model, load_pretrained
    from medgrain.models.factory import CONFIG_NAME, WEIGHTS_NAME

    device = torch.device(device) if device is not None else default_device()
    checkpoint = str(checkpoint)
    if checkpoint not in BASELINES:
        directory = Path(checkpoint)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"checkpoint {directory} is not a medgrain model directory (no {CONFIG_NAME}); "
                f"pass a directory written by save_pretrained or the trainer, or one of {BASELINES}"
            )
        loaded = load_pretrained(directory, device=device)
        key = hashlib.sha256((file_sha256(directory / WEIGHTS_NAME) + file_sha256(directory / CONFIG_NAME))
                             .encode()).hexdigest()
        return Encoder(loaded.model, loaded.tokenizer, loaded.config.preprocess_config(), loaded.config,
                       str(directory), key)

    overrides: dict[str, Any] = {}
    if checkpoint == "imagenet":
        overrides = {"image": {"pretrained": imagenet_weights or "default"}}
    torch.manual_seed(seed)
    try:
        created = create_model(model, **overrides)
    except (PretrainedUnavailableError, RuntimeError, FileNotFoundError) as e:
        if checkpoint != "imagenet":
            raise
        raise RuntimeError(
            f"the imagenet baseline of preset {model!r} needs ImageNet weights for its image tower, which could "
            f"not be loaded: {e}. Pass a local weights file with --imagenet-weights FILE."
        ) from e
    config = created.model.config
    key = hashlib.sha256(json.dumps({"baseline": checkpoint, "seed": seed, "weights": imagenet_weights,
                                     "config": config.model_dump(mode="json"), "torch": torch.__version__},
                                    sort_keys=True).encode()).hexdigest()
    return Encoder(created.model.to(device).eval(), created.tokenizer, created.preprocess, config, checkpoint, key)


# ------------------------------------------------------------------------------------------- data


def open_manifest(data: str | Path | Manifest) -> Manifest:
    return data if isinstance(data, Manifest) else read_manifest(data)


def split_sizes(manifest: Manifest) -> dict[str, int]:
    """Records with an image per split: what an image task can use."""
    return {s: sum(r.image is not None for r in manifest.split(s)) for s in SPLITS}


def require_split(manifest: Manifest, split: str, what: str) -> None:
    if not any(r.image is not None for r in manifest.split(split)):
        raise ValueError(f"{manifest.path}: split '{split}' has no images; {what} needs it")


def require_findings(manifest: Manifest, what: str) -> list[str]:
    """The manifest's finding names; a clear error when no record has a label."""
    names = manifest.finding_names
    if not names:
        raise ValueError(f"{manifest.path}: no record has a label; {what} needs findings")
    return names


def is_multiclass(labels) -> bool:
    """Multi-class data: every record has exactly one label (no record is "normal" with none)."""
    return len(labels) > 0 and bool((labels.sum(1) == 1).all())


def image_dataset(manifest: Manifest, split: str, transform, masks: bool = False, boxes: bool = False):
    """Images and labels (and masks or boxes) of a split; records without an image are left out."""
    from medgrain.data.dataset import ImageTextDataset

    return ImageTextDataset(manifest, split, transform, granularities=[], with_report=False,
                            return_masks=masks, return_boxes=boxes)


def subset(dataset, ids: list[str]) -> Subset:
    """The records of ``dataset`` whose id is in ``ids`` (a label fraction)."""
    wanted = set(ids)
    return Subset(dataset, [i for i, r in enumerate(dataset.records) if r.id in wanted])


def image_loader(dataset, batch_size: int, shuffle: bool = False, workers: int = 0, seed: int = 0,
                 drop_last: bool = False) -> DataLoader:
    from medgrain.data.dataset import Collator

    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      collate_fn=Collator(None, [], with_report=False), drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


# --------------------------------------------------------------------------------------- results


@dataclass
class Result:
    """One evaluation's record: what was run on what, with which options, and every metric."""

    task: str
    encoder: Encoder
    manifest: Manifest
    options: dict[str, Any]
    seed: int | list[int]
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        from medgrain import __version__

        return {
            "task": self.task,
            "checkpoint": self.encoder.checkpoint,
            "checkpoint_key": self.encoder.key,
            "model": self.encoder.config.model_dump(mode="json"),
            "data": str(self.manifest.path.resolve()),
            "splits": split_sizes(self.manifest),
            "options": self.options,
            "seed": self.seed,
            "metrics": self.metrics,
            "warnings": self.warnings,
            "medgrain_version": __version__,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": round(time.time() - self.started, 2),
        }


def write_result(result: dict[str, Any], out: str | Path | None) -> dict[str, Any]:
    """Write the result JSON (strict: a NaN that slipped through is an error, not a silent ``NaN``)."""
    if out is None:
        return result
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, allow_nan=False, default=str)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(out)
    STDERR.print(f"wrote {out}")
    return result


def fmt(value: Any) -> str:
    """A metric for a table: 3 decimals, ``mean ± std`` for summaries, ``-`` when undefined."""
    if value is None:
        return "-"
    if isinstance(value, dict) and "mean" in value:
        return f"{value['mean']:.3f} ± {value['std']:.3f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    STDOUT.print(table)


def per_class_rows(metrics: dict[str, Any], names: list[str], columns: list[str]) -> list[list[Any]]:
    """Table rows: one per class, then the macro mean, for a ``multilabel_metrics``-shaped dict."""
    rows = [[name, *(metrics["per_class"][name].get(c) for c in columns)] for name in names]
    rows.append(["macro", *(metrics["macro"].get(c) for c in columns)])
    return rows


def by_fraction(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Group per-seed runs (each with ``fraction``, ``seed``, ``n_train`` and ``metrics``) by label
    fraction, with the mean and spread over seeds of every macro and per-class metric."""
    from medgrain.evaluation.fractions import fraction_name
    from medgrain.evaluation.metrics import summarise_runs

    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(fraction_name(run["fraction"]), []).append(run)
    return {
        name: {
            "seeds": [r["seed"] for r in group],
            "n_train": [r["n_train"] for r in group],
            "macro": summarise_runs([r["metrics"]["macro"] for r in group]),
            "per_class": summarise_runs([r["metrics"].get("per_class", {}) for r in group]),
            "runs": group,
        }
        for name, group in grouped.items()
    }


def print_fraction_table(title: str, fractions: dict[str, Any], columns: list[str]) -> None:
    print_table(title, ["labels", "n train", *columns],
                [[name, "/".join(map(str, sorted(set(f["n_train"])))), *(f["macro"].get(c) for c in columns)]
                 for name, f in fractions.items()])


def finish_classification(result: Result, runs: list[dict[str, Any]], multiclass: bool, manifest, split: str,
                          title: str, out) -> dict[str, Any]:
    """The end of the linear probe and of fine-tuning: group the runs by fraction, note the findings left
    out of the macro means, print the table and write the result."""
    result.metrics = {"task_type": "multiclass" if multiclass else "multilabel", "fractions": by_fraction(runs)}
    excluded = {n: r for run in runs for n, r in run["metrics"]["excluded"].items()}
    if excluded:
        note(f"left out of the macro means (undefined on split '{split}'): {excluded}", result.warnings)
    print_fraction_table(f"{title} on {split}: {manifest.path}", result.metrics["fractions"],
                         ["auroc", "ap", "f1", "accuracy"])
    return write_result(result.to_dict(), out)


# -------------------------------------------------------------------------------------- training


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, multiclass: bool) -> torch.Tensor:
    """Cross-entropy on the argmax of one-hot labels (multi-class), else BCE-with-logits (multi-label)."""
    if multiclass:
        return torch.nn.functional.cross_entropy(logits, labels.argmax(1))
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)


SCHEDULES = ("constant", "cosine")
# What picks the weights (or C) on the validation split: MGCA's rule is the loss, MGLL's the accuracy.
SELECT_CRITERIA = ("loss", "auroc", "accuracy")


def mean_defined_auroc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean AUROC over the findings where it is defined (both classes present); -inf if none is."""
    from sklearn.metrics import roc_auc_score

    values = [roc_auc_score(labels[:, k], probabilities[:, k]) for k in range(labels.shape[1])
              if 0 < labels[:, k].sum() < len(labels)]
    return float(np.mean(values)) if values else float("-inf")


def validation_score(select: str, probabilities: np.ndarray, labels: np.ndarray, multiclass: bool) -> float:
    """The score ``select`` names, of probabilities (N, C) against one-hot or multi-hot labels (N, C):

    - ``loss``: cross-entropy of the true class (multi-class) or the mean binary cross-entropy over
      every entry (multi-label); lower is better;
    - ``auroc``: ``mean_defined_auroc``; higher is better;
    - ``accuracy``: MGLL's ACC: plain accuracy of the argmax (multi-class), or the accuracy of every
      entry at the threshold 0.5, i.e. per-finding accuracy averaged over findings (multi-label);
      higher is better.
    """
    if select not in SELECT_CRITERIA:
        raise ValueError(f"select must be one of {SELECT_CRITERIA}, got {select!r}")
    p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if select == "auroc":
        return mean_defined_auroc(p, y)
    if multiclass:
        target = y.argmax(1)
        if select == "accuracy":
            return float(np.mean(p.argmax(1) == target))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(p)), target], 1e-12, None))))
    if select == "accuracy":
        return float(np.mean((p > 0.5) == (y > 0.5)))
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def higher_is_better(select: str) -> bool:
    return select != "loss"


def fit_with_early_stopping(model: torch.nn.Module, parameters, train_loader: DataLoader,
                            batch_loss: Callable[[dict[str, Any]], torch.Tensor],
                            validate: Callable[[], float] | None, epochs: int, patience: int, lr: float,
                            weight_decay: float, description: str, maximize: bool = False,
                            schedule: str = "constant", warmup_epochs: float = 0.0) -> dict[str, Any]:
    """AdamW on ``parameters``; after every epoch ``validate()`` (lower is better, or higher with
    ``maximize``) and keep the best weights; stop after ``patience`` epochs without improvement and
    restore the best weights (MGCA's protocol). Without ``validate`` every epoch runs and the last
    weights are kept.

    ``schedule="cosine"``: per iteration, linear warm-up over ``warmup_epochs`` then a half cosine to
    0 at the end of ``epochs`` (MGLL's downstream schedule); ``"constant"`` keeps ``lr`` throughout."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    scheduler = None
    if schedule == "cosine":
        from medgrain.training.optim import warmup_cosine

        per_epoch = len(train_loader)
        total, warmup = epochs * per_epoch, int(round(warmup_epochs * per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
    sign = -1.0 if maximize else 1.0
    best, best_state, best_epoch, since_best, history = float("inf"), None, None, 0, []
    for epoch in progress(range(epochs), description, total=epochs):
        model.train()  # a frozen encoder stays in eval mode: see FrozenEncoder
        for batch in train_loader:
            loss = batch_loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{description}: non-finite training loss {loss.item()} in epoch {epoch}; "
                                         "lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        if validate is None:
            continue
        model.eval()
        score = validate()
        history.append(score)
        if sign * score < best:
            best, best_epoch, since_best = sign * score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            if since_best >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"epochs_run": epoch + 1, "best_epoch": None if best_epoch is None else best_epoch + 1,
            "best_valid": None if best_state is None else sign * best, "valid_history": history}


class FrozenEncoder(torch.nn.Module):
    """A pretrained encoder that is not trained: no gradients, and eval mode whatever the parent's
    mode, so its BatchNorm statistics do not drift (the bug of MGCA's detection and segmentation
    code, research/mgca.md §7 item 17)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        return self.encoder(*args, **kwargs)
