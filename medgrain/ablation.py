"""``medgrain ablate mgll|mgca``: do the papers' claims hold?

Every variant of a suite is pretrained with the same budget and seeds on the same data, evaluated on the
same tasks, and each ordering a paper claims is tested on the results:

- MGLL (Li et al., "Boosting Medical Visual Understanding From Multi-Granular Language Learning", ICLR 2026,
  arXiv:2511.15943): each part of the loss helps (RFMiD
  linear-probe AUC: CLIP 44.66, point-wise only 70.34, soft CLIP only 67.86, both 75.73, full MGLL 79.62),
  more granularities help (MIDRC-XR-Portable: 1, 2, 3 levels 80.54, 82.92, 83.86), and 30% of the
  granularity texts missing costs almost nothing (79.61 against 79.62).
- MGCA (Wang et al., "Multi-Granularity Cross-modal Alignment", NeurIPS 2022, arXiv:2210.06044): each
  alignment level helps (instance < + token < + token + prototype, linear probe at 1% and segmentation),
  and token-level alignment is what localises. The paper's ablation numbers could not be read from its
  published text, so only its orderings are shown.

A claim "A beats B" is judged by a paired comparison over seeds and test images: for metrics with stored
per-image scores (linear probe, zero-shot), the mean over seeds of metric(A) - metric(B), with test images
resampled together for every run (``paired_bootstrap``); for the others (segmentation, grounding), a
t-interval over the seeds' paired differences. It "held" when the 95% interval is above 0, "reversed"
when below, and "cannot be told apart" otherwise. A closeness claim ("costs almost nothing") held when
the interval lies within +-``CLOSE`` of 0.

Each suite also judges its budget (``LEARNS``): whether pretraining beats the random-initialised tower
on the same test images. Where it does not, no ordering between variants at that budget says much.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write
from .registry import Registry

log = logging.getLogger(__name__)

CLOSE = 0.02  # AUROC: what "costs almost nothing" allows
FLOOR, CEILING = "random init (floor)", "supervised (ceiling)"  # the reference rows of every table
LEARNS = "the budget learns: pretraining beats the random floor"  # not a paper's claim; the budget's check


@dataclass(frozen=True)
class Variant:
    name: str
    objective: str
    options: dict[str, Any] = field(default_factory=dict)  # overrides under objective., e.g. mgll.alpha_kl
    granularities: int | None = None  # keep the first (coarsest) k granularities
    drop_texts: float | None = None  # data.drop_texts rate, over every granularity
    paper: str = ""  # the paper's number(s) for this variant, with where they come from


@dataclass(frozen=True)
class Claim:
    better: str
    worse: str
    metric: str  # a column of the table (see METRICS)
    source: str
    kind: str = "better"  # or "close": |better - worse| within CLOSE


@dataclass(frozen=True)
class Suite:
    name: str
    variants: tuple[Variant, ...]
    claims: tuple[Claim, ...]
    paper_metric: str


@dataclass(frozen=True)
class Budget:
    """What every variant gets: pretraining epochs, batch, learning rate, image size and preset, and the
    evaluation's segmentation epochs. ``toy`` is for tests; ``cpu`` is the documented run."""

    epochs: int
    batch_size: int
    lr: float
    image_size: int
    preset: str  # model preset of the mgll suite; the mgca suite uses preset + "-mgca" when registered
    segment_epochs: int
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    segment_fractions: tuple[float, ...] = (0.1, 1.0)
    stop_after_steps: int | None = None
    ceiling_epochs: int = 10  # the supervised ceiling: the image tower fine-tuned on 100% of the labels


