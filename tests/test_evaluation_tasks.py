"""Each evaluation task end to end on a tiny synthetic chest set with random tiny models: the result
JSON has what issue #5 asks, caches and fraction files are reused, bad input gets a clear error."""

import json

import pytest
import torch

from medgrain.data.manifest import read_manifest, write_manifest
from medgrain.evaluation import (
    detect,
    evaluate_all,
    finetune,
    linear_probe,
    load_encoder,
    retrieval,
    segment,
    zero_shot,
)
from medgrain.evaluation import features as features_module
from medgrain.evaluation.fractions import fraction_path
from medgrain.evaluation.segmentation import build_segmenter

HEADER = {"task", "checkpoint", "data", "splits", "options", "metrics", "warnings", "medgrain_version", "seed", "time"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from medgrain.data.synthetic import generate
    from medgrain.models import create_model, get_tokenizer, save_pretrained

    root = tmp_path_factory.mktemp("evaluation")
    manifest = generate("cxr", root / "cxr", n=60, seed=3, size=64, workers=1)
    checkpoints = {}
    for preset in ("tiny-vit", "tiny"):
        torch.manual_seed(0)
        model = create_model(preset)
        tokenizer = get_tokenizer(model.config)
        checkpoints[preset] = str(save_pretrained(model, tokenizer, root / preset))
    return {"manifest": manifest, "root": root, "cache": root / "cache", **checkpoints}


def _strict_json(path):
    def no_nan(value):
        raise AssertionError(f"{path} holds {value}")

    return json.loads(path.read_text(), parse_constant=no_nan)


def test_zero_shot_result_json(bench, tmp_path):
    out = tmp_path / "zero-shot.json"
    zero_shot(bench["tiny-vit"], bench["manifest"], cache_dir=bench["cache"], out=out)
    result = _strict_json(out)
    assert HEADER <= set(result) and result["task"] == "zero-shot" and result["checkpoint"] == bench["tiny-vit"]
    assert set(result["splits"]) == {"train", "valid", "test"} and sum(result["splits"].values()) == 60
    metrics = result["metrics"]
    assert metrics["mode"] == "pairs"
    assert set(metrics["by_prompt"]) == {"abnormality", "category", "description", "report", "ensemble"}
    names = read_manifest(bench["manifest"]).finding_names
    assert set(metrics["per_class"]) == set(names)
    for name, reason in metrics["excluded"].items():  # undefined AUROC: null, with its reason, out of the mean
        assert metrics["per_class"][name]["auroc"] is None and reason in ("no positives", "no negatives")
    defined = [v["auroc"] for v in metrics["per_class"].values() if v["auroc"] is not None]
    assert metrics["macro"]["auroc"] == pytest.approx(sum(defined) / len(defined))


def test_zero_shot_prompt_file_and_multiclass(bench, tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("templates:\n  category:\n    positive: ['{finding}']\n    negative: ['no {finding}']\n")
    result = zero_shot(bench["tiny-vit"], bench["manifest"], prompts=prompts, cache_dir=bench["cache"])
    assert set(result["metrics"]["by_prompt"]) == {"category", "ensemble"}

    prompts.write_text("templates:\n  category:\n    positive: ['{finding}']\n    negatives: ['no']\n")
    with pytest.raises(ValueError, match="negatives"):
        zero_shot(bench["tiny-vit"], bench["manifest"], prompts=prompts, cache_dir=bench["cache"])

    # one label per record: a softmax over the findings, scored by accuracy
    records = [r.model_copy(update={"labels": r.labels[:1] or ["No Finding"], "findings": []})
               for r in read_manifest(bench["manifest"]).records]
    single = write_manifest(records, bench["manifest"].parent / "single.jsonl")
    result = zero_shot(bench["tiny-vit"], single, cache_dir=bench["cache"])
    assert result["metrics"]["mode"] == "softmax" and 0 <= result["metrics"]["macro"]["accuracy"] <= 1


def test_retrieval_every_text(bench):
    result = retrieval(bench["tiny-vit"], bench["manifest"], cache_dir=bench["cache"])
    by_text = result["metrics"]["by_text"]
    assert set(by_text) == {"report", "abnormality", "category", "description"}
    for values in by_text.values():
        for direction in ("image_to_text", "text_to_image"):
            m = values[direction]
            assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 1 and m["median_rank"] >= 1
    # two distinct abnormality texts: every query finds its text by rank 2
    assert by_text["abnormality"]["distinct_texts"] <= 2 and by_text["abnormality"]["image_to_text"]["R@5"] == 1


def test_linear_probe_fractions_and_feature_cache(bench, monkeypatch):
    manifest = read_manifest(bench["manifest"])
    kwargs = dict(fractions=(0.1, 1.0), seeds=(0, 1), c_grid=(1.0,), cache_dir=bench["cache"])
    first = linear_probe(bench["tiny-vit"], manifest, **kwargs)
    ten = first["metrics"]["fractions"]["10%"]
    assert ten["seeds"] == [0, 1] and set(ten["macro"]["auroc"]) == {"mean", "std", "values"}
    assert first["metrics"]["fractions"]["100%"]["seeds"] == [0]  # deterministic: one run
    files = [fraction_path(manifest, "train", 0.1, s) for s in (0, 1)]
    assert all(f.is_file() for f in files)
    ids = [[i for i in f.read_text().splitlines() if not i.startswith("#")] for f in files]
    assert ids[0] != ids[1]
    assert ten["n_train"] == [len(i) for i in ids]

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again instead of read from the cache")

    monkeypatch.setattr(features_module, "compute_features", no_extraction)
    second = linear_probe(bench["tiny-vit"], manifest, **kwargs)
    assert second["metrics"]["fractions"]["10%"]["macro"] == ten["macro"]

    # MGCA's AdamW protocol on the same cached features and records
    adamw = linear_probe(bench["tiny-vit"], manifest, fractions=(0.1,), seeds=(0,), cache_dir=bench["cache"],
                         solver="adamw", epochs=3, patience=1)
    assert adamw["options"]["solver"] == "adamw" and adamw["options"]["lr"] == 5e-4
    run = adamw["metrics"]["fractions"]["10%"]["runs"][0]
    assert run["n_train"] == len(ids[0]) and 2 <= run["epochs_run"] <= 3 and len(run["valid_history"]) == run["epochs_run"]
    assert adamw["options"]["select"] == "loss" and run["best_valid"] == min(run["valid_history"])
    mgll_rule = linear_probe(bench["tiny-vit"], manifest, fractions=(0.1,), seeds=(0,), cache_dir=bench["cache"],
                             solver="adamw", epochs=3, patience=1, select="accuracy")
    run = mgll_rule["metrics"]["fractions"]["10%"]["runs"][0]
    assert mgll_rule["options"]["select"] == "accuracy" and run["best_valid"] == max(run["valid_history"])
    assert first["options"]["select"] == "auroc"
    with pytest.raises(ValueError, match="select must be one of"):
        linear_probe(bench["tiny-vit"], manifest, select="f1")
    with pytest.raises(ValueError, match="c_grid do not apply to solver='adamw'"):
        linear_probe(bench["tiny-vit"], manifest, solver="adamw", c_grid=(1.0,))
    with pytest.raises(ValueError, match="epochs, lr do not apply to solver='lbfgs'"):
        linear_probe(bench["tiny-vit"], manifest, epochs=3, lr=0.1)

    # fine-tuning trains on the very same records
    result = finetune(bench["tiny-vit"], manifest, fractions=(0.1,), seeds=(0,), epochs=2, patience=1, batch_size=8,
                      select="auroc", schedule="cosine", warmup_epochs=1)
    run = result["metrics"]["fractions"]["10%"]["runs"][0]
    assert result["options"]["select"] == "auroc" and run["best_valid"] == max(run["valid_history"])
    assert result["options"]["schedule"] == "cosine" and result["options"]["warmup_epochs"] == 1
    assert run["n_train"] == len(ids[0]) and run["epochs_run"] <= 2
    assert result["metrics"]["fractions"]["10%"]["macro"]["auroc"]["mean"] is not None


@pytest.mark.parametrize("preset", ["tiny", "tiny-vit"])
def test_segmentation(bench, preset, tmp_path):
    out = tmp_path / "segment.json"
    segment(bench[preset], bench["manifest"], fractions=(0.1,), seeds=(0,), epochs=1, batch_size=8, out=out)
    result = _strict_json(out)
    assert result["options"]["decoder"] == ("U-Net (smp)" if preset == "tiny" else "SETR-PUP")
    dice = result["metrics"]["fractions"]["10%"]["macro"]["dice"]["mean"]
    assert 0 <= dice <= 1


def test_frozen_encoder_keeps_its_batchnorm_statistics(bench):
    encoder = load_encoder(bench["tiny"], device="cpu")
    segmenter = build_segmenter(encoder, freeze=True).train()
    statistics = {k: v.clone() for k, v in segmenter.encoder.state_dict().items() if "running" in k}
    loss = segmenter(torch.randn(4, 3, 64, 64)).square().mean()
    loss.backward()
    assert not segmenter.encoder.encoder.training and segmenter.decoder.training
    after = segmenter.encoder.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in statistics.items())
    assert all(p.grad is None for p in segmenter.encoder.parameters())


def test_detection(bench, tmp_path):
    pytest.importorskip("pycocotools", reason="torchmetrics' COCO mAP needs pycocotools")
    out = tmp_path / "detect.json"
    detect(bench["tiny"], bench["manifest"], fractions=(0.1,), seeds=(0,), epochs=1, batch_size=8,
           fpn_channels=32, out=out)
    macro = _strict_json(out)["metrics"]["fractions"]["10%"]["macro"]
    assert {"map_40_75", "map_coco", "map_50", "map_75"} <= set(macro)
    assert {"map_40_75_ci", "map_coco_ci"} <= set(macro)  # one seed: its interval over test images
    if macro["map_40_75"]["mean"] is not None and macro["map_40_75_ci"] is not None:
        low, high = macro["map_40_75_ci"]
        assert low <= macro["map_40_75"]["mean"] <= high


def test_clear_errors(bench, tmp_path):
    with pytest.raises(ValueError, match="ResNet"):
        detect(bench["tiny-vit"], bench["manifest"])
    manifest = read_manifest(bench["manifest"])
    no_masks = [r.model_copy(update={"findings": []}) for r in manifest.records]
    path = write_manifest(no_masks, bench["manifest"].parent / "no-masks.jsonl")
    with pytest.raises(ValueError, match="no finding has a mask"):
        segment(bench["tiny"], path)
    no_test = [r for r in manifest.records if r.split != "test"]
    path = write_manifest(no_test, bench["manifest"].parent / "no-test.jsonl")
    with pytest.raises(ValueError, match="split 'test' has no images"):
        linear_probe(bench["tiny-vit"], path)
    with pytest.raises(RuntimeError, match="imagenet-weights"):
        load_encoder("imagenet", model="tiny", device="cpu")
    assert load_encoder("random", model="tiny-vit", device="cpu").checkpoint == "random"


@pytest.mark.slow
def test_suite_runs_what_the_data_and_tower_allow(bench, tmp_path):
    out = tmp_path / "all.json"
    evaluate_all("random", bench["manifest"], out, model="tiny-vit", seeds=(0,), epochs=1, cache_dir=bench["cache"],
                 tasks=("zero-shot", "linear-probe", "segment", "detect"))
    result = _strict_json(out)
    assert result["task"] == "all" and result["checkpoint"] == "random"
    assert result["metrics"]["detect"]["skipped"].startswith("detection needs a ResNet")
    assert "macro" in result["metrics"]["zero-shot"]["metrics"]
    assert "100%" in result["metrics"]["segment"]["metrics"]["fractions"]


def test_skip_screening_leaves_out_a_box_outside_its_image(bench):
    """Under on_error=skip, detection's box check is screened with the images, up front: the record is left
    out and counted, instead of failing the detection run when its loader reaches it."""
    from medgrain.evaluation.data import without_unreadable_images

    manifest = read_manifest(bench["manifest"])
    k = next(i for i, r in enumerate(manifest.records) if any(f.box for f in r.findings))
    record = manifest.records[k]
    j = next(i for i, f in enumerate(record.findings) if f.box)
    findings = list(record.findings)
    findings[j] = findings[j].model_copy(update={"box": [0.0, 0.0, 64.0, 65.0]})  # the images are 64x64
    records = list(manifest.records)
    records[k] = record.model_copy(update={"findings": findings})
    path = write_manifest(records, bench["manifest"].parent / "box-outside.jsonl")
    kept, skips = without_unreadable_images(read_manifest(path))
    assert [r.id for r in kept.records] == [r.id for i, r in enumerate(manifest.records) if i != k]
    assert skips.counts() == {"invalid field 'findings.box'": 1}
    assert skips.state()["invalid field 'findings.box'"] == [f"{path}:{k + 1}"]
