"""The 5x200 protocol's evaluation: class prompts in GLoRIA's style (severity x subtype x location,
averaged) as the default for the five classes, --prompts overriding them, top-1 accuracy and macro F1; retrieval
precision by class against a direct loop."""

import numpy as np
import pytest
import torch

from medgrain.data.manifest import Record, read_manifest, write_manifest
from medgrain.data.prepare.five_by_200 import CLASSES
from medgrain.evaluation import evaluate
from medgrain.evaluation.bootstrap import Bootstrap
from medgrain.evaluation.metrics import precision_at_k
from medgrain.evaluation.zeroshot import PUBLISHED_PROMPTS, load_prompts


def test_published_prompts_are_every_combination():
    prompts = load_prompts(PUBLISHED_PROMPTS["chexpert-5x200"])
    assert set(prompts.classes) == set(CLASSES)
    atelectasis = prompts.class_prompts("Atelectasis")
    assert len(atelectasis) == 4 * 5 * 6 and "mild linear atelectasis at the left lung base" in atelectasis
    assert "bibasilar atelectasis in the lingula" in atelectasis  # the blank severity leaves no space
    effusion = prompts.class_prompts("Pleural Effusion")
    assert len(effusion) == 4 * 4 * 2 and "small left pleural effusion" in effusion and "pleural effusion" in effusion


def test_precision_at_k_matches_a_loop():
    g = np.random.default_rng(0)
    classes = torch.tensor(g.integers(0, 3, 40))
    sim = torch.tensor(g.normal(size=(40, 40)))
    out = precision_at_k(sim, classes, classes, ["a", "b", "c"], (1, 5), Bootstrap(100))
    for k in (1, 5):
        loop = []
        for q in range(40):
            top = sorted(range(40), key=lambda j: -float(sim[q, j]))[:k]
            loop.append(sum(int(classes[j]) == int(classes[q]) for j in top) / k)
        assert out[f"P@{k}"] == pytest.approx(np.mean(loop))
        b = [loop[q] for q in range(40) if classes[q] == 1]
        assert out["per_class"]["b"][f"P@{k}"] == pytest.approx(np.mean(b))
        low, high = out[f"P@{k}_ci"]
        assert low <= out[f"P@{k}"] <= high


@pytest.fixture(scope="module")
def five_by_200(tmp_path_factory):
    """A tiny 5x200-shaped test set: synthetic images relabelled with one of the five classes each."""
    from medgrain.data.synthetic import generate
    from medgrain.models import create_model, get_tokenizer, save_pretrained

    root = tmp_path_factory.mktemp("5x200")
    source = read_manifest(generate("cxr", root / "cxr", n=30, seed=1, size=64, workers=1, progress=False))
    records = [Record(id=r.id, image=r.image, split="test", labels=[CLASSES[k % 5]], texts={"category": CLASSES[k % 5]},
                      report=f"Findings of {CLASSES[k % 5].lower()}.", patient_id=r.patient_id, domain="cxr")
               for k, r in enumerate(source.records)]
    path = root / "cxr" / "five.jsonl"
    write_manifest(records, path)
    torch.manual_seed(0)
    model, tokenizer = create_model("tiny"), get_tokenizer("tiny")
    return path, str(save_pretrained(model, tokenizer, root / "tiny"))


def test_zero_shot_on_5x200_uses_the_class_prompts(five_by_200, tmp_path):
    data, checkpoint = five_by_200
    record = evaluate("zero-shot", checkpoint, data, bootstrap=50, cache_dir=tmp_path)
    metrics = record["metrics"]
    assert metrics["mode"] == "softmax" and metrics["headline_prompts"] == "classes"
    assert {"accuracy", "f1", "accuracy_ci", "f1_ci"} <= set(metrics["macro"])
    assert metrics["macro"] == metrics["by_prompt"]["classes"]["macro"]
    own = tmp_path / "prompts.yaml"
    own.write_text("templates:\n  category:\n    positive: ['{finding}']\n", encoding="utf-8")
    overridden = evaluate("zero-shot", checkpoint, data, prompts=own, bootstrap=0, cache_dir=tmp_path)
    assert overridden["metrics"]["headline_prompts"] == "ensemble"
    assert set(overridden["metrics"]["by_prompt"]) == {"category", "ensemble"}
    partial = tmp_path / "partial.yaml"
    partial.write_text("templates: {}\nclasses:\n  Edema:\n    subtype: ['edema']\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no prompts for"):
        evaluate("zero-shot", checkpoint, data, prompts=partial, bootstrap=0, cache_dir=tmp_path)


def test_retrieval_on_5x200_reports_precision_by_class(five_by_200, tmp_path):
    data, checkpoint = five_by_200
    record = evaluate("retrieval", checkpoint, data, text="report", bootstrap=50, cache_dir=tmp_path)
    precision = record["metrics"]["by_text"]["report"]["precision_by_class"]
    assert {"P@1", "P@5", "P@10", "P@1_ci", "per_class"} <= set(precision)
    assert set(precision["per_class"]) == set(CLASSES)
