"""Every reported metric carries its bootstrap interval: in the result JSON (``<metric>_ci``), in the
printed tables and in the report's values; ``--bootstrap 0`` leaves them out."""

import pytest
import torch

from medgrain.evaluation import evaluate
from medgrain.evaluation.present import fmt, with_ci
from medgrain.evaluation.segmentation import dice_summary
from medgrain.report.results import format_value


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from medgrain.data.synthetic import generate
    from medgrain.models import create_model, get_tokenizer, save_pretrained

    root = tmp_path_factory.mktemp("intervals")
    manifest = generate("cxr", root / "cxr", n=40, seed=4, size=64, workers=1, progress=False)
    torch.manual_seed(0)
    model, tokenizer = create_model("tiny"), get_tokenizer("tiny")
    return {"manifest": manifest, "checkpoint": str(save_pretrained(model, tokenizer, root / "tiny")),
            "cache": root / "cache"}


def _inside(metrics, key):
    low, high = metrics[f"{key}_ci"]
    return low <= metrics[key] <= high


def test_zero_shot_and_retrieval_carry_intervals(bench):
    record = evaluate("zero-shot", bench["checkpoint"], bench["manifest"], cache_dir=bench["cache"], bootstrap=200)
    metrics = record["metrics"]
    for key in ("auroc", "ap", "f1", "accuracy"):
        assert _inside(metrics["macro"], key)
    defined = [m for m in metrics["per_class"].values() if m["auroc"] is not None]
    assert defined and all(_inside(m, "auroc") for m in defined)
    assert record["options"]["bootstrap"] == 200
    record = evaluate("retrieval", bench["checkpoint"], bench["manifest"], cache_dir=bench["cache"], bootstrap=200)
    for values in record["metrics"]["by_text"].values():
        assert all(_inside(values["image_to_text"], f"R@{k}") for k in (1, 5, 10))
    off = evaluate("zero-shot", bench["checkpoint"], bench["manifest"], cache_dir=bench["cache"], bootstrap=0)
    assert "auroc_ci" not in off["metrics"]["macro"]


def test_linear_probe_fractions_keep_each_runs_interval(bench):
    record = evaluate("linear-probe", bench["checkpoint"], bench["manifest"], cache_dir=bench["cache"],
                      fractions=(0.5, 1.0), seeds=(0, 1), bootstrap=100)
    full = record["metrics"]["fractions"]["100%"]["macro"]
    assert isinstance(full["auroc_ci"], list) and full["auroc_ci"][0] <= full["auroc"]["mean"] <= full["auroc_ci"][1]
    half = record["metrics"]["fractions"]["50%"]["macro"]
    assert len(half["auroc_ci"]["values"]) == 2  # one interval per seed, never averaged into a fake one


def test_dice_summary_intervals():
    dice = torch.tensor([0.9, 0.8, 0.1, 1.0, 1.0, 0.7]).numpy()
    positive = torch.tensor([True, True, True, False, False, True]).numpy()
    from medgrain.evaluation.bootstrap import Bootstrap

    out = dice_summary(dice, positive, Bootstrap(200))
    assert out["dice_positive"] == pytest.approx(0.625) and out["dice_negative_ci"] == [1.0, 1.0]
    assert _inside(out, "dice") and _inside(out, "dice_positive")
    assert dice_summary(dice, positive & False, Bootstrap(50))["dice_positive_ci"] is None


def test_tables_and_report_show_the_interval():
    value = with_ci({"auroc": 0.8123, "auroc_ci": [0.75, 0.86]}, "auroc")
    assert fmt(value) == "0.812 [0.750, 0.860]"
    assert format_value(value) == "0.812 [0.750, 0.860]"
    summary = with_ci({"auroc": {"mean": 0.8, "std": 0.01, "values": [0.79, 0.81]}, "auroc_ci": [0.7, 0.9]}, "auroc")
    assert fmt(summary) == "0.800 ± 0.010 [0.700, 0.900]"
    assert with_ci({"auroc": None, "auroc_ci": None}, "auroc") is None
