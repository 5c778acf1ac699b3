"""Linear probe: a linear classifier on frozen image features, at label fractions of the train split.

The features are the image tower's pooled output (MGCA and MGLL probe the backbone, not the
projection head), extracted once and cached. Two solvers:

- ``"lbfgs"`` (default): scikit-learn's L-BFGS logistic regression on standardised features (the
  CLIP paper's probe), fitted to convergence, deterministically, with the L2 strength chosen on the
  validation split, so the number measures the features rather than an optimiser's schedule;
- ``"adamw"``: MGCA's protocol (research/mgca.md 4.1; MGLL trains the same Linear layer): one Linear
  layer on the raw features, AdamW (lr 5e-4, weight decay 1e-6), batch 48, at most 50 epochs, early
  stopping on the validation loss (patience 10), the test split scored with the best weights. Use it
  to compare with the papers' tables; ``select="accuracy"`` picks the epoch by MGLL's rule instead.
"""

from __future__ import annotations

import warnings as py_warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from medgrain.evaluation.common import (
    SELECT_CRITERIA,
    Result,
    classification_loss,
    finish_classification,
    fit_with_early_stopping,
    higher_is_better,
    is_multiclass,
    load_encoder,
    note,
    open_manifest,
    progress,
    require_findings,
    require_split,
    validation_score,
)
from medgrain.evaluation.features import extract_features
from medgrain.evaluation.fractions import FRACTIONS, fraction_name, fraction_plan
from medgrain.evaluation.metrics import classification_metrics

C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength; 1.0 when there is no validation split
SOLVERS = ("lbfgs", "adamw")
# MGCA's linear classifier (research/mgca.md 4.1): used by solver="adamw".
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


def linear_probe(checkpoint: str, data, *, model: str = "tiny", fractions=FRACTIONS, seeds=(0, 1, 2),
                 solver: str = "lbfgs", c_grid=None, max_iter: int | None = None, epochs: int | None = None,
                 patience: int | None = None, lr: float | None = None, weight_decay: float | None = None,
                 probe_batch_size: int | None = None, select: str | None = None, split: str = "test",
                 valid_split: str = "valid", fractions_dir=None, batch_size: int = 64, workers: int = 0, cache_dir=None, device=None,
                 imagenet_weights: str | None = None, out=None, encoder=None) -> dict:
    """A linear classifier on frozen backbone features for each label fraction and seed; AUROC, AP,
    F1 and accuracy on ``split``, their mean and standard deviation over seeds.

    ``solver="lbfgs"`` takes ``c_grid`` and ``max_iter``; ``solver="adamw"`` takes ``epochs``, ``patience``,
    ``lr``, ``weight_decay`` and ``probe_batch_size`` (MGCA's values by default). ``select`` is what the
    validation split picks by (``validation_score``): C for lbfgs (default ``auroc``), the epoch for
    adamw (default ``loss``, MGCA's rule; ``accuracy`` is MGLL's). ``batch_size`` is the feature
    extraction's."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    select = select or ("auroc" if solver == "lbfgs" else "loss")
    if select not in SELECT_CRITERIA:
        raise ValueError(f"select must be one of {SELECT_CRITERIA}, got {select!r}")
    adamw_given = {k: v for k, v in {"epochs": epochs, "patience": patience, "lr": lr, "weight_decay": weight_decay,
                                    "probe_batch_size": probe_batch_size}.items() if v is not None}
    lbfgs_given = {k: v for k, v in {"c_grid": c_grid, "max_iter": max_iter}.items() if v is not None}
    wrong = adamw_given if solver == "lbfgs" else lbfgs_given
    if wrong:
        raise ValueError(f"linear probe: {', '.join(sorted(wrong))} do not apply to solver={solver!r} "
                         f"(lbfgs takes c_grid, max_iter; adamw takes {', '.join(ADAMW_DEFAULTS)})")
    c_grid = tuple(c_grid) if c_grid is not None else C_GRID
    max_iter = max_iter if max_iter is not None else 1000
    adamw = {**ADAMW_DEFAULTS, **adamw_given}
    manifest = open_manifest(data)
    for s in ("train", split):
        require_split(manifest, s, "the linear probe")
    names = require_findings(manifest, "the linear probe")
    seeds = list(seeds)
    encoder = encoder or load_encoder(checkpoint, model, seeds[0], device, imagenet_weights)
    solver_options = {"c_grid": list(c_grid), "max_iter": max_iter} if solver == "lbfgs" else adamw
    options = {"model": model, "fractions": [fraction_name(f) for f in fractions], "seeds": seeds,
               "solver": solver, **solver_options, "select": select, "split": split, "valid_split": valid_split,
               "features": "backbone (pooled image tower output)"}
    result = Result("linear-probe", encoder, manifest, options, seeds)

    def features(s):
        return extract_features(encoder, manifest, s, "backbone", batch_size, workers, cache_dir)

    train, test = features("train"), features(split)
    valid = features(valid_split) if any(r.image for r in manifest.split(valid_split)) else None
    if valid is None:
        what = "C = 1.0" if solver == "lbfgs" else "every epoch runs, the last weights are scored"
        note(f"split '{valid_split}' has no images: {what}, F1 at threshold 0.5", result.warnings)
    multiclass = is_multiclass(train.labels)
    row = {record_id: i for i, record_id in enumerate(train.ids)}

    runs = []
    plan = fraction_plan(manifest, fractions, seeds, fractions_dir, full_once=True)
    for fraction, seed, ids in progress(plan, "linear probe", total=len(plan)):
        rows = np.array([row[i] for i in ids])
        x, y = train.features[rows], train.labels[rows]
        if solver == "adamw":
            predict, fit = fit_linear_adamw(
                x, y, multiclass, (valid.features, valid.labels) if valid is not None else None,
                epochs=adamw["epochs"], patience=adamw["patience"], lr=adamw["lr"],
                weight_decay=adamw["weight_decay"], batch_size=adamw["probe_batch_size"], seed=seed,
                select=select, description=f"linear probe {fraction_name(fraction)} seed {seed}")
            metrics = classification_metrics(
                predict(test.features), test.labels, names, multiclass,
                predict(valid.features) if valid is not None else None, valid.labels if valid is not None else None)
            runs.append({"fraction": fraction, "seed": seed, "n_train": len(ids), **fit, "metrics": metrics})
            continue
        scaler = StandardScaler().fit(x)  # L-BFGS converges far faster on standardised features
        candidates = c_grid if valid is not None else (1.0,)
        fitted = {c: fit_logistic(scaler.transform(x), y, multiclass, c, max_iter) for c in candidates}
        valid_scores = {c: p(scaler.transform(valid.features)) for c, p in fitted.items()} if valid is not None else {}
        sign = -1.0 if higher_is_better(select) else 1.0
        # Smallest C among the best: the strongest regularisation that does as well.
        best = (min(candidates, key=lambda c: (sign * validation_score(select, valid_scores[c], valid.labels, multiclass), c))
                if valid is not None else 1.0)
        metrics = classification_metrics(
            fitted[best](scaler.transform(test.features)), test.labels, names, multiclass,
            valid_scores.get(best), valid.labels if valid is not None else None)
        runs.append({"fraction": fraction, "seed": seed, "n_train": len(ids), "C": best, "metrics": metrics})

    return finish_classification(result, runs, multiclass, manifest, split, "linear probe", out)
