"""The HTML report: numbers, sections, figures, and the page as headless Chromium renders it.

The inputs are real files of the real formats, made quickly: a small synthetic dataset, tiny random
models saved with save_pretrained, metrics.jsonl rows as the trainer writes them, the MGCA run
evaluated by medgrain.evaluation itself (which stores per-image scores), and the CLIP runs' evaluation
JSONs written by hand (zero-shot with scores, the linear probe without: the report says so instead of
recomputing them).
"""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch

from medgrain.data.manifest import read_manifest
from medgrain.losses.objective import OBJECTIVES
from medgrain.models import create_model, get_tokenizer, save_pretrained
from medgrain.report import (
    build_report,
    check_in_browser,
    collect_results,
    comparison_tables,
    find_chromium,
    load_results,
    read_runs,
    report_command,
    screenshot,
    summary,
)
from medgrain.report.results import task_tables
from medgrain.training.config import load_config

SECTIONS = ("summary", "comparison", "curves", "roc", "attention", "embeddings", "samples", "configs")
FIGURES = ("curves-clip", "curves-mgca", "roc-zero-shot", "roc-linear-probe", "attention-mgca-0", "embeddings-map")
TABLES = ("table-zero-shot", "table-retrieval-report", "table-linear-probe", "versions")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(parts: list[str], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = [{"split": "valid", "step": 0, "epoch": -1, "records": 7, **{p: 3.0 + rng.random() for p in parts}}]
    for step in range(1, 7):
        rows.append({"split": "train", "step": step, "epoch": (step - 1) // 3, "lr": 1e-3, "grad_norm": 1.0,
                     "logit_scale": 14.3, "samples_per_s": 50.0, "time": step * 0.5,
                     **{p: 3.0 - 0.2 * step + 0.1 * rng.random() for p in parts}})
        if step % 3 == 0:
            rows.append({"split": "valid", "step": step, "epoch": step // 3 - 1, "records": 7,
                         **{p: 2.9 - 0.15 * step for p in parts}})
    rows.append({"split": "summary", "skipped_steps": 0, "skipped_records": 0})
    return rows


def _run(root, manifest, objective: str, seed: int):
    preset = "tiny-mgca" if OBJECTIVES.get(objective).aligns_tokens else "tiny"
    out = root / f"{objective}-seed{seed}"
    config = load_config({"data": {"manifest": str(manifest)}, "model": {"preset": preset},
                          "objective": {"name": objective}, "train": {"output_dir": str(out), "seed": seed}})
    torch.manual_seed(seed)
    save_pretrained(create_model(preset).eval(), get_tokenizer(preset), out / "checkpoints" / "best")
    (out / "run.yaml").write_text(config.to_yaml())
    parts = ["loss"] if objective == "clip" else ["loss", "ita", "tca", "cpa"]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _history(parts, seed)))
    return out


def _evaluation(task: str, checkpoint: str, manifest, metrics: dict, options: dict | None = None) -> dict:
    """An evaluation JSON as medgrain.evaluation writes it."""
    return {"task": task, "checkpoint": checkpoint, "data": str(manifest.path.resolve()),
            "splits": {s: len(manifest.split(s)) for s in ("train", "valid", "test")},
            "options": options or {"model": "tiny", "split": "test"}, "seed": 0, "metrics": metrics, "warnings": []}


def _write(path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))


