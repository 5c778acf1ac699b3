"""Linear probe: logistic regression on frozen image features, at label fractions of the train split.

The features are the image tower's pooled output (MGCA and MGLL probe the backbone, not the
projection head), extracted once and cached. MGCA and MGLL train a linear layer with AdamW and
early stopping; here scikit-learn's L-BFGS logistic regression (the CLIP paper's probe) fits the
same model class to convergence, deterministically, with the L2 strength chosen on the
validation split, so the number measures the features rather than the optimiser's schedule.
"""

from __future__ import annotations

import warnings as py_warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from medgrain.evaluation.common import (
    Result,
    by_fraction,
    is_multiclass,
    load_encoder,
    note,
    open_manifest,
    print_fraction_table,
    progress,
    require_findings,
    require_split,
    write_result,
)
from medgrain.evaluation.features import extract_features
from medgrain.evaluation.fractions import FRACTIONS, fraction_name, fraction_plan
from medgrain.evaluation.metrics import classification_metrics

C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength; 1.0 when there is no validation split


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


def _valid_auroc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean AUROC over the findings where it is defined: the score that picks C."""
    values = [roc_auc_score(labels[:, k], probabilities[:, k]) for k in range(labels.shape[1])
              if 0 < labels[:, k].sum() < len(labels)]
    return float(np.mean(values)) if values else float("-inf")


def linear_probe(checkpoint: str, data, *, model: str = "tiny", fractions=FRACTIONS, seeds=(0, 1, 2),
                 c_grid=C_GRID, max_iter: int = 1000, split: str = "test", valid_split: str = "valid",
                 fractions_dir=None, batch_size: int = 64, workers: int = 0, cache_dir=None, device=None,
                 imagenet_weights: str | None = None, out=None, encoder=None) -> dict:
    """Logistic regression on frozen backbone features for each label fraction and seed; AUROC, AP,
    F1 and accuracy on ``split``, their mean and standard deviation over seeds."""
    manifest = open_manifest(data)
    for s in ("train", split):
        require_split(manifest, s, "the linear probe")
    names = require_findings(manifest, "the linear probe")
    seeds = list(seeds)
    encoder = encoder or load_encoder(checkpoint, model, seeds[0], device, imagenet_weights)
    options = {"model": model, "fractions": [fraction_name(f) for f in fractions], "seeds": seeds,
               "c_grid": list(c_grid), "max_iter": max_iter, "split": split, "valid_split": valid_split,
               "features": "backbone (pooled image tower output)"}
    result = Result("linear-probe", encoder, manifest, options, seeds)

    def features(s):
        return extract_features(encoder, manifest, s, "backbone", batch_size, workers, cache_dir)

    train, test = features("train"), features(split)
    valid = features(valid_split) if any(r.image for r in manifest.split(valid_split)) else None
    if valid is None:
        note(f"split '{valid_split}' has no images: C = 1.0 and F1 at threshold 0.5", result.warnings)
    multiclass = is_multiclass(train.labels)
    row = {record_id: i for i, record_id in enumerate(train.ids)}

    runs = []
    plan = fraction_plan(manifest, fractions, seeds, fractions_dir, full_once=True)
    for fraction, seed, ids in progress(plan, "linear probe", total=len(plan)):
        rows = np.array([row[i] for i in ids])
        x, y = train.features[rows], train.labels[rows]
        scaler = StandardScaler().fit(x)  # L-BFGS converges far faster on standardised features
        candidates = c_grid if valid is not None else (1.0,)
        fitted = {c: fit_logistic(scaler.transform(x), y, multiclass, c, max_iter) for c in candidates}
        valid_scores = {c: p(scaler.transform(valid.features)) for c, p in fitted.items()} if valid is not None else {}
        # Smallest C among the best: the strongest regularisation that does as well.
        best = max(candidates, key=lambda c: (_valid_auroc(valid_scores[c], valid.labels), -c)) if valid is not None else 1.0
        metrics = classification_metrics(
            fitted[best](scaler.transform(test.features)), test.labels, names, multiclass,
            valid_scores.get(best), valid.labels if valid is not None else None)
        runs.append({"fraction": fraction, "seed": seed, "n_train": len(ids), "C": best, "metrics": metrics})

    result.metrics = {"task_type": "multiclass" if multiclass else "multilabel", "fractions": by_fraction(runs)}
    excluded = {n: r for run in runs for n, r in run["metrics"]["excluded"].items()}
    if excluded:
        note(f"left out of the macro means (undefined on split '{split}'): {excluded}", result.warnings)
    print_fraction_table(f"linear probe on {split}: {manifest.path}", result.metrics["fractions"],
                         ["auroc", "ap", "f1", "accuracy"])
    return write_result(result.to_dict(), out)
