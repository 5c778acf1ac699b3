"""``medgrain demo``: every registered objective (CLIP, MGLL, MGCA and MGCA+MGLL, and any other in
``medgrain.losses.objective.OBJECTIVES``) pretrained on the same synthetic data with the same budget,
evaluated on the same tasks next to a random baseline, and shown in one HTML report.

It is the whole pipeline end to end (synthetic data -> pretraining -> evaluation -> report), with
budgets sized for a laptop CPU; a GPU is used when present and ``--epochs`` buys a larger budget.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .io import atomic_write

log = logging.getLogger(__name__)

# The tiny run presets differ only in what the demo sets itself (objective, model preset, output folder),
# so one of them serves every objective, including one that ships no preset of its own.
BASE_CONFIG = "tiny-clip"


@dataclass(frozen=True)
class DemoBudget:
    n: int  # synthetic studies (80/10/10 split by patient)
    size: int  # image size in pixels
    epochs: int  # pretraining epochs, the same for every method
    batch_size: int
    lr: float
    eval_tasks: tuple[str, ...]
    eval_epochs: int  # segmentation head training
    eval_seeds: tuple[int, ...]
    fractions: tuple[float, ...]  # label fractions of the linear probe
    segment_fractions: tuple[float, ...]


# Segmentation trains a decoder per label fraction and seed, which costs far more than the other
# tasks on a CPU: the demo trains it once (seed 0) at `segment_fractions`; the other tasks use every seed.
FULL = DemoBudget(n=1200, size=64, epochs=6, batch_size=32, lr=1e-3,
                  eval_tasks=("zero-shot", "retrieval", "linear-probe", "grounding"),
                  eval_epochs=5, eval_seeds=(0, 1, 2), fractions=(0.01, 0.1, 1.0), segment_fractions=(0.1,))
QUICK = DemoBudget(n=240, size=64, epochs=2, batch_size=32, lr=1e-3,
                   eval_tasks=("zero-shot", "retrieval", "linear-probe", "grounding"),
                   eval_epochs=1, eval_seeds=(0,), fractions=(0.1, 1.0), segment_fractions=(0.1,))


def method_dir(out: Path, method: str) -> Path:
    return out / method.replace("+", "-")


def _preset(method: str) -> str:
    """The tiny model preset of an objective: MGCA's heads for one that aligns tokens."""
    from .losses.objective import OBJECTIVES

    return "tiny-mgca" if OBJECTIVES.get(method).aligns_tokens else "tiny"


def _title(methods: tuple[str, ...], domain: str) -> str:
    names = [m.upper() for m in methods]
    listed = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]
    return f"{listed} on synthetic {domain} data"