# "cpu": the documented run on 2 CPU cores. The tiny preset (ResNet-18, random) at 128 px gives MGCA an
# 8x8 token grid (the stride-16 stage) where the demo's 64 px gives 4x4; its 2-layer text tower keeps a
# step at about 1.5 s of CPU for 32 images. "pretrained": the offline pretrained towers (ImageNet
# EfficientNet-Lite0, MiniLM-L6) at the same size; MiniLM on the reports makes a step about 10x dearer on
# a CPU (0.56 samples/s measured on a shared 2-core machine), so it is the budget for a GPU.
BUDGETS = {
    "toy": Budget(epochs=1, batch_size=8, lr=1e-3, image_size=32, preset="tiny", segment_epochs=1,
                  fractions=(1.0,), segment_fractions=(1.0,), stop_after_steps=1, ceiling_epochs=1),
    "cpu": Budget(epochs=2, batch_size=32, lr=1e-3, image_size=128, preset="tiny", segment_epochs=2),
    # "cpu-long": 3 epochs, meant for 1,200 images (`medgrain synth --n 1200`): 87 steps where "cpu" on 400
    # images takes 20, and a 121-image test split; about 3x the cpu budget's time per run.
    "cpu-long": Budget(epochs=3, batch_size=32, lr=1e-3, image_size=128, preset="tiny", segment_epochs=2),
    "pretrained": Budget(epochs=5, batch_size=64, lr=3e-4, image_size=128, preset="effnet-minilm", segment_epochs=5),
}

ABLATIONS: Registry[Suite] = Registry("ablation suite")

MGLL_LP = "RFMiD linear-probe AUC"
ABLATIONS.add("mgll", Suite(
    "mgll",
    (
        Variant("CLIP", "clip", paper=f"44.66 ({MGLL_LP})"),
        Variant("soft CLIP only", "mgll", {"mgll.alpha_point": 0.0, "mgll.alpha_kl": 0.0}, paper="67.86"),
        Variant("point-wise only", "mgll", {"mgll.alpha_clip": 0.0, "mgll.alpha_kl": 0.0}, paper="70.34"),
        Variant("soft CLIP + point-wise", "mgll", {"mgll.alpha_kl": 0.0}, paper="75.73"),
        Variant("MGLL", "mgll", paper="79.62; 83.86 with 3 levels (MIDRC-XR-Portable)"),
        Variant("MGLL, 1 granularity", "mgll", granularities=1, paper="80.54 (MIDRC-XR-Portable)"),
        Variant("MGLL, 2 granularities", "mgll", granularities=2, paper="82.92 (MIDRC-XR-Portable)"),
        Variant("MGLL, 30% texts removed", "mgll", drop_texts=0.3, paper="79.61"),
    ),
    (
        Claim("point-wise only", "CLIP", "linear probe 100%", "MGLL loss ablation (RFMiD)"),
        Claim("soft CLIP only", "CLIP", "linear probe 100%", "MGLL loss ablation (RFMiD)"),
        Claim("soft CLIP + point-wise", "point-wise only", "linear probe 100%", "MGLL loss ablation (RFMiD)"),
        Claim("soft CLIP + point-wise", "soft CLIP only", "linear probe 100%", "MGLL loss ablation (RFMiD)"),
        Claim("MGLL", "soft CLIP + point-wise", "linear probe 100%", "MGLL loss ablation (RFMiD)"),
        Claim("MGLL", "CLIP", "linear probe 100%", "MGLL loss ablation (RFMiD): 79.62 against 44.66"),
        Claim("MGLL, 2 granularities", "MGLL, 1 granularity", "linear probe 100%", "MGLL granularity ablation"),
        Claim("MGLL", "MGLL, 2 granularities", "linear probe 100%", "MGLL granularity ablation"),
        Claim("MGLL, 30% texts removed", "MGLL", "linear probe 100%", "MGLL missing-label robustness", "close"),
        Claim("MGLL, 30% texts removed", "CLIP", "linear probe 100%", "MGLL missing-label robustness"),
        Claim("MGLL", "CLIP", "zero-shot", "MGLL's soft targets (no zero-shot number in the paper)"),
        Claim("CLIP", FLOOR, "linear probe 100%", LEARNS),
        Claim("MGLL", FLOOR, "linear probe 100%", LEARNS),
        Claim("MGLL", FLOOR, "linear probe 10%", LEARNS),
    ),
    "linear-probe AUC, %",
))