def _hand_written_evaluations(run, manifest, checkpoint: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    names = manifest.finding_names
    labels = [[name in r.labels for name in names] for r in manifest.split("test")]
    macro = {"auroc": 0.55 + 0.02 * seed, "ap": 0.30, "f1": 0.25, "accuracy": 0.70}
    _write(run / "eval" / "zero-shot.json", _evaluation("zero-shot", checkpoint, manifest, {
        "mode": "pairs", "macro": macro, "per_class": {}, "excluded": {},
        "roc": {"names": names, "scores": rng.random((len(labels), len(names))).tolist(), "labels": labels}}))
    if checkpoint == "random":
        return
    summary = {"mean": 0.60 + 0.01 * seed, "std": 0.0, "values": [0.60 + 0.01 * seed]}
    _write(run / "eval" / "linear-probe.json", _evaluation("linear-probe", checkpoint, manifest, {
        "task_type": "multilabel", "fractions": {"100%": {
            "seeds": [0], "n_train": [len(manifest.split("train"))],
            "macro": {"auroc": summary, "ap": {"mean": 0.3, "std": 0.0, "values": [0.3]}},
            "runs": [{"fraction": 1.0, "seed": 0, "n_train": 48, "C": 1.0, "metrics": {}}]}}},
        {"model": "tiny", "split": "test", "max_iter": 200}))
    directions = {"R@1": 0.1 + 0.05 * seed, "R@5": 0.5, "R@10": 0.9, "median_rank": 5.0 - seed}
    _write(run / "eval" / "retrieval.json", _evaluation("retrieval", checkpoint, manifest, {
        "by_text": {"report": {"image_to_text": directions, "text_to_image": directions, "queries": 6}}}))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from medgrain.data.synthetic import generate
    from medgrain.evaluation import linear_probe, zero_shot

    root = tmp_path_factory.mktemp("report")
    manifest_path = generate("cxr", root / "data", n=60, seed=1, size=48, workers=1)
    manifest = read_manifest(manifest_path)
    cache = root / "cache"
    clip = [_run(root, manifest_path, "clip", seed) for seed in (0, 1)]
    for seed, run in enumerate(clip):
        _hand_written_evaluations(run, manifest, str(run / "checkpoints" / "best"), seed)
    mgca = _run(root, manifest_path, "mgca", 0)
    checkpoint = str(mgca / "checkpoints" / "best")
    zero_shot(checkpoint, manifest, cache_dir=cache, out=mgca / "eval" / "zero-shot.json")
    linear_probe(checkpoint, manifest, seeds=(0,), fractions=(1.0,), c_grid=(1.0,), max_iter=200,
                 cache_dir=cache, out=mgca / "eval" / "linear-probe.json")
    random = root / "random"
    _hand_written_evaluations(random, manifest, "random", 0)
    return {"root": root, "manifest": manifest_path, "cache": cache, "runs": [*clip, mgca, random]}


@pytest.fixture(scope="module")
def report(inputs):
    out = build_report(inputs["runs"], inputs["root"] / "report.html", data_manifest=inputs["manifest"],
                       cache_dir=inputs["cache"], title="tiny comparison")
    return out.read_text(encoding="utf-8")


def _element_ids(html: str, tag: str) -> set[str]:
    return set(re.findall(rf'<{tag}[^>]*\bid="([^"]+)"', html))


# ------------------------------------------------------------------------------------ numbers


def test_collected_results_group_seeds_and_name_the_baseline(inputs):
    results = collect_results(read_runs(inputs["runs"]))
    assert list(results["methods"]) == ["random", "clip", "mgca"]
    assert results["baseline"] == "random"
    clip_auroc = results["methods"]["clip"]["metrics"]["zero-shot"]["AUROC"]
    assert clip_auroc["n"] == 2 and clip_auroc["mean"] == pytest.approx(0.56)
    assert clip_auroc["std"] == pytest.approx(np.std([0.55, 0.57], ddof=1))
    assert "AUROC 100%" in results["methods"]["mgca"]["metrics"]["linear probe"]
    assert len(results["methods"]["clip"]["run_dirs"]) == 2


def test_suite_json_is_flattened_like_its_tasks():
    zero_shot = {"mode": "pairs", "macro": {"auroc": 0.7, "ap": 0.4, "f1": 0.3, "accuracy": 0.8}}
    suite = {"zero-shot": {"options": {}, "metrics": zero_shot, "warnings": []},
             "detect": {"skipped": "no finding has a box", "elapsed_s": 0.0},
             "segment": {"options": {}, "warnings": [], "metrics": {"fractions": {
                 "1%": {"macro": {"dice": {"mean": 0.2, "std": 0.01, "values": [0.19, 0.21]}}},
                 "100%": {"macro": {"dice": {"mean": 0.5, "std": 0.0, "values": [0.5]}}}}}}}
    tables = task_tables("all", suite)
    assert tables["zero-shot"] == {"AUROC": 0.7, "AP": 0.4, "F1": 0.3, "accuracy": 0.8}
    assert list(tables["segmentation"]) == ["Dice 100%", "Dice 1%"]  # headline (largest fraction) first
    assert "detection" not in tables


def test_best_per_column_minds_lower_is_better():
    results = {"methods": {
        "clip": {"metrics": {"retrieval (report)": {"i→t R@1": 0.2, "i→t median rank": 4.0}}},
        "mgll": {"metrics": {"retrieval (report)": {"i→t R@1": {"mean": 0.3, "std": 0.1, "n": 3},
                                                    "i→t median rank": 6.0}}},
    }}
    (table,) = comparison_tables(results)
    assert table.best == {"i→t R@1": {"mgll"}, "i→t median rank": {"clip"}}
    assert table.lower == {"i→t R@1": False, "i→t median rank": True}


def test_summary_says_plainly_what_does_not_beat_what():
    results = {"baseline": "random", "methods": {
        "random": {"metrics": {"zero-shot": {"AUROC": 0.52}}},
        "clip": {"metrics": {"zero-shot": {"AUROC": 0.61}}},
        "mgll": {"metrics": {"zero-shot": {"AUROC": 0.50}}},
        "mgca": {"metrics": {"zero-shot": {"AUROC": {"mean": 0.62, "std": 0.05, "n": 3}}}},
    }}
    (text,) = summary(results)
    assert "best is mgca" in text
    assert "mgll does not beat random" in text
    assert "mgll does not beat clip" in text
    assert "mgca is ahead of clip by less than the spread over seeds" in text


def test_bad_results_file_names_the_key(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"methods": {"clip": {"metrics": {"zero-shot": {"AUROC": "high"}}}}}))
    with pytest.raises(ValueError, match=r"methods\.clip\.metrics\.zero-shot\.AUROC"):
        load_results(path)


