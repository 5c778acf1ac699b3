"""The HTML report: one self-contained file (figures embedded as base64 PNG, CSS inline, no script,
no external resource) that opens in any browser without a server.

Sections, each with a stable id: ``summary``, ``comparison`` (one table per task), ``curves``,
``roc``, ``attention``, ``embeddings``, ``samples``, ``configs``. A figure that cannot be drawn says
why in its place and in the notes at the top; nothing is left out silently.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import importlib.metadata
import logging
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgrain.io import atomic_write
from medgrain.report import gather, plots
from medgrain.report.differences import sentences as differences_sentences
from medgrain.report.results import (
    aligns_tokens,
    collect_results,
    comparison_tables,
    format_value,
    load_results,
    method_help,
    method_rank,
    read_runs,
    summary,
    token_objectives,
    validate_results,
)

log = logging.getLogger(__name__)
VERSIONS = ("torch", "torchvision", "timm", "open_clip_torch", "transformers", "tokenizers", "numpy",
            "scikit-learn", "matplotlib", "medgrain")
DEFAULT_TITLE = "medgrain report"

CSS = """
:root { --ink: #1d2430; --muted: #5b6472; --rule: #e3e6eb; --accent: #2b6cb0; --best: #e6f4ea; --paper: #ffffff; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: var(--ink);
  font: 15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: var(--paper); border-bottom: 1px solid var(--rule); padding: 28px 0 14px; }
.wrap { max-width: 1180px; margin: 0 auto; padding: 0 28px; }
h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 20px; margin: 0 0 10px; padding-top: 8px; }
h3 { font-size: 15.5px; margin: 22px 0 8px; }
p { margin: 6px 0 10px; max-width: 78ch; }
.meta { color: var(--muted); font-size: 13px; }
nav { margin-top: 12px; display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 13.5px; }
nav a { color: var(--accent); text-decoration: none; }
section { background: var(--paper); border: 1px solid var(--rule); border-radius: 8px; padding: 18px 24px 20px;
  margin: 20px 0; }
