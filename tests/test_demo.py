"""The main job end to end: the quick demo on a very small budget, its results and its report in a browser."""

import json

import pytest

from medgrain.demo import run_demo
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
