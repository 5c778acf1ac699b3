"""Linear probe: a linear classifier on frozen image features, at label fractions of the train split.

The features are the image tower's pooled output (MGCA and MGLL probe the backbone, not the
projection head), extracted once and cached. Two solvers:

- ``"lbfgs"`` (default): scikit-learn's L-BFGS logistic regression on standardised features (the
  CLIP paper's probe), fitted to convergence, deterministically, with the L2 strength chosen on the
  validation split, so the number measures the features rather than an optimiser's schedule;
- ``"adamw"``: MGCA's protocol (Wang et al., NeurIPS 2022, arXiv:2210.06044, its code's ``mgca_finetuner.py``; MGLL trains the same
  Linear layer): one Linear
  layer on the raw features, AdamW (lr 5e-4, weight decay 1e-6), batch 48, at most 50 epochs, early
  stopping on the validation loss (patience 10), the test split scored with the best weights. Use it
  to compare with the papers' tables; ``select="accuracy"`` picks the epoch by MGLL's rule instead.
"""

from __future__ import annotations

import warnings as py_warnings
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from medgrain.evaluation.context import EvalContext
from medgrain.evaluation.data import is_multiclass, require_findings, require_split
from medgrain.evaluation.features import extract_features
from medgrain.evaluation.fitting import (
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
from medgrain.evaluation.progress import progress
from medgrain.evaluation.registry import evaluate, register_task
from medgrain.evaluation.results import PerImageScores, TaskResult, finish_classification

C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength; 1.0 when there is no validation split
SOLVERS = ("lbfgs", "adamw")
# MGCA's linear classifier (its code's ``mgca_finetuner.py``): used by solver="adamw".
ADAMW_DEFAULTS = {"epochs": 50, "patience": 10, "lr": 5e-4, "weight_decay": 1e-6, "probe_batch_size": 48}


def fit_logistic(x: np.ndarray, y: np.ndarray, multiclass: bool, c: float, max_iter: int) -> callable:
    """Fit and return ``predict(x) -> probabilities (N, C)``. Multi-label: one-vs-rest, one binary
    model per finding; a finding constant in the training data predicts its constant prior."""
    with py_warnings.catch_warnings():
        py_warnings.simplefilter("ignore", ConvergenceWarning)
        if multiclass:
            target = y.argmax(1)
            model = LogisticRegression(C=c, max_iter=max_iter).fit(x, target) if len(set(target)) > 1 else None
            columns = model.classes_ if model is not None else np.unique(target)

            def predict(z):
                out = np.zeros((len(z), y.shape[1]))
                out[:, columns] = model.predict_proba(z) if model is not None else 1.0
                return out

            return predict
        models = [LogisticRegression(C=c, max_iter=max_iter).fit(x, y[:, k]) if 0 < y[:, k].sum() < len(y)
                  else float(y[:, k].mean()) for k in range(y.shape[1])]

    def predict(z):
        return np.stack([m.predict_proba(z)[:, 1] if not isinstance(m, float) else np.full(len(z), m)
                         for m in models], axis=1)

    return predict


class _ShuffledBatches:
    """Mini-batches of (features, labels) in a new seeded order each epoch: tensor slicing, no collate."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            yield self.x[rows], self.y[rows]


def fit_linear_adamw(x: np.ndarray, y: np.ndarray, multiclass: bool, valid: tuple[np.ndarray, np.ndarray] | None,
                     *, epochs: int, patience: int, lr: float, weight_decay: float, batch_size: int, seed: int,
                     select: str = "loss", description: str = "linear probe") -> tuple[callable, dict]:
    """Train ``nn.Linear(D, C)`` with AdamW on features ``x`` (N, D) and one-hot or multi-hot ``y`` (N, C);
    early stopping on the validation score ``select`` (see ``validation_score``) when ``valid`` is
    given. Returns ``predict(x) -> probabilities`` (softmax or sigmoid) and the fit's record (epochs
    run, best epoch, validation scores)."""
    torch.manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], y.shape[1])
    features, labels = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    batches = _ShuffledBatches(features, labels, batch_size, seed)

    def batch_loss(batch):
        return classification_loss(layer(batch[0]), batch[1], multiclass)

    validate = None
    if valid is not None:
        valid_x, valid_y = (torch.as_tensor(a, dtype=torch.float32) for a in valid)

        @torch.no_grad()
        def validate():
            logits = layer(valid_x)
            if select == "loss":
                return float(classification_loss(logits, valid_y, multiclass))
            probabilities = logits.softmax(1) if multiclass else logits.sigmoid()
            return validation_score(select, probabilities.numpy(), valid_y.numpy(), multiclass)

    fit = fit_with_early_stopping(layer, layer.parameters(), batches, batch_loss, validate, epochs, patience,
                                  lr, weight_decay, description, maximize=higher_is_better(select))

    @torch.no_grad()
    def predict(z: np.ndarray) -> np.ndarray:
        logits = layer(torch.as_tensor(z, dtype=torch.float32))
        return (logits.softmax(1) if multiclass else logits.sigmoid()).numpy().astype(np.float64)

    return predict, fit


class LinearProbeOptions(BaseModel):
    """``solver="lbfgs"`` takes ``c_grid`` and ``max_iter``; ``solver="adamw"`` takes ``epochs``, ``patience``,
    ``lr``, ``weight_decay`` and ``probe_batch_size`` (MGCA's values by default)."""

    model_config = ConfigDict(extra="forbid")
    solver: Literal[SOLVERS] = Field("lbfgs", description="scikit-learn L-BFGS (default) or MGCA's AdamW Linear layer")
    c_grid: tuple[float, ...] | None = Field(None, description=f"lbfgs: inverse L2 strengths tried (default {C_GRID})")
    max_iter: int | None = Field(None, description="lbfgs: iterations (default 1000)")
    epochs: int | None = Field(None, description=f"adamw: at most this many epochs ({ADAMW_DEFAULTS['epochs']})")
    patience: int | None = Field(None, description=f"adamw: early-stopping patience ({ADAMW_DEFAULTS['patience']})")
    lr: float | None = Field(None, description=f"adamw: learning rate ({ADAMW_DEFAULTS['lr']})")
    weight_decay: float | None = Field(None, description=f"adamw: weight decay ({ADAMW_DEFAULTS['weight_decay']})")
    probe_batch_size: int | None = Field(None, description="adamw: training batch size "
                                                           f"({ADAMW_DEFAULTS['probe_batch_size']})")
    select: Literal[SELECT_CRITERIA] | None = Field(
        None, description="what the validation split picks by: C for lbfgs (default auroc), the epoch for adamw "
                          "(default loss, MGCA's rule; accuracy is MGLL's)")
    batch_size: int = Field(64, description="feature extraction batch size")

    @model_validator(mode="after")
    def _solver_options(self):
        adamw = {k for k in ADAMW_DEFAULTS if getattr(self, k) is not None}
        lbfgs = {k for k in ("c_grid", "max_iter") if getattr(self, k) is not None}
        wrong = adamw if self.solver == "lbfgs" else lbfgs
        if wrong:
            raise ValueError(f"linear probe: {', '.join(sorted(wrong))} do not apply to solver={self.solver!r} "
                             f"(lbfgs takes c_grid, max_iter; adamw takes {', '.join(ADAMW_DEFAULTS)})")
        return self

    def resolved(self) -> dict[str, Any]:
        """Every option the probe runs with, defaults filled in (what the result records)."""
        if self.solver == "lbfgs":
            solver = {"c_grid": list(self.c_grid or C_GRID), "max_iter": self.max_iter or 1000}
        else:
            solver = {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in ADAMW_DEFAULTS.items()}
        select = self.select or ("auroc" if self.solver == "lbfgs" else "loss")
        return {"solver": self.solver, **solver, "select": select, "batch_size": self.batch_size,
                "features": "backbone (pooled image tower output)"}


def _has_labels(ctx: EvalContext) -> str | None:
    return None if ctx.manifest.finding_names else "no record has a label"


def _fit_adamw(train_x, train_y, test, valid, names, multiclass, opts, seed, description, intervals=None):
    predict, fit = fit_linear_adamw(
        train_x, train_y, multiclass, (valid.features, valid.labels) if valid is not None else None,
        epochs=opts["epochs"], patience=opts["patience"], lr=opts["lr"], weight_decay=opts["weight_decay"],
        batch_size=opts["probe_batch_size"], seed=seed, select=opts["select"], description=description)
    scores = predict(test.features)
    metrics = classification_metrics(scores, test.labels, names, multiclass,
                                     predict(valid.features) if valid is not None else None,
                                     valid.labels if valid is not None else None, intervals)
    return scores, {**fit, "metrics": metrics}


def _fit_lbfgs(train_x, train_y, test, valid, names, multiclass, opts, intervals=None):
    scaler = StandardScaler().fit(train_x)  # L-BFGS converges far faster on standardised features
    candidates = opts["c_grid"] if valid is not None else (1.0,)
    fitted = {c: fit_logistic(scaler.transform(train_x), train_y, multiclass, c, opts["max_iter"]) for c in candidates}
    valid_scores = {c: p(scaler.transform(valid.features)) for c, p in fitted.items()} if valid is not None else {}
    sign = -1.0 if higher_is_better(opts["select"]) else 1.0
    # Smallest C among the best: the strongest regularisation that does as well.
    best = (min(candidates, key=lambda c: (sign * validation_score(opts["select"], valid_scores[c], valid.labels,
                                                                   multiclass), c))
            if valid is not None else 1.0)
    scores = fitted[best](scaler.transform(test.features))
    metrics = classification_metrics(scores, test.labels, names, multiclass, valid_scores.get(best),
                                     valid.labels if valid is not None else None, intervals)
    return scores, {"C": best, "metrics": metrics}


@register_task("linear-probe", options=LinearProbeOptions, title="linear probe",
               context=("valid_split", "seeds", "fractions", "fractions_dir", "cache_dir"),
               help="a linear classifier on frozen backbone features, at label fractions", available=_has_labels,
               tables=fraction_report("linear probe", CLASSIFICATION_COLUMNS),
               console=fraction_console("linear probe", ["auroc", "ap", "f1", "accuracy"]),
               headline=lambda metrics: fraction_headline(metrics, "auroc"), scores=True)
def linear_probe_task(ctx: EvalContext, options: LinearProbeOptions) -> TaskResult:
    """A linear classifier on frozen backbone features for each label fraction and seed; AUROC, AP, F1 and
    accuracy on the context's split, their mean and standard deviation over seeds. The per-image scores
    are those of the largest fraction's first seed."""
    manifest, split = ctx.manifest, ctx.split
    for s in ("train", split):
        require_split(manifest, s, "the linear probe")
    names = require_findings(manifest, "the linear probe")
    opts = options.resolved()
    result = TaskResult(opts, {})

    def features(s):
        return extract_features(ctx.encoder, manifest, s, "backbone", options.batch_size, ctx.workers, ctx.cache_dir)

    train, test = features("train"), features(split)
    valid = features(ctx.valid_split) if ctx.has_images(ctx.valid_split) else None
    if valid is None:
        what = "C = 1.0" if options.solver == "lbfgs" else "every epoch runs, the last weights are scored"
        result.warn(f"split '{ctx.valid_split}' has no images: {what}, F1 at threshold 0.5")
    multiclass = is_multiclass(train.labels)
    row = {record_id: i for i, record_id in enumerate(train.ids)}

    runs = []
    plan = fraction_plan(manifest, ctx.fractions, ctx.seeds, ctx.fractions_dir, full_once=True)
    for fraction, seed, ids in progress(plan, "linear probe", total=len(plan)):
        rows = np.array([row[i] for i in ids])
        x, y = train.features[rows], train.labels[rows]
        if options.solver == "adamw":
            scores, run = _fit_adamw(x, y, test, valid, names, multiclass, opts, seed,
                                     f"linear probe {fraction_name(fraction)} seed {seed}", ctx.intervals)
        else:
            scores, run = _fit_lbfgs(x, y, test, valid, names, multiclass, opts, ctx.intervals)
        runs.append({"fraction": fraction, "seed": seed, "n_train": len(ids), **run})
        if fraction == max(ctx.fractions) and result.scores is None:
            result.scores = PerImageScores(test.ids, names, scores, test.labels,
                                           f"{fraction_name(fraction)} labels, seed {seed}")
    return finish_classification(result, runs, multiclass, split)


def linear_probe(checkpoint: str, data, *, out=None, encoder=None, **kwargs) -> dict:
    """``evaluate("linear-probe", ...)``: ``kwargs`` are the context's fields (seeds, fractions, split,
    valid_split, cache_dir ...) and ``LinearProbeOptions``' (solver, c_grid, select ...)."""
    return evaluate("linear-probe", checkpoint, data, out=out, encoder=encoder, **kwargs)
