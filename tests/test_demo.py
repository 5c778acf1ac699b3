"""The main job end to end: the quick demo on a very small budget, its results and its report in a browser."""

import json

import pytest

from medgrain.demo import LEFT_OUT, ON_ITS_OWN, run_demo, suite_tasks
from medgrain.evaluation import EVAL_TASKS
from medgrain.losses.objective import OBJECTIVES
from medgrain.report.browser import check_in_browser, find_chromium

TASK_TABLES = ("zero-shot", "retrieval (report)", "linear probe", "segmentation", "grounding")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    results = run_demo("cxr", quick=True, out=out, n=120, epochs=1)
    return out, results


@pytest.mark.slow
def test_quick_demo_writes_every_method_and_task(demo):
    out, results = demo
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["methods"].keys() == results["methods"].keys() == {*OBJECTIVES.names(), "random"}
    for method, entry in on_disk["methods"].items():
        for table in TASK_TABLES:
            assert table in entry["metrics"], (method, table, sorted(entry["metrics"]))
            values = [v for v in entry["metrics"][table].values() if v is not None]
            assert values, (method, table)
    for method in OBJECTIVES.names():
        run = out / method.replace("+", "-")
        assert (run / "run.yaml").is_file() and (run / "metrics.jsonl").is_file()
        assert (run / "eval" / "all.json").is_file()
    assert on_disk["demo"]["quick"] is True
    report = (out / "report.html").read_text()
    assert 'id="grounding-maps"' in report and "CNR" in report


def test_the_demos_tasks_are_the_registrys_but_those_left_out_with_a_reason():
    assert set(LEFT_OUT) | set(ON_ITS_OWN) <= set(EVAL_TASKS.names())  # a renamed task fails here
    assert all(reason for reason in LEFT_OUT.values())
    assert set(suite_tasks()) | set(LEFT_OUT) | set(ON_ITS_OWN) == set(EVAL_TASKS.names())


@pytest.mark.slow
def test_quick_demo_marks_each_methods_differences_against_random_and_clip(demo):
    out, results = demo
    rows = json.loads((out / "results.json").read_text())["differences"]
    pairs = {(d["method"], d["against"]) for d in rows}
    assert pairs == {(m, ref) for ref in ("random", "clip") for m in OBJECTIVES.names() if m != ref}
    for d in rows:
        assert isinstance(d["marked"], bool) and d["verdict"] and d["how"]
        if d["difference_ci"] is not None:  # a paired interval: marked exactly when it excludes 0
            assert d["marked"] == (d["difference_ci"][0] > 0 or d["difference_ci"][1] < 0)
    paired = [d for d in rows if d["table"] == "zero-shot" and d["column"] == "AUROC"]
    assert len(paired) == len(OBJECTIVES.names()) * 2 - 1
    assert all(d["how"].startswith("paired bootstrap") for d in paired)
    stages = json.loads((out / "results.json").read_text())["demo"]["stages"]
    assert [s["stage"] for s in stages][0] == "data" and all(s["cpu_s"] >= 0 for s in stages)


@pytest.mark.slow
def test_quick_demo_report_opens_in_chromium_with_every_figure(demo):
    if find_chromium() is None:
        pytest.skip("chromium not installed: apt-get install chromium (.ci/run installs it)")
    out, _ = demo
    page = check_in_browser(out / "report.html")
    assert page["console"] == [] and page["problems"] == []
    assert page["broken"] == []
    assert set(page["sections"]) >= {"summary", "comparison", "curves", "roc", "attention", "grounding",
                                     "embeddings", "samples", "configs"}
    figures = set(page["figures"])
    for method in OBJECTIVES.names():
        assert f"curves-{method.replace('+', '-')}" in figures, figures
    assert any(f.startswith("attention-") for f in figures), figures
    assert "grounding-maps" in figures, figures
    assert "embeddings-map" in figures and any(f.startswith("roc-") for f in figures)
    assert {"table-zero-shot", "table-linear-probe", "table-segmentation", "versions"} <= set(page["tables"])
    assert "table-differences" in page["tables"]