MGCA_SRC = "MGCA ablation (numbers not recovered)"
ABLATIONS.add("mgca", Suite(
    "mgca",
    (
        Variant("ITA", "mgca", {"mgca.lambda_tca": 0.0, "mgca.lambda_cpa": 0.0}),
        Variant("ITA + TCA", "mgca", {"mgca.lambda_cpa": 0.0}),
        Variant("ITA + CPA", "mgca", {"mgca.lambda_tca": 0.0}),
        Variant("MGCA (ITA + TCA + CPA)", "mgca"),
        Variant("MGCA+MGLL", "mgca+mgll"),
    ),
    (
        Claim("ITA + TCA", "ITA", "linear probe 1%", MGCA_SRC),
        Claim("ITA + CPA", "ITA", "linear probe 1%", MGCA_SRC),
        Claim("MGCA (ITA + TCA + CPA)", "ITA + TCA", "linear probe 1%", MGCA_SRC),
        Claim("MGCA (ITA + TCA + CPA)", "ITA + CPA", "linear probe 1%", MGCA_SRC),
        Claim("MGCA (ITA + TCA + CPA)", "ITA", "segmentation 100%", MGCA_SRC),
        Claim("ITA + TCA", "ITA", "grounding CNR", "MGCA: token-level alignment localises"),
        Claim("ITA", FLOOR, "linear probe 100%", LEARNS),
        Claim("MGCA (ITA + TCA + CPA)", FLOOR, "linear probe 100%", LEARNS),
        Claim("MGCA (ITA + TCA + CPA)", FLOOR, "segmentation 100%", LEARNS),
    ),
    "not recovered",
))


# ------------------------------------------------------------------------------------ running


def _pct(fraction: float) -> str:
    from .evaluation.fractions import fraction_name

    return fraction_name(fraction)


def metric_columns(budget: Budget) -> list[str]:
    """The table's columns, in order; the claims name these."""
    return ([f"linear probe {_pct(f)}" for f in budget.fractions] + ["zero-shot"]
            + [f"segmentation {_pct(f)}" for f in budget.segment_fractions] + ["grounding CNR"])


def _preset(suite: Suite, budget: Budget) -> str:
    from .models import list_models

    mgca = f"{budget.preset}-mgca"
    return mgca if suite.name == "mgca" and mgca in list_models() else budget.preset


def _config(suite: Suite, variant: Variant, budget: Budget, manifest: Path, granularities: list[str],
            seed: int, run_dir: Path, device: str):
    from .training.config import load_config

    overrides = [
        f"data.manifest={manifest}", "data.synthetic=null", f"model.preset={_preset(suite, budget)}",
        f"model.overrides={{image: {{image_size: {budget.image_size}}}}}", f"train.output_dir={run_dir}",
        f"train.epochs={budget.epochs}", f"train.batch_size={budget.batch_size}", f"train.seed={seed}",
        f"train.device={device}", f"optim.lr={budget.lr}", "train.tensorboard=false", "train.progress=false",
        *[f"objective.{k}={v}" for k, v in variant.options.items()],
    ]
    if budget.stop_after_steps:
        overrides.append(f"train.stop_after_steps={budget.stop_after_steps}")
    if variant.granularities is not None:
        overrides.append(f"data.granularities=[{', '.join(granularities[:variant.granularities])}]")
    if variant.drop_texts is not None:
        overrides.append(f"data.drop_texts={{rate: {variant.drop_texts}, seed: {seed}, "
                         f"granularities: [{', '.join(granularities)}]}}")
    return load_config(f"tiny-{variant.objective.replace('+', '-')}", overrides)


def _run_metrics(record: dict[str, Any], fraction: str | None, key: str) -> float | None:
    metrics = record["metrics"]
    if fraction is not None:
        metrics = metrics["fractions"][fraction]["runs"][0]["metrics"]
    value = metrics.get("macro", metrics).get(key)
    return None if value is None else float(value)