.notes { background: #fff8e6; border-color: #f0d48a; }
.summary li { margin: 4px 0 8px; max-width: 95ch; }
table { border-collapse: collapse; font-size: 13.5px; margin: 6px 0 14px; }
th, td { padding: 6px 12px; border-bottom: 1px solid var(--rule); text-align: right; white-space: nowrap; }
th { font-weight: 600; color: var(--muted); border-bottom: 2px solid #cfd4db; vertical-align: bottom; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
td { font-variant-numeric: tabular-nums; }
td.best { background: var(--best); font-weight: 700; }
td.best::after { content: " \\25B2"; font-size: 9px; color: #2f855a; vertical-align: 2px; }
tr.baseline td:first-child { font-style: italic; }
.dir { font-weight: 400; font-size: 11px; display: block; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 7px; }
.scroll { overflow-x: auto; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid var(--rule); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; max-width: 95ch; }
.missing { color: #8a5a00; font-style: italic; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--rule); border-radius: 6px; padding: 12px; display: grid;
  grid-template-columns: 128px 1fr; gap: 12px; font-size: 13px; }
.card img { width: 128px; height: 128px; object-fit: contain; background: #000; border-radius: 3px; }
dl.methods dt { font-weight: 600; } dl.methods dd { margin: 0 0 6px 18px; color: var(--muted); }
.card dl { margin: 0; } .card dt { color: var(--muted); font-size: 11.5px; text-transform: uppercase;
  letter-spacing: .04em; margin-top: 4px; } .card dd { margin: 0; }
.report { grid-column: 1 / -1; color: #333; font-size: 12.5px; background: #fafbfc; padding: 8px; border-radius: 4px; }
.pill { display: inline-block; background: #edf2f7; border-radius: 10px; padding: 1px 8px; margin: 1px 3px 1px 0;
  font-size: 12px; }
pre { background: #f4f5f7; padding: 12px; border-radius: 6px; font-size: 12px; line-height: 1.45; overflow-x: auto; }
details { margin: 6px 0; } summary { cursor: pointer; font-weight: 600; font-size: 14px; }
#versions td { text-align: left; }
code { font-size: 12.5px; background: #f1f3f5; padding: 1px 4px; border-radius: 3px; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def img(data: bytes, alt: str, element_id: str, width: int | None = None) -> str:
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    size = f' width="{width}"' if width else ""
    return f'<img id="{_e(element_id)}" src="{src}" alt="{_e(alt)}"{size}>'


def figure(data: bytes, alt: str, element_id: str, caption: str) -> str:
    return f'<figure>{img(data, alt, element_id)}<figcaption>{caption}</figcaption></figure>'


def missing(what: str, reason: str) -> str:
    return f'<p class="missing">{_e(what)}: not available ({_e(reason)}).</p>'


def section(element_id: str, title: str, body: str, intro: str = "") -> str:
    intro = f"<p>{intro}</p>" if intro else ""
    return f'<section id="{element_id}"><h2>{_e(title)}</h2>{intro}{body}</section>'


# ------------------------------------------------------------------------------------ sections


def comparison_section(results: dict[str, Any], colours: dict[str, str]) -> str:
    baseline = results.get("baseline")
    parts = []
    for table in comparison_tables(results):
        head = "".join(f'<th>{_e(c)}<span class="dir">{"lower" if table.lower[c] else "higher"} is better</span></th>'
                       for c in table.columns)
        rows = []
        for method in table.methods:
            cells = []
            for column in table.columns:
                value = table.values[method].get(column)
                best = ' class="best"' if method in table.best[column] else ""
                digits = 1 if "rank" in column.lower() else 3  # ranks are counts: no need for 3 decimals
                cells.append(f"<td{best}>{_e(format_value(value, digits))}</td>")
            swatch = f'<span class="swatch" style="background:{colours.get(method, "#999")}"></span>'
            label = f"{_e(method)} (baseline)" if method == baseline else _e(method)
            css = ' class="baseline"' if method == baseline else ""
            rows.append(f"<tr{css}><td>{swatch}{label}</td>{''.join(cells)}</tr>")
        parts.append(f'<h3>{_e(table.name)}</h3><div class="scroll"><table id="table-{slug(table.name)}" class="metrics">'
                     f'<thead><tr><th>method</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
    if not parts:
        return section("comparison", "Comparison", missing("comparison tables", "no evaluation results were found: "
                                                           "pass --results or evaluate into RUN_DIR/eval/"))
    if results.get("differences"):
        parts.append(differences_table(results["differences"]))
    described = [(m, method_help(m)) for m in results["methods"] if method_help(m)]
    if described:
        parts.append('<dl class="methods" id="methods">' +
                     "".join(f"<dt>{_e(m)}</dt><dd>{_e(h)}</dd>" for m, h in described) + "</dl>")
    intro = ("Every method on every metric, one table per task. The best value of each column is marked "
             "(&#9650;, shaded); ± is the standard deviation over seeds where there were several. "
             "The first column of each table is the headline the summary compares.")
    return section("comparison", "Comparison", "".join(parts), intro)


def differences_table(rows: list[dict[str, Any]]) -> str:
    """Each method against the baseline and CLIP: the difference, its interval, and whether it is larger
    than its interval (marked &#10033;); see ``medgrain.report.differences``."""
    from medgrain.report.differences import describe

    body = "".join(
        f'<tr><td>{_e(d["table"])}: {_e(d["column"])}</td><td>{_e(d["method"])} vs {_e(d["against"])}</td>'
        f'<td>{_e(describe(d))}</td><td{" class=best" if d["marked"] else ""}>'
        f'{"&#10033; " if d["marked"] else ""}{_e(d["verdict"])}</td><td>{_e(d["how"])}</td></tr>' for d in rows)
    return ('<h3>Differences against the baseline and CLIP</h3><p>&#10033; marks a difference larger than its 95% '
            "interval: by a paired bootstrap over the test images where both runs stored per-image scores, else "
            "only when the runs' own intervals (over seeds) do not overlap; anything else cannot be told apart.</p>"
            '<div class="scroll"><table id="table-differences" class="metrics"><thead><tr><th>metric</th>'
            "<th>methods</th><th>difference [95% CI]</th><th>verdict</th><th>how</th></tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def curves_section(runs_by_method: dict[str, list], colours: dict[str, str], notes: list[str]) -> str:
    parts = []
    for method, runs in runs_by_method.items():
        with_history = [r for r in runs if r.history]
        if not with_history:
            continue
        try:
            data = plots.png(plots.loss_curves_figure(method, with_history, colours[method]))
        except Exception as e:  # one figure must not cost the whole report; the reason is shown in its place
            parts.append(_failed(f"loss curves of {method}", e, notes))
            continue
        parts.append(figure(data, f"loss curves of {method}", f"curves-{slug(method)}",
                            f"{_e(method)}: each loss part against the optimisation step; training (solid, "
                            f"averaged over the logging interval) and validation (dashed, dots; step 0 is before "
                            f"any update). Runs: {_e(', '.join(str(r.path) for r in with_history))}."))
    body = "".join(parts) or missing("loss curves", "no run has a metrics.jsonl")
    return section("curves", "Training and validation loss", body,
                   "Losses of different objectives are on different scales: compare each method's curves "
                   "with themselves, and methods through the downstream numbers above.")


def roc_section(roc: dict[str, dict[str, gather.Scores]], reasons: dict[str, list[str]],
                colours: dict[str, str], notes: list[str]) -> str:
    parts = []
    for task in [t for t in gather.roc_tasks().values() if t in roc or t in reasons]:
        scores = roc.get(task, {})
        drawable, undefined = plots.drawable_findings(scores) if scores else ([], [])
        if scores and not drawable:
            parts.append(missing(f"{task} ROC curves", "no finding has both positives and negatives in the test split"))
        elif scores:
            try:
                data = plots.png(plots.roc_figure(task, scores, colours))
                by_how: dict[str, list[str]] = {}
                for method, s in scores.items():
                    by_how.setdefault(s.how, []).append(method)
                how = "; ".join(f"{h} ({', '.join(m)})" for h, m in by_how.items())
                left_out = (f" Not drawn (only one class in the test split): {_e(', '.join(undefined))}."
                            if undefined else "")
                parts.append(figure(data, f"{task} ROC curves", f"roc-{slug(task)}",
                                    f"{_e(task)} on the test split, one curve per method (AUROC in the legend)."
                                    f"{left_out} Scores: {_e(how)}."))
            except Exception as e:
                parts.append(_failed(f"{task} ROC curves", e, notes))
        for reason in reasons.get(task, []):
            parts.append(missing(f"{task} ROC curves", reason))
    return section("roc", "ROC curves per finding", "".join(parts) or missing("ROC curves", "no evaluation"))


def attention_section(examples: dict[str, list], reasons: list[str]) -> str:
    from medgrain.models.attention_maps import attention_figure

    parts = []
    for method, items in examples.items():
        parts.append(f"<h3>{_e(method)}</h3>")
        for k, (record, text, maps, truncated) in enumerate(items):
            fig = attention_figure(maps, max_words=len(maps.words), title=f"{method}: {record.id}")
            labels = ", ".join(record.labels) or "normal"
            parts.append(figure(plots.png(fig), f"attention of {method} on {record.id}",
                                f"attention-{slug(method)}-{k}",
                                f"{_e(record.id)} ({_e(labels)}). Text: <q>{_e(text)}</q>"
                                f"{' (cut at the tokenizer’s max_length: the model saw only its start)' if truncated else ''}. "
                                "Each panel is one word's attention over the image patches, on its own colour scale."))
    for reason in reasons:
        parts.append(missing("attention maps", reason))
    intro = (f"For models whose objective aligns words with image regions ({' or '.join(token_objectives())}): "
             "each word's attention over the image, "
             "softmax(word · patch / 0.1) over the patch grid from the token heads, as MGCA's token-level "
             "alignment computes it. The words shown are the report's words that also name the record's findings "
             "(in its shorter texts) first, then other content words; function words and section names are left out.")
    return section("attention", "Word-to-image attention", "".join(parts) or missing("attention maps", "no MGCA run"),
                   intro)


def grounding_section(manifest, examples: dict[str, list[dict]], reasons: list[str], notes: list[str]) -> str:
    parts = []
    if examples and manifest is not None:
        try:
            data = plots.png(plots.grounding_figure(manifest, examples))
            parts.append(figure(data, "phrase grounding maps", "grounding-maps",
                                "Each panel: the phrase's cosine similarity with every patch (colour, -1 to 1) over "
                                "the image as the model saw it, the ground-truth region outlined in cyan."))
        except Exception as e:  # one figure must not cost the whole report
            parts.append(_failed("grounding maps", e, notes))
    elif examples:
        reasons = [*reasons, "no manifest to read the images from: pass --data MANIFEST"]
    for reason in reasons:
        parts.append(missing("grounding maps", reason))
    intro = ("Phrase grounding (MS-CXR's protocol): where each model puts a phrase, as the similarity map of the phrase "
             "embedding with every patch embedding (token heads for MGCA-type models, the global heads otherwise), "
             "scored by contrast-to-noise ratio and mIoU against the box or mask; the numbers are in the comparison "
             "table 'grounding'.")
    return section("grounding", "Phrase grounding", "".join(parts) or missing("grounding maps", "no grounding evaluation"),
                   intro)


def embeddings_section(points: dict[str, tuple], reasons: list[str], notes: list[str]) -> str:
    parts = []
    if points:
        try:
            parts.append(figure(plots.png(plots.embedding_figure(points)), "t-SNE of image embeddings",
                                "embeddings-map",
                                "Each point is an image of the validation or test split, placed by t-SNE "
                                "(PCA initialisation, seed 0) of the method's normalised image embedding, coloured "
                                "by its finding (hollow: several findings). Clusters that follow colours mean the "
                                "embedding separates findings without labels."))
        except Exception as e:
            parts.append(_failed("t-SNE map", e, notes))
    parts += [missing("embedding map", r) for r in reasons]
    return section("embeddings", "Image embeddings", "".join(parts) or missing("embedding map", "no checkpoint"))


def _thumbnail(path: Path) -> bytes:
    import torch
    from torchvision.io import encode_png

    from medgrain.data.imageio import read_image

    image = read_image(path)
    if image.dtype != torch.uint8:
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return encode_png(image).numpy().tobytes()


def samples_section(manifest, k: int = 6) -> str:
    if manifest is None:
        return section("samples", "Data sample", missing("data sample", "no manifest: pass --data MANIFEST"))
    cards = []
    for i, record in enumerate(gather.example_records(manifest, k)):
        pills = "".join(f'<span class="pill">{_e(x)}</span>' for x in record.labels) or '<span class="pill">normal</span>'
        texts = "".join(f"<dt>{_e(g)}</dt><dd>{_e(t)}</dd>" for g, t in record.texts.items())
        report = f'<div class="report"><b>report</b> {_e(record.report)}</div>' if record.report else ""
        cards.append(f'<div class="card">{img(_thumbnail(manifest.resolve(record.image)), record.id, f"sample-{i}")}'
                     f"<dl><dt>id · split</dt><dd>{_e(record.id)} · {_e(record.split)}</dd>"
                     f"<dt>findings</dt><dd>{pills}</dd>{texts}</dl>{report}</div>")
    intro = (f"{len(cards)} records of <code>{_e(manifest.path)}</code> ({len(manifest)} records, "
             f"granularities: {_e(', '.join(manifest.granularities) or 'none')}), with their texts at every "
             "granularity and the report.")
    return section("samples", "Data sample", f'<div class="cards">{"".join(cards)}</div>', intro)


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def configs_section(runs: list) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in versions().items())
    parts = [f'<h3>Versions</h3><table id="versions"><thead><tr><th>package</th><th>version</th></tr></thead>'
             f"<tbody>{rows}</tbody></table>"]
    for run in runs:
        if run.config_text is None:
            continue
        parts.append(f"<details><summary>{_e(run.name)}: <code>{_e(run.path / 'run.yaml')}</code></summary>"
                     f"<p>Repeat with <code>medgrain pretrain --config {_e(run.path / 'run.yaml')}</code>.</p>"
                     f'<pre id="config-{slug(run.name)}">{_e(run.config_text)}</pre></details>')
    evaluations = [(f, r) for run in runs for f, r in run.evaluations]
    if evaluations:
        items = "".join(f"<li><code>{_e(f)}</code>: {_e(r['task'])} of <code>{_e(r.get('checkpoint'))}</code>, "
                        f"options <code>{_e(r.get('options'))}</code></li>" for f, r in evaluations)
        parts.append(f"<details><summary>evaluation options ({len(evaluations)} files)</summary><ul>{items}</ul></details>")
    return section("configs", "Configs and versions", "".join(parts),
                   "The resolved config of every run (click to open) and the versions this report was built with.")


def _failed(what: str, error: Exception, notes: list[str]) -> str:
    reason = f"{type(error).__name__}: {error}"
    notes.append(f"{what}: {reason}")
    log.warning("report: %s not drawn: %s", what, reason)
    return missing(what, reason)


# ------------------------------------------------------------------------------------ assembly


@dataclass
class Views:
    """What the figures show, per method, and why a method is missing from a figure."""

    roc: dict[str, dict[str, gather.Scores]] = field(default_factory=dict)  # task -> method -> scores
    roc_missing: dict[str, list[str]] = field(default_factory=dict)  # task -> reasons
    points: dict[str, tuple] = field(default_factory=dict)  # method -> (xy, categories)
    points_missing: list[str] = field(default_factory=list)
    attention: dict[str, list] = field(default_factory=dict)  # method -> examples
    attention_missing: list[str] = field(default_factory=list)
    grounding: dict[str, list] = field(default_factory=dict)  # method -> stored grounding examples
    grounding_missing: list[str] = field(default_factory=list)


def roc_views(views: Views, sources: list[gather.Source]) -> None:
    """The stored per-image scores of every task that stores them, for each method that ran the task."""
    for task, label in gather.roc_tasks().items():
        if not any(gather.evaluation_of(source, task) for source in sources):
            continue  # nobody ran it: no section, rather than one "not found" per method
        for source in sources:
            got = gather.roc_input(source, task)
            if isinstance(got, str):
                views.roc_missing.setdefault(label, []).append(got)
            else:
                views.roc.setdefault(label, {})[source.name] = got


def grounding_views(views: Views, sources: list[gather.Source]) -> None:
    """The similarity maps each grounding evaluation stored, per method (nothing is recomputed)."""
    for source in sources:
        evaluation = gather.evaluation_of(source, "grounding")
        if evaluation is None:
            continue
        examples = evaluation.get("metrics", {}).get("examples")
        if examples:
            views.grounding[source.name] = examples
        else:
            views.grounding_missing.append(f"the grounding evaluation of {source.name} stored no maps (examples=0)")


def compute_views(runs, manifest, cache_dir, notes: list[str], attention_records: int) -> Views:
    """ROC inputs (stored by the evaluations), t-SNE points and attention maps of every method, one encoder
    loaded at a time."""
    views = Views()
    sources = sorted(gather.sources(runs), key=lambda s: method_rank(s.name))
    roc_views(views, sources)
    grounding_views(views, sources)
    if manifest is None:
        reason = "no manifest: pass --data MANIFEST"
        views.points_missing, views.attention_missing = [reason], [reason]
        return views
    if not any(r.aligns_tokens for r in runs):
        views.attention_missing.append(f"no run's objective is {' or '.join(token_objectives())}")
    records = gather.example_records(manifest, attention_records, with_normal=False)

    def attempt(what: str, missing: list[str], compute, *args):
        try:
            return compute(*args)
        except Exception as e:  # one figure must not cost the whole report; the reason is shown in its place
            _failed(what, e, notes)
            missing.append(f"{what}: {type(e).__name__}: {e}")
            return None

    for source in sources:
        log.info("report: %s (%s)", source.name, source.checkpoint)
        encoder = attempt(f"the encoder of {source.name}", views.points_missing, gather.load, source)
        if encoder is None:
            continue
        xy = attempt(f"t-SNE of {source.name}", views.points_missing,
                     gather.embedding_points, encoder, manifest, cache_dir)
        if xy is not None:
            views.points[source.name] = xy
        if aligns_tokens(source.objective):
            examples = attempt(f"attention maps of {source.name}", views.attention_missing,
                               gather.attention_examples, encoder, manifest, records)
            if examples is not None:
                views.attention[source.name] = examples
        encoder = None  # freed before the next one is loaded
    return views


def build_report(run_dirs: list[str | Path], out: str | Path, results: dict[str, Any] | None = None,
                 data_manifest: str | Path | None = None, title: str | None = None,
                 cache_dir: str | Path | None = None, attention_records: int = 2) -> Path:
    """Write the HTML report of ``run_dirs`` (pretraining runs and/or evaluation folders) to ``out``.

    ``results``: the comparison numbers (schema in ``medgrain.report.results``); default: collected from
    each run's ``eval/*.json``. With ``results`` and no ``run_dirs``, the runs its methods name are used. ``data_manifest``: the manifest the figures read (default: the one the
    evaluations or the runs used). ``cache_dir``: the evaluation's feature cache (its default if None).
    """
    from medgrain import __version__
    from medgrain.data.manifest import read_manifest

    if results is not None:
        validate_results(results)
        named = {str(Path(d).resolve()): name for name, method in results["methods"].items()
                 for d in method.get("run_dirs", [method["run_dir"]] if "run_dir" in method else [])}
        run_dirs = list(run_dirs) or list(named)  # the results file can name its runs itself
    runs = read_runs(run_dirs)
    if results is None:
        results = collect_results(runs)
    else:
        for run in runs:  # the results file's names win, so tables and figures agree
            run.name = named.get(str(run.path.resolve()), run.name)
    title = title or results.get("title") or DEFAULT_TITLE
    path = gather.resolve_manifest(data_manifest, results, runs)
    manifest = read_manifest(path) if path is not None else None

    names = list(dict.fromkeys([*results["methods"], *(r.name for r in runs)]))
    names.sort(key=method_rank)
    colours = plots.method_colours(names)
    runs_by_method: dict[str, list] = {}
    for run in sorted(runs, key=lambda r: (method_rank(r.name), r.seed or 0)):
        runs_by_method.setdefault(run.name, []).append(run)

    notes: list[str] = []
    views = compute_views(runs, manifest, cache_dir, notes, attention_records)
    log.info("report: drawing")
    body = [
        comparison_section(results, colours),
        curves_section(runs_by_method, colours, notes),
        roc_section(views.roc, views.roc_missing, colours, notes),
        attention_section(views.attention, views.attention_missing),
        grounding_section(manifest, views.grounding, views.grounding_missing, notes),
        embeddings_section(views.points, views.points_missing, notes),
        samples_section(manifest),
        configs_section(runs),
    ]
    paragraphs = summary(results) or ["No method could be compared: fewer than two methods have a number."]
    paragraphs += differences_sentences(results.get("differences") or [])
    summary_html = section("summary", "Summary", '<ul class="summary">' +
                           "".join(f"<li>{_e(p)}</li>" for p in paragraphs) + "</ul>",
                           "Read off the comparison tables below; a claim the numbers do not support is stated as such.")
    notes_html = ""
    if notes:
        notes_html = ('<section id="notes" class="notes"><h2>Notes</h2><ul>' +
                      "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></section>")
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in (
        ("summary", "Summary"), ("comparison", "Comparison"), ("curves", "Loss curves"), ("roc", "ROC"),
        ("attention", "Attention"), ("grounding", "Grounding"), ("embeddings", "Embeddings"), ("samples", "Data"), ("configs", "Configs")))
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data_text = f" · data <code>{_e(manifest.path)}</code>" if manifest is not None else ""
    document = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f'<header><div class="wrap"><h1>{_e(title)}</h1>'
        f'<div class="meta">medgrain {_e(__version__)} · {when} · {len(runs)} run(s): '
        f'{_e(", ".join(sorted({r.name for r in runs}, key=method_rank)))}{data_text}</div>'
        f"<nav>{nav}</nav></div></header>"
        f'<main class="wrap">{notes_html}{summary_html}{"".join(body)}</main></body></html>\n'
    )
    out = atomic_write(out, document)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def report_command(run_dirs: list[str | Path], out: str | Path = "report.html", results: str | Path | None = None,
                   data: str | Path | None = None, title: str | None = None,
                   cache_dir: str | Path | None = None) -> Path:
    """``medgrain report RUN_DIR [RUN_DIR ...] --out report.html [--results results.json] [--data MANIFEST]
    [--title TEXT] [--cache-dir DIR]``."""
    loaded = load_results(results) if results is not None else None
    return build_report(run_dirs, out, results=loaded, data_manifest=data, title=title, cache_dir=cache_dir)
