"""Evaluation metrics against scikit-learn, torchmetrics or a plain loop, on hand-made inputs;
label fractions: determinism, reuse, and the positive/negative rule."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from medgrain.data.manifest import Manifest, Record
from medgrain.evaluation.fractions import draw_fraction, fraction_path, load_or_draw_fraction
from medgrain.evaluation.metrics import (
    dice_per_image,
    f1_thresholds,
    multiclass_metrics,
    multilabel_metrics,
    recall_metrics,
    retrieval_ranks,
    summarise_runs,
)

NAMES = ["atelectasis", "effusion", "nodule"]


def _multilabel_inputs(seed=0, n=40):
    g = np.random.default_rng(seed)
    targets = g.random((n, 3)) < 0.4
    scores = np.clip(targets * 0.3 + g.random((n, 3)) * 0.7, 0, 1)
    return scores, targets


def test_multilabel_matches_sklearn():
    scores, targets = _multilabel_inputs()
    out = multilabel_metrics(scores, targets, NAMES)
    for c, name in enumerate(NAMES):
        assert out["per_class"][name]["auroc"] == pytest.approx(roc_auc_score(targets[:, c], scores[:, c]))
        assert out["per_class"][name]["ap"] == pytest.approx(average_precision_score(targets[:, c], scores[:, c]))
    assert out["macro"]["auroc"] == pytest.approx(roc_auc_score(targets, scores, average="macro"))
    assert out["macro"]["ap"] == pytest.approx(average_precision_score(targets, scores, average="macro"))
    assert out["macro"]["f1"] == pytest.approx(f1_score(targets, scores >= 0.5, average="macro"))
    assert out["excluded"] == {}


def test_f1_at_the_threshold_chosen_on_validation():
    valid_scores, valid_targets = _multilabel_inputs(seed=1)
    thresholds = f1_thresholds(valid_scores, valid_targets)
    for c in range(3):  # the chosen threshold is at least as good as every candidate cut
        best = f1_score(valid_targets[:, c], valid_scores[:, c] >= thresholds[c])
        for cut in np.unique(valid_scores[:, c]):
            assert best >= f1_score(valid_targets[:, c], valid_scores[:, c] >= cut) - 1e-12
    test_scores, test_targets = _multilabel_inputs(seed=2)
    out = multilabel_metrics(test_scores, test_targets, NAMES, thresholds)
    expected = f1_score(test_targets, test_scores >= thresholds[None, :], average=None)
    assert [out["per_class"][n]["f1"] for n in NAMES] == pytest.approx(expected)
    accuracy = ((test_scores >= thresholds) == test_targets).mean(0)
    assert [out["per_class"][n]["accuracy"] for n in NAMES] == pytest.approx(accuracy)


def test_class_without_positives_is_named_and_left_out_of_the_macro_mean():
    scores, targets = _multilabel_inputs()
    targets[:, 2] = False
    out = multilabel_metrics(scores, targets, NAMES)
    assert out["per_class"]["nodule"]["auroc"] is None
    assert out["excluded"] == {"nodule": "no positives"}
    assert out["macro"]["auroc"] == pytest.approx(roc_auc_score(targets[:, :2], scores[:, :2], average="macro"))
    assert f1_thresholds(scores, targets)[2] == 0.5
    with pytest.raises(ValueError, match="empty"):
        multilabel_metrics(scores[:0], targets[:0], NAMES)


def test_multiclass_matches_sklearn():
    g = np.random.default_rng(3)
    target = g.integers(0, 3, 50)
    logits = g.normal(size=(50, 3)) + np.eye(3)[target]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    out = multiclass_metrics(probabilities, target, NAMES)
    assert out["macro"]["accuracy"] == pytest.approx((probabilities.argmax(1) == target).mean())
    assert out["macro"]["auroc"] == pytest.approx(roc_auc_score(target, probabilities, multi_class="ovr"))
    assert out["macro"]["f1"] == pytest.approx(f1_score(target, probabilities.argmax(1), average="macro"))


def _loop_ranks(similarity, query_keys, gallery_keys):
    ranks = []
    for q in range(similarity.shape[0]):
        order = torch.argsort(similarity[q], descending=True)
        ranks.append(next(i + 1 for i, g in enumerate(order.tolist()) if gallery_keys[g] == query_keys[q]))
    return torch.tensor(ranks)


def test_recall_at_k_with_duplicate_texts_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(0, 6, (30,), generator=g)  # 30 records sharing 6 texts: many duplicates
    similarity = torch.randn(30, 30, generator=g)
    ranks = retrieval_ranks(similarity, keys, keys)
    assert torch.equal(ranks, _loop_ranks(similarity, keys, keys))
    assert torch.equal(retrieval_ranks(similarity.T, keys, keys, chunk=7), _loop_ranks(similarity.T, keys, keys))
    out = recall_metrics(ranks)
    for k in (1, 5, 10):
        assert out[f"R@{k}"] == pytest.approx((ranks <= k).float().mean().item())
    assert out["median_rank"] == pytest.approx(float(np.median(ranks.numpy())))


def test_retrieved_duplicate_is_a_hit_and_ties_count_against():
    keys = torch.tensor([7, 7, 8])
    similarity = torch.tensor([[0.1, 0.9, 0.5], [0.9, 0.1, 0.5], [0.2, 0.2, 0.3]])
    assert retrieval_ranks(similarity, keys, keys).tolist() == [1, 1, 1]  # the other "7" is a hit
    collapsed = torch.ones(3, 3)
    assert retrieval_ranks(collapsed, keys, keys).tolist() == [2, 2, 3]


def test_dice_per_image_with_empty_cases():
    target = torch.zeros(4, 8, 8, dtype=torch.bool)
    predicted = torch.zeros_like(target)
    target[0, :4], predicted[0, :2] = True, True        # 2*16 / (32+16)
    predicted[1, 0, 0] = True                           # empty truth, a false positive: 0
    target[2, 0, 0] = True                              # missed: 0
    dice = dice_per_image(predicted, target)            # image 3 empty and predicted empty: 1
    assert dice.tolist() == pytest.approx([2 * 16 / 48, 0.0, 0.0, 1.0])


def test_detection_map_over_iou_040_to_075():
    pytest.importorskip("pycocotools", reason="torchmetrics' COCO mAP needs pycocotools")
    from medgrain.evaluation.metrics import detection_map

    # One prediction at IoU 0.6 with its box: a hit at thresholds 0.40..0.60 (5 of 8), a miss above.
    predictions = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]),
                    "labels": torch.tensor([0])}]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 6.0]]), "labels": torch.tensor([0])}]
    out = detection_map(predictions, targets)
    assert out["map_40_75"] == pytest.approx(5 / 8)
    assert out["map_50"] == pytest.approx(1.0) and out["map_75"] == pytest.approx(0.0)
    assert out["map_coco"] == pytest.approx(3 / 10)  # hits at 0.50, 0.55, 0.60 of 0.50..0.95


def test_summarise_runs_mean_and_spread():
    runs = [{"macro": {"auroc": 0.6, "f1": None}}, {"macro": {"auroc": 0.8, "f1": 0.5}}]
    out = summarise_runs(runs)
    assert out["macro"]["auroc"]["mean"] == pytest.approx(0.7)
    assert out["macro"]["auroc"]["std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert out["macro"]["f1"] == {"mean": 0.5, "std": 0.0, "values": [None, 0.5]}


# ------------------------------------------------------------------------------------------- fractions


def _manifest(tmp_path, n=200):
    g = np.random.default_rng(0)
    records = []
    for i in range(n):
        labels = [name for name in NAMES if g.random() < (0.02 if name == "nodule" else 0.3)]
        records.append(Record(id=f"r{i:03d}", image=f"{i}.png", split="train" if i < 150 else "test", labels=labels))
    path = tmp_path / "manifest.jsonl"
    path.write_text("")
    return Manifest(path=path, records=records)


def test_fraction_is_written_once_and_reused(tmp_path):
    manifest = _manifest(tmp_path)
    first = load_or_draw_fraction(manifest, "train", 0.1, seed=0)
    path = fraction_path(manifest, "train", 0.1, 0)
    assert path == tmp_path / "fractions" / "train_0.1_seed0.txt" and path.is_file()
    written = path.read_text()
    assert load_or_draw_fraction(manifest, "train", 0.1, seed=0) == first
    assert path.read_text() == written
    path.write_text("# edited by hand\nr001\nr002\n")  # the file, not the generator, is the truth
    assert load_or_draw_fraction(manifest, "train", 0.1, seed=0) == ["r001", "r002"]
    path.write_text("r999\n")
    with pytest.raises(ValueError, match="not in split 'train'"):
        load_or_draw_fraction(manifest, "train", 0.1, seed=0)
    assert len(load_or_draw_fraction(manifest, "train", 1.0, seed=0)) == 150


def test_fraction_draw_is_deterministic_per_seed_and_keeps_both_classes(tmp_path):
    manifest = _manifest(tmp_path)
    ids = [r.id for r in manifest.split("train")]
    labels = np.array([[n in r.labels for n in NAMES] for r in manifest.split("train")])
    a = draw_fraction(ids, labels, 0.01, seed=0)
    assert a == draw_fraction(ids, labels, 0.01, seed=0)
    assert a != draw_fraction(ids, labels, 0.01, seed=1)
    chosen = labels[[ids.index(i) for i in a]]
    assert chosen.any(0).all() and (~chosen).any(0).all()  # a positive and a negative of every finding
    assert len(draw_fraction(ids, labels, 0.1, seed=0)) == 15
    other = tmp_path / "elsewhere"
    assert load_or_draw_fraction(manifest, "train", 0.1, 3, directory=other) == draw_fraction(ids, labels, 0.1, 3)
    assert (other / "train_0.1_seed3.txt").is_file()


def test_adamw_linear_probe_learns_and_stops_early():
    """MGCA's probe: a Linear layer with AdamW separates separable features and keeps its best epoch."""
    import numpy as np

    from medgrain.evaluation.linear_probe import fit_linear_adamw

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0], axis=1).astype(np.float64)  # multi-label
    train, valid, test = slice(0, 200), slice(200, 250), slice(250, 300)
    kwargs = dict(epochs=40, patience=5, lr=5e-2, weight_decay=1e-6, batch_size=48, seed=0)
    predict, fit = fit_linear_adamw(x[train], y[train], False, (x[valid], y[valid]), **kwargs)
    p = predict(x[test])
    assert p.shape == (50, 2) and np.all((p > 0) & (p < 1))
    assert ((p > 0.5) == y[test].astype(bool)).mean() > 0.9
    assert fit["best_valid"] == min(fit["valid_history"]) and fit["best_epoch"] <= fit["epochs_run"]
    again, _ = fit_linear_adamw(x[train], y[train], False, (x[valid], y[valid]), **kwargs)
    assert np.array_equal(again(x[test]), p)  # seeded: the same run twice
    # multi-class: softmax rows
    labels = np.eye(3)[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)]
    predict, fit = fit_linear_adamw(x[train], labels[train], True, None, **{**kwargs, "epochs": 5})
    assert fit["epochs_run"] == 5 and fit["best_epoch"] is None
    np.testing.assert_allclose(predict(x[test]).sum(1), 1.0, rtol=1e-6)