def evaluate_run(checkpoint: Path | str, manifest, budget: Budget, seed: int, cache: Path,
                 model: str = "tiny") -> dict[str, Any]:
    """One pretrained run on every task the data allows: ``{"metrics": {column: value}, "scores": {column:
    per-image scores}, "skipped": {task: why}}``. The label draw of each fraction is seeded by ``seed``.
    ``checkpoint="random"`` is the floor: the preset ``model`` with random weights (seeded by ``seed``)."""
    from dataclasses import replace

    from .evaluation.registry import EVAL_TASKS, open_context, run_task, task_spec

    ctx = open_context(str(checkpoint), manifest, seeds=(seed,), cache_dir=cache, fractions=budget.fractions,
                       model=model)
    out: dict[str, Any] = {"metrics": {}, "scores": {}, "skipped": {}}

    def run(task: str, column: str, key: str, fraction: float | None = None, **options):
        if task not in EVAL_TASKS:
            out["skipped"][column] = f"no task {task!r} in this version"
            return
        why = task_spec(task).available and task_spec(task).available(ctx)
        if why:
            out["skipped"][column] = why
            return
        record = run_task(task, replace(ctx, fractions=(fraction,)) if fraction else ctx, options)
        out["metrics"][column] = _run_metrics(record, _pct(fraction) if fraction else None, key)
        if record.get("scores"):
            out["scores"][column] = record["scores"]

    for f in budget.fractions:
        run("linear-probe", f"linear probe {_pct(f)}", "auroc", f)
    run("zero-shot", "zero-shot", "auroc", mode="pairs")
    for f in budget.segment_fractions:
        run("segment", f"segmentation {_pct(f)}", "dice", f, epochs=budget.segment_epochs,
            patience=budget.segment_epochs)
    run("grounding", "grounding CNR", "cnr")
    return out


def supervised_ceiling(manifest, budget: Budget, seed: int, cache: Path, model: str) -> dict[str, Any]:
    """The same image tower, from its initial weights, trained on 100% of the training labels at the budget's
    learning rate for ``ceiling_epochs`` (the best validation epoch kept): what a
    method's linear probe at 100% could at best approach. Reported in the linear-probe 100% column (it is
    fine-tuning, not a probe) with its per-image scores."""
    from dataclasses import replace

    from .evaluation.registry import open_context, run_task

    ctx = open_context("random", manifest, seeds=(seed,), cache_dir=cache, fractions=(1.0,), model=model)
    # From random weights at the pretraining's learning rate: fine-tuning's default (1e-4, for pretrained
    # weights) left the tower below the random linear probe at the cpu budget (0.63 against 0.80 at 1e-3).
    record = run_task("finetune", replace(ctx, fractions=(1.0,)),
                      {"epochs": budget.ceiling_epochs, "patience": budget.ceiling_epochs, "lr": budget.lr})
    column = f"linear probe {_pct(1.0)}"
    out = {"metrics": {column: _run_metrics(record, _pct(1.0), "auroc")}, "scores": {}, "skipped": {}}
    if record.get("scores"):
        out["scores"][column] = record["scores"]
    return out


