"""medgrain compare: the paired bootstrap of two stored evaluations, on hand-made result files and on
two real zero-shot runs; refusals of results that cannot be paired."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medgrain.cli import main
from medgrain.evaluation.bootstrap import Bootstrap
from medgrain.evaluation.compare import compare_results


def _result(task, ids, scores, labels, names=("a", "b")):
    return {"task": task, "checkpoint": "x", "data": "d",
            "scores": {"ids": ids, "names": list(names), "scores": np.asarray(scores).tolist(),
                       "labels": np.asarray(labels).astype(int).tolist()}}


def test_compare_multilabel_finds_the_better_model_and_pairs_by_id():
    g = np.random.default_rng(0)
    labels = g.random((200, 2)) < 0.4
    strong = labels * 1.5 + g.normal(size=(200, 2))
    weak = labels * 0.2 + g.normal(size=(200, 2))
    ids = [f"i{k}" for k in range(200)]
    order = g.permutation(200)  # B lists the same images in another order
    a = _result("zero-shot", ids, strong, labels)
    b = _result("zero-shot", [ids[k] for k in order], weak[order], labels[order])
    out = compare_results(a, b, Bootstrap(300))
    auroc = out["metrics"]["auroc"]
    expected = np.mean([roc_auc_score(labels[:, c], strong[:, c]) for c in range(2)]) - np.mean(
        [roc_auc_score(labels[:, c], weak[:, c]) for c in range(2)])
    assert auroc["difference"] == pytest.approx(expected) and auroc["difference_ci"][0] > 0
    assert auroc["p_value"] < 0.01 and set(out["metrics"]) == {"auroc", "ap"}
    same = compare_results(a, a, Bootstrap(100))
    assert same["metrics"]["auroc"]["difference"] == 0 and same["metrics"]["auroc"]["p_value"] == 1.0


def test_compare_multiclass_has_accuracy_and_f1():
    g = np.random.default_rng(1)
    target = g.integers(0, 3, 150)
    labels = np.eye(3, dtype=bool)[target]
    a = _result("linear-probe", [str(i) for i in range(150)], labels + g.random((150, 3)), labels, "xyz")
    b = _result("linear-probe", [str(i) for i in range(150)], g.random((150, 3)), labels, "xyz")
    out = compare_results(a, b, Bootstrap(200))["metrics"]
    assert set(out) == {"accuracy", "f1", "auroc", "ap"}
    assert out["accuracy"]["a"] == pytest.approx((np.asarray(a["scores"]["scores"]).argmax(1) == target).mean())
    assert out["accuracy"]["difference_ci"][0] > 0


def test_compare_retrieval_and_segmentation_pair_by_query_and_image():
    ranks_a = {"ids": ["1", "2", "3", "4"], "image_to_text": [1, 1, 3, 9], "text_to_image": [1, 2, 1, 1]}
    ranks_b = {"ids": ["4", "3", "2", "1"], "image_to_text": [1, 1, 1, 1], "text_to_image": [1, 1, 1, 1]}
    a = {"task": "retrieval", "metrics": {"by_text": {"report": {"ranks": ranks_a}}}}
    b = {"task": "retrieval", "metrics": {"by_text": {"report": {"ranks": ranks_b}}}}
    out = compare_results(a, b, Bootstrap(50))["metrics"]
    assert out["report i→t R@1"]["a"] == 0.5 and out["report i→t R@1"]["difference"] == -0.5
    assert out["report i→t R@5"]["difference"] == -0.25
    seg_a = {"task": "segment", "metrics": {"per_image": {"ids": ["x", "y"], "dice": [0.8, 0.4]}}}
    seg_b = {"task": "segment", "metrics": {"per_image": {"ids": ["y", "x"], "dice": [0.2, 0.6]}}}
    dice = compare_results(seg_a, seg_b, Bootstrap(50))["metrics"]["dice"]
    assert dice["a"] == pytest.approx(0.6) and dice["difference"] == pytest.approx(0.2)


def test_compare_refuses_what_cannot_be_paired(tmp_path):
    a = _result("zero-shot", ["1", "2", "3"], np.eye(3)[:, :2], np.eye(3)[:, :2].astype(bool))
    with pytest.raises(ValueError, match="not scored on the same test set"):
        compare_results(a, _result("zero-shot", ["1", "2", "4"], np.eye(3)[:, :2], np.eye(3)[:, :2].astype(bool)))
    with pytest.raises(ValueError, match="a 'zero-shot' result and B a 'linear-probe' one"):
        compare_results(a, {**a, "task": "linear-probe"})
    with pytest.raises(ValueError, match="stored no per-image scores"):
        compare_results(a, {"task": "zero-shot"})
    with pytest.raises(ValueError, match="store no per-image values to pair"):
        compare_results({"task": "detect"}, {"task": "detect"})
    with pytest.raises(ValueError, match="stored no per-image Dice"):
        compare_results({"task": "segment", "metrics": {}}, {"task": "segment", "metrics": {}})
    with pytest.raises(ValueError, match="disagree on the labels"):
        compare_results(a, _result("zero-shot", ["1", "2", "3"], np.eye(3)[:, :2], ~np.eye(3)[:, :2].astype(bool)))


def test_compare_command_on_two_evaluations(tmp_path, capsys):
    import torch

    from medgrain.data.synthetic import generate
    from medgrain.models import create_model, get_tokenizer, save_pretrained

    manifest = generate("cxr", tmp_path / "cxr", n=30, seed=2, size=64, workers=1, progress=False)
    outs = []
    for k, preset in enumerate(("tiny", "tiny-mgca")):
        torch.manual_seed(k)
        model, tokenizer = create_model(preset), get_tokenizer(preset)
        checkpoint = save_pretrained(model, tokenizer, tmp_path / preset)
        out = tmp_path / f"{preset}.json"
        assert main(["evaluate", "zero-shot", "--checkpoint", str(checkpoint), "--data", str(manifest),
                     "--bootstrap", "0", "--out", str(out)]) == 0
        outs.append(out)
    assert main(["compare", str(outs[0]), str(outs[1]), "--bootstrap", "100", "--out", str(tmp_path / "c.json")]) == 0
    printed = capsys.readouterr().out
    assert "A - B [95% CI]" in printed and "auroc" in printed
    stored = json.loads((tmp_path / "c.json").read_text())
    assert stored["task"] == "zero-shot" and stored["metrics"]["auroc"]["resamples"] > 0