def test_validation_scores_match_loops_and_sklearn():
    """The scores that pick C or the epoch, against a loop over samples and entries (and sklearn)."""
    import math

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from medgrain.evaluation.fitting import validation_score

    rng = np.random.default_rng(3)
    p = rng.uniform(0.01, 0.99, size=(40, 3))
    y = (rng.uniform(size=(40, 3)) > 0.6).astype(float)
    y[:, 2] = 0  # no positive: AUROC undefined there, left out of the mean
    bce = -sum(y[i, k] * math.log(p[i, k]) + (1 - y[i, k]) * math.log(1 - p[i, k])
               for i in range(40) for k in range(3)) / 120
    acc = sum((p[i, k] > 0.5) == (y[i, k] == 1) for i in range(40) for k in range(3)) / 120
    auroc = (roc_auc_score(y[:, 0], p[:, 0]) + roc_auc_score(y[:, 1], p[:, 1])) / 2
    assert math.isclose(validation_score("loss", p, y, False), bce, rel_tol=1e-9)
    assert math.isclose(validation_score("accuracy", p, y, False), acc)
    assert math.isclose(validation_score("auroc", p, y, False), auroc)

    q = rng.dirichlet(np.ones(4), size=30)
    target = rng.integers(0, 4, size=30)
    onehot = np.eye(4)[target]
    ce = -sum(math.log(q[i, target[i]]) for i in range(30)) / 30
    hits = sum(int(np.argmax(q[i]) == target[i]) for i in range(30)) / 30
    assert math.isclose(validation_score("loss", q, onehot, True), ce, rel_tol=1e-9)
    assert math.isclose(validation_score("accuracy", q, onehot, True), hits)
    with pytest.raises(ValueError, match="select must be one of"):
        validation_score("f1", q, onehot, True)