def run_demo(domain: str = "cxr", quick: bool = False, out: str | Path = "runs/demo", *, epochs: int | None = None,
             n: int | None = None, methods: tuple[str, ...] | None = None, seed: int = 0, device: str = "auto",
             report: bool = True) -> dict:
    """Run the demo; returns the results dict also written to ``OUT/results.json``. ``methods``: names of
    registered objectives (default: all, in the registry's order)."""
    from .data.synthetic import generate
    from .evaluation import evaluate_all, segment, task_spec
    from .evaluation.present import print_tables
    from .evaluation.suite import suite_tables
    from .losses.objective import OBJECTIVES
    from .report import build_report
    from .report.results import collect_results, read_runs
    from .training.config import load_config
    from .training.loop import train

    methods = tuple(OBJECTIVES.names()) if methods is None else tuple(methods)
    unknown = sorted(set(methods) - set(OBJECTIVES))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {OBJECTIVES.names()}")
    if not methods:
        raise ValueError("no methods to compare: name at least one objective")
    budget = QUICK if quick else FULL
    budget = replace(budget, epochs=epochs or budget.epochs, n=n or budget.n)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = ["data", *[f"pretrain {m}" for m in methods], *[f"evaluate {m}" for m in methods],
              "evaluate random", "report"]
    started = time.time()
    durations: list[float] = []

    def stage(i: int, name: str) -> None:
        elapsed = time.time() - started
        # ETA from the pretraining and evaluation stages so far (they dominate and are alike per method;
        # the data stage is not, so it is left out of the average).
        done = durations[1:]
        left = (sum(done) / len(done)) * (len(stages) - i) if done else None
        eta = f", about {left / 60:.1f} min left" if left is not None else ""
        log.info("stage %d/%d: %s  (%.1f min elapsed%s)", i + 1, len(stages), name, elapsed / 60, eta)

    def timed(i: int, name: str, fn):
        stage(i, name)
        t0 = time.time()
        result = fn()
        durations.append(time.time() - t0)
        return result

    data_dir = out / "data" / f"{domain}-{budget.size}px-n{budget.n}-seed{seed}"
    manifest = data_dir / "manifest.jsonl"

    def make_data():
        if manifest.is_file():
            log.info("reusing %s", manifest)
            return manifest
        return generate(domain, data_dir, n=budget.n, seed=seed, size=budget.size, workers=2)

    timed(0, "data", make_data)
    (out / "demo.json").write_text(json.dumps({"domain": domain, "quick": quick, "seed": seed,
                                               "budget": asdict(budget), "methods": list(methods)}, indent=2))

    checkpoints: dict[str, Path] = {}
    for k, method in enumerate(methods):
        run_dir = method_dir(out, method)
        cfg = load_config(BASE_CONFIG, [
            f"objective.name={method}", f"data.manifest={manifest}", f"model.preset={_preset(method)}",
            f"model.overrides={{image: {{image_size: {budget.size}}}}}",
            f"train.output_dir={run_dir}", f"train.epochs={budget.epochs}", f"train.batch_size={budget.batch_size}",
            f"train.seed={seed}", f"train.device={device}", f"optim.lr={budget.lr}", "train.tensorboard=false",
            "data.synthetic=null",
        ])
        if (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()  # a fresh run; old curves would mix with the new ones
        result = timed(1 + k, f"pretrain {method}", lambda cfg=cfg: train(cfg))
        checkpoints[method] = result.best_checkpoint or result.last_checkpoint

    cache = out / "cache"
    common = dict(tasks=budget.eval_tasks, seeds=budget.eval_seeds, fractions=budget.fractions,
                  epochs=budget.eval_epochs, cache_dir=cache, domain=domain)

    def evaluate(checkpoint: str, preset: str, eval_dir: Path) -> None:
        suite = evaluate_all(checkpoint, manifest, eval_dir / "all.json", model=preset, **common)
        segmented = segment(checkpoint, manifest, model=preset, fractions=budget.segment_fractions,
                            seeds=(budget.eval_seeds[0],), epochs=budget.eval_epochs, patience=budget.eval_epochs,
                            out=eval_dir / "segment.json")
        print_tables([*suite_tables(suite), *task_spec("segment").console(segmented)])

    base = 1 + len(methods)
    for k, method in enumerate(methods):
        timed(base + k, f"evaluate {method}",
              lambda m=method: evaluate(str(checkpoints[m]), _preset(m), method_dir(out, m) / "eval"))
    timed(base + len(methods), "evaluate random", lambda: evaluate("random", "tiny", out / "random" / "eval"))

    runs = [method_dir(out, m) for m in methods] + [out / "random"]
    results = collect_results(read_runs(runs), title=_title(methods, domain))
    results["data"] = str(manifest)
    results["demo"] = {"domain": domain, "quick": quick, "seed": seed, "budget": asdict(budget),
                       "minutes": round((time.time() - started) / 60, 2)}
    atomic_write(out / "results.json", json.dumps(results, indent=2))
    if report:
        html = timed(len(stages) - 1, "report",
                     lambda: build_report(runs, out / "report.html", results=results, data_manifest=manifest,
                                          cache_dir=cache))
        log.info("report: %s", html)
    log.info("results: %s  (%.1f min)", out / "results.json", (time.time() - started) / 60)
    return results