def run_ablation(suite_name: str, data: str | Path, out: str | Path, *, seeds: tuple[int, ...] = (0, 1, 2),
                 budget: str | Budget = "cpu", device: str = "auto", bootstrap: int = 1000,
                 variants: tuple[str, ...] | None = None, finished_only: bool = False) -> dict[str, Any]:
    """Pretrain and evaluate every variant of ``suite_name`` for every seed (runs already finished in
    ``out`` are reused), then compare; writes ``OUT/ablation.json`` and ``OUT/table.md``, returns the former.
    ``finished_only``: train nothing; tabulate the runs already finished (a suite stopped early), each
    variant over the seeds it has and each claim over the seeds both of its variants have."""
    import time

    from .data.manifest import read_manifest

    suite = ABLATIONS.get(suite_name)
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    chosen = [v for v in suite.variants if variants is None or v.name in variants]
    manifest_path, out = Path(data).resolve(), Path(out)
    manifest = read_manifest(manifest_path)
    started, runs = time.time(), {}
    # Seed-major: a suite stopped early has every variant at the first seeds, not some variants at all.
    for seed in seeds:
        for variant in chosen:
            run_dir = out / _slug(variant.name) / f"seed{seed}"
            if finished_only and not (run_dir / "evaluation.json").is_file():
                continue
            runs.setdefault(variant.name, {})[seed] = _pretrain_and_evaluate(
                suite, variant, budget, manifest, seed, run_dir, device)
    if not runs:
        raise FileNotFoundError(f"{out}: no finished run of the {suite_name} suite to tabulate")
    for seed in seeds:  # the random floor and the supervised ceiling, with the same seeds
        for name, make in ((FLOOR, lambda s: evaluate_run("random", manifest, budget, s, out / "cache",
                                                          _preset(suite, budget))),
                           (CEILING, lambda s: supervised_ceiling(manifest, budget, s, out / "cache",
                                                                  _preset(suite, budget)))):
            done = out / _slug(name) / f"seed{seed}" / "evaluation.json"
            if done.is_file():
                runs.setdefault(name, {})[seed] = json.loads(done.read_text())
            elif not finished_only:
                runs.setdefault(name, {})[seed] = make(seed)
                done.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(done, json.dumps(runs[name][seed]))
    result = summarise(suite, budget, runs, bootstrap)
    result.update({"data": str(manifest_path), "budget": asdict(budget),
                   "seeds": sorted({s for by_seed in runs.values() for s in by_seed}),
                   "minutes": round((time.time() - started) / 60, 1)})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "ablation.json", json.dumps(result, indent=2))
    atomic_write(out / "table.md", format_tables(result))
    return result


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def _pretrain_and_evaluate(suite, variant, budget, manifest, seed: int, run_dir: Path, device: str) -> dict:
    from .training.loop import train

    done = run_dir / "evaluation.json"
    if done.is_file():
        log.info("%s seed %d: reusing %s", variant.name, seed, done)
        return json.loads(done.read_text())
    cfg = _config(suite, variant, budget, manifest.path, manifest.granularities, seed, run_dir, device)
    log.info("%s seed %d: pretraining", variant.name, seed)
    trained = train(cfg)
    checkpoint = trained.best_checkpoint or trained.last_checkpoint
    log.info("%s seed %d: evaluating %s", variant.name, seed, checkpoint)
    result = evaluate_run(checkpoint, manifest, budget, seed, run_dir.parent.parent / "cache")
    atomic_write(done, json.dumps(result))  # a rerun trusts this file: it must be whole
    return result


# ------------------------------------------------------------------------------------ comparing