# ------------------------------------------------------------------------------------ the page


def test_report_has_every_section_figure_and_table(report):
    assert _element_ids(report, "section") >= set(SECTIONS)
    assert _element_ids(report, "img") >= set(FIGURES)
    assert _element_ids(report, "table") >= set(TABLES)
    assert 'id="notes"' not in report, re.findall(r'<section id="notes".*?</section>', report, re.S)


def test_report_is_self_contained_and_its_images_are_pngs(report):
    assert "<script" not in report and "<link" not in report
    assert not re.search(r'(src|href)="(https?:)?//', report)
    sources = re.findall(r'<img[^>]*src="([^"]+)"', report)
    assert len(sources) >= len(FIGURES) + 3  # and the data sample's images
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC


def test_report_shows_spread_best_and_honest_summary(report):
    table = re.search(r'<table id="table-zero-shot".*?</table>', report, re.S).group(0)
    assert "0.560 ± 0.014" in table  # clip over its two seeds
    assert 'class="best"' in table
    assert "(baseline)" in table
    summary_html = re.search(r'<section id="summary".*?</section>', report, re.S).group(0)
    assert "zero-shot (AUROC, higher is better)" in summary_html


def test_report_explains_what_is_missing(report):
    roc = re.search(r'<section id="roc".*?</section>', report, re.S).group(0)
    assert "no linear-probe evaluation of random was found" in roc  # random was not probed
    assert "saved by the evaluation" in roc and "recomputed" not in roc
    assert "the linear-probe evaluation of clip stored no per-image scores" in roc  # never refitted by the report


def test_configs_and_versions_are_there(report, inputs):
    configs = re.search(r'<section id="configs".*?</section>', report, re.S).group(0)
    for package in ("python", "torch", "torchvision", "timm", "open_clip_torch", "transformers", "medgrain"):
        assert f"<td>{package}</td>" in configs
    assert "objective:" in configs and "name: mgca" in configs


def test_report_command_reads_a_results_file(inputs, tmp_path):
    results = collect_results(read_runs(inputs["runs"]))
    results["title"] = "from results.json"
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    out = report_command([inputs["runs"][-1]], tmp_path / "r.html", results=path, data=inputs["manifest"],
                         cache_dir=inputs["cache"])
    html = out.read_text(encoding="utf-8")
    assert "<title>from results.json</title>" in html
    assert 'id="table-linear-probe"' in html  # the numbers come from the file, not from the one run given
    assert "no run&#x27;s objective is mgca or mgca+mgll" in html


# ------------------------------------------------------------------------------------ in a browser


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        pytest.skip("chromium not installed: apt-get install chromium (or set MEDGRAIN_CHROMIUM)")
    return path


def test_report_opens_in_headless_chromium(chromium, inputs, report):
    page = check_in_browser(inputs["root"] / "report.html")
    assert page["console"] == [] and page["problems"] == []
    assert page["broken"] == [], f"images that did not decode: {page['broken']}"
    assert all(width > 0 and height > 0 for _, width, height in page["sizes"])
    assert set(page["sections"]) >= set(SECTIONS)
    assert set(page["figures"]) >= set(FIGURES)
    assert set(page["tables"]) >= set(TABLES)


def test_screenshot(chromium, inputs, report, tmp_path):
    png = screenshot(inputs["root"] / "report.html", tmp_path / "report.png", width=1280, height=2400)
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 2400)
