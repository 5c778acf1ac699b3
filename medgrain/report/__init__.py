"""The HTML report of pretraining and evaluation runs, and its figures.

``build_report(run_dirs, out, results=None, data_manifest=None)`` writes one self-contained HTML file;
``report_command`` is what ``medgrain report`` calls. The results schema is documented in
``medgrain.report.results``; ``screenshot`` and ``check_in_browser`` open a report in headless Chromium.
"""

from medgrain.report.browser import BrowserError, check_in_browser, find_chromium, screenshot
from medgrain.report.html import build_report, report_command
from medgrain.report.results import collect_results, comparison_tables, load_results, read_runs, summary

__all__ = [
    "BrowserError",
    "build_report",
    "check_in_browser",
    "collect_results",
    "comparison_tables",
    "find_chromium",
    "load_results",
    "read_runs",
    "report_command",
    "screenshot",
    "summary",
]