def _macro_auroc_over_seeds(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean over seeds of the macro AUROC, for resampled scores (B, n, K, F) and labels (B, n, F)."""
    from .evaluation.bootstrap import auroc_rows, macro

    per_seed = [macro(auroc_rows)(scores[:, :, k, :], labels) for k in range(scores.shape[2])]
    return np.mean(per_seed, axis=0)


def _stacked(per_seed: list[dict]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-image scores of K runs on one test set as (n, K, F), with the labels (n, F) and the ids."""
    ids = per_seed[0]["ids"]
    if any(s["ids"] != ids for s in per_seed):
        raise ValueError("runs were scored on different test images; a paired comparison needs the same test set")
    scores = np.stack([np.asarray(s["scores"], dtype=np.float64) for s in per_seed], axis=1)
    return scores, np.asarray(per_seed[0]["labels"]), ids


def run_interval(scores: dict | None, resamples: int) -> list[float] | None:
    """The 95% bootstrap interval over test images of one run's macro AUROC (None without scores)."""
    from .evaluation.bootstrap import Bootstrap, bootstrap_interval

    if not scores or resamples < 1:
        return None
    stacked, labels, _ = _stacked([scores])
    return bootstrap_interval(_macro_auroc_over_seeds, [stacked, labels], Bootstrap(resamples=resamples))


def compare(a: list[dict], b: list[dict], column: str, resamples: int) -> dict[str, Any]:
    """See ``compare_seeds``; ``a`` and ``b`` are the runs of the same seeds, in the same order."""
    return compare_seeds(a, b, column, resamples)


def _common(runs: dict[str, dict[int, dict]], a: str, b: str) -> tuple[list[dict], list[dict]]:
    seeds = sorted(set(runs[a]) & set(runs[b]))
    return [runs[a][s] for s in seeds], [runs[b][s] for s in seeds]


def compare_seeds(a: list[dict], b: list[dict], column: str, resamples: int) -> dict[str, Any]:
    """metric(A) - metric(B) over the seeds both have: paired over test images where every run stored its
    per-image scores, else a t-interval over the seeds' paired differences."""
    from scipy import stats

    from .evaluation.bootstrap import Bootstrap, paired_bootstrap

    pairs = [(x, y) for x, y in zip(a, b) if x["metrics"].get(column) is not None and y["metrics"].get(column) is not None]
    if not pairs:
        return {"difference": None, "difference_ci": None, "p_value": None, "method": "not measured"}
    if all(column in x["scores"] and column in y["scores"] for x, y in pairs) and resamples > 0:
        sa, labels, _ = _stacked([x["scores"][column] for x, _ in pairs])
        sb, labels_b, _ = _stacked([y["scores"][column] for _, y in pairs])
        out = paired_bootstrap(_macro_auroc_over_seeds, [sa, labels], [sb, labels_b], Bootstrap(resamples=resamples))
        return {**out, "method": f"paired bootstrap over test images, {len(pairs)} seed(s)"}
    diffs = np.array([x["metrics"][column] - y["metrics"][column] for x, y in pairs])
    if len(diffs) < 2:
        return {"difference": float(diffs.mean()), "difference_ci": None, "p_value": None,
                "method": "one seed: no interval"}
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if diffs.std(ddof=1) > 0 else None
    return {"difference": float(diffs.mean()), "difference_ci": [float(diffs.mean() - half), float(diffs.mean() + half)],
            "p_value": p, "method": f"t-interval over {len(diffs)} seeds"}


def verdict(claim: Claim, comparison: dict[str, Any]) -> str:
    ci = comparison["difference_ci"]
    if ci is None:
        return "cannot be told apart" if comparison["difference"] is not None else "not measured"
    low, high = ci
    if claim.kind == "close":
        if -CLOSE <= low and high <= CLOSE:
            return "held"
        return "did not hold" if (low > CLOSE or high < -CLOSE) else "cannot be told apart"
    return "held" if low > 0 else ("reversed" if high < 0 else "cannot be told apart")


def summarise(suite: Suite, budget: Budget, runs: dict[str, dict[int, dict]], resamples: int) -> dict:
    """The table of ``runs[variant][seed]`` (each from ``evaluate_run``) and the suite's claims judged."""
    columns = metric_columns(budget)
    rows = []
    references = [Variant(FLOOR, "", paper="–"), Variant(CEILING, "", paper="–")]
    for variant in (v for v in [*suite.variants, *references] if v.name in runs):
        seeds = sorted(runs[variant.name])
        per_seed = [runs[variant.name][s] for s in seeds]
        cells = {}
        for column in columns:
            values = [r["metrics"].get(column) for r in per_seed]
            defined = [v for v in values if v is not None]
            cells[column] = {
                "mean": float(np.mean(defined)) if defined else None,
                "std": float(np.std(defined, ddof=1)) if len(defined) > 1 else (0.0 if defined else None),
                "values": values,
                "intervals": [run_interval(r["scores"].get(column), resamples) for r in per_seed],
            }
        skipped = {c: why for r in per_seed for c, why in r.get("skipped", {}).items()}
        rows.append({"variant": variant.name, "paper": variant.paper, "seeds": seeds, "cells": cells,
                     "skipped": skipped})
    _gap_closed(rows, f"linear probe {_pct(1.0)}")
    claims = []
    for claim in suite.claims:
        if claim.better in runs and claim.worse in runs:
            comparison = compare(*_common(runs, claim.better, claim.worse), claim.metric, resamples)
            claims.append({**asdict(claim), **comparison, "verdict": verdict(claim, comparison)})
    return {"suite": suite.name, "paper_metric": suite.paper_metric, "columns": columns, "rows": rows, "claims": claims}


def _gap_closed(rows: list[dict], column: str) -> None:
    """Each row's ``gap_closed``: (mean - floor) / (ceiling - floor) on ``column``, the share of the gap
    between the random tower and the supervised one that the row's pretraining closes (None without both
    references, or when the ceiling is not above the floor)."""
    mean = {r["variant"]: r["cells"].get(column, {}).get("mean") for r in rows}
    floor, ceiling = mean.get(FLOOR), mean.get(CEILING)
    for row in rows:
        value = mean[row["variant"]]
        usable = None not in (floor, ceiling, value) and ceiling > floor
        row["gap_closed"] = (value - floor) / (ceiling - floor) if usable else None


def _cell(cell: dict[str, Any]) -> str:
    if cell["mean"] is None:
        return "–"
    return f"{cell['mean']:.3f} ± {cell['std']:.3f}" if len(cell["values"]) > 1 else f"{cell['mean']:.3f}"


def _interval(ci) -> str:
    return "–" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci[0] < 0 else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def format_tables(result: dict[str, Any]) -> str:
    """The suite's tables as Markdown: mean ± std over seeds, each run's bootstrap interval, the claims."""
    columns = result["columns"]
    lines = [f"## {result['suite'].upper()} ablation: seeds {result['seeds']}, budget {result['budget']}", "",
             f"| variant | seeds | paper ({result['paper_metric']}) | " + " | ".join(columns)
             + " | gap closed (linear probe 100%) |",
             "|---|---|---|" + "---:|" * (len(columns) + 1)]
    for row in result["rows"]:
        closed = row.get("gap_closed")
        lines.append(f"| {row['variant']} | {len(row['seeds'])} | {row['paper'] or '–'} | "
                     + " | ".join(_cell(row["cells"][c]) for c in columns)
                     + f" | {'–' if closed is None else f'{closed:.0%}'} |")
    lines += ["", "Gap closed: (mean - floor) / (ceiling - floor), the share of the way from the random tower's "
              "linear probe to the supervised tower that the pretraining goes (means over seeds)."]
    lines += ["", "Each run's 95% bootstrap interval over test images (macro AUROC; columns with per-image scores):", "",
              "| variant | seed | " + " | ".join(c for c in columns if c.startswith(("linear", "zero"))) + " |",
              "|---|---:|" + "---|" * sum(c.startswith(("linear", "zero")) for c in columns)]
    for row in result["rows"]:
        for k, seed in enumerate(row["seeds"]):
            lines.append(f"| {row['variant']} | {seed} | " + " | ".join(
                _interval(row["cells"][c]["intervals"][k]) for c in columns if c.startswith(("linear", "zero"))) + " |")
    lines += ["", "| claim | metric | source | difference (95% CI) | p | how | verdict |", "|---|---|---|---|---:|---|---|"]
    for c in result["claims"]:
        relation = "≈" if c["kind"] == "close" else ">"
        diff = "–" if c["difference"] is None else f"{c['difference']:+.3f} {_interval(c['difference_ci'])}"
        p = "–" if c["p_value"] is None else f"{c['p_value']:.3f}"
        lines.append(f"| {c['better']} {relation} {c['worse']} | {c['metric']} | {c['source']} | {diff} | {p} | "
                     f"{c['method']} | **{c['verdict']}** |")
    skipped = {c: why for row in result["rows"] for c, why in row["skipped"].items()}
    if skipped:
        lines += ["", "Not measured: " + "; ".join(f"{c} ({why})" for c, why in skipped.items())]
    return "\n".join(lines) + "\n"