def test_adamw_probe_selected_by_accuracy_keeps_the_most_accurate_epoch():
    import numpy as np

    from medgrain.evaluation.linear_probe import fit_linear_adamw

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0], axis=1).astype(np.float64)
    kwargs = dict(epochs=12, patience=3, lr=5e-2, weight_decay=1e-6, batch_size=48, seed=0, select="accuracy")
    predict, fit = fit_linear_adamw(x[:200], y[:200], False, (x[200:250], y[200:250]), **kwargs)
    history = fit["valid_history"]
    assert all(0 <= a <= 1 for a in history) and fit["best_valid"] == max(history)
    assert history.index(max(history)) + 1 == fit["best_epoch"]  # the first epoch that reached it
    restored = ((predict(x[200:250]) > 0.5) == (y[200:250] > 0.5)).mean()
    assert restored == fit["best_valid"]  # the weights kept are that epoch's


def test_cosine_schedule_of_the_downstream_fits_matches_the_formula(monkeypatch):
    """schedule="cosine": per iteration, linear warm-up over warmup_epochs, then a half cosine to 0 at the
    end of the last epoch; the learning rate each step used, against the formula written out."""
    import math

    from medgrain.evaluation import fitting as common

    captured = []
    real_adamw = torch.optim.AdamW
    monkeypatch.setattr(common.torch.optim, "AdamW", lambda *a, **k: captured.append(real_adamw(*a, **k)) or captured[-1])
    layer = torch.nn.Linear(2, 1)
    batches = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(5)]  # 5 iterations per epoch
    seen = []

    def batch_loss(batch):
        seen.append(captured[0].param_groups[0]["lr"])
        return torch.nn.functional.mse_loss(layer(batch[0]), batch[1])

    common.fit_with_early_stopping(layer, layer.parameters(), batches, batch_loss, None, epochs=4, patience=1,
                                   lr=0.1, weight_decay=0.0, description="t", schedule="cosine", warmup_epochs=1)
    total, warmup = 20, 5
    expected = []
    for step in range(total):
        if step < warmup:
            expected.append(0.1 * (step + 1) / warmup)
        else:
            expected.append(0.1 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))))
    assert len(seen) == total and all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(seen, expected))

    seen.clear()
    captured.clear()
    common.fit_with_early_stopping(layer, layer.parameters(), batches, batch_loss, None, epochs=2, patience=1,
                                   lr=0.1, weight_decay=0.0, description="t")
    assert seen == [0.1] * 10  # constant: the default
    with pytest.raises(ValueError, match="schedule must be one of"):
        common.fit_with_early_stopping(layer, layer.parameters(), batches, batch_loss, None, epochs=1, patience=1,
                                       lr=0.1, weight_decay=0.0, description="t", schedule="step")
