"""``medgrain demo``: every registered objective (CLIP, MGLL, MGCA and MGCA+MGLL, and any other in
``medgrain.losses.objective.OBJECTIVES``) pretrained on the same synthetic data with the same budget,
evaluated on the same tasks next to a random baseline, and shown in one HTML report.

It is the whole pipeline end to end (synthetic data -> pretraining -> evaluation -> report), with
budgets sized for a laptop CPU; a GPU is used when present and ``--epochs`` buys a larger budget.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .io import atomic_write

log = logging.getLogger(__name__)

# The tiny run presets differ only in what the demo sets itself (objective, model preset, output folder),
# so one of them serves every objective, including one that ships no preset of its own.
BASE_CONFIG = "tiny-clip"


# Registered evaluation tasks the demo leaves out, and why (every other task the data allows runs; see
# docs/evaluation.md). Both train a network per label fraction and seed, which on 2 CPU cores costs more than
# pretraining a method; the linear probe and the segmentation decoder already measure the frozen tower.
LEFT_OUT = {
    "finetune": "fine-tuning trains the whole image tower per label fraction and seed: minutes per method on a "
                "CPU; the linear probe measures the frozen features at the same fractions",
    "detect": "detection trains an FCOS head per label fraction and seed: minutes per method on a CPU; "
              "segmentation already measures localisation with the synthetic masks",
}
# Segmentation trains a decoder per label fraction and seed, which costs far more than the other tasks on a
# CPU: the demo runs it on its own, once (the first evaluation seed) at `segment_fractions`.
ON_ITS_OWN = ("segment",)


def suite_tasks() -> tuple[str, ...]:
    """The tasks of the demo's evaluation suite: every registered task but those left out or run on their own."""
    from .evaluation import EVAL_TASKS

    return tuple(t for t in EVAL_TASKS.names() if t not in LEFT_OUT and t not in ON_ITS_OWN)


@dataclass(frozen=True)
class DemoBudget:
    n: int  # synthetic studies (80/10/10 split by patient)
    size: int  # image size in pixels
    epochs: int  # pretraining epochs, the same for every method
    batch_size: int
    lr: float
    eval_epochs: int  # segmentation head training
    eval_seeds: tuple[int, ...]
    fractions: tuple[float, ...]  # label fractions of the linear probe
    segment_fractions: tuple[float, ...]
    resamples: int = 1000  # bootstrap resamples of the paired comparisons


# 3 pretraining epochs: about 24 CPU-seconds per method and epoch on the project's 2-core machine, so that
# `make demo` fits in 15 minutes there (README, "How long the demo takes"); --epochs buys more.
FULL = DemoBudget(n=1200, size=64, epochs=3, batch_size=32, lr=1e-3,
                  eval_epochs=5, eval_seeds=(0, 1, 2), fractions=(0.01, 0.1, 1.0), segment_fractions=(0.1,))
QUICK = DemoBudget(n=240, size=64, epochs=2, batch_size=32, lr=1e-3,
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


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (data-generation workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Stages:
    """The demo's stages, announced with the time elapsed and an ETA, each timed in wall and CPU seconds (the
    CPU time is what a shared machine cannot inflate much: it is how the demo's budget was sized)."""

    def __init__(self, names: list[str]):
        self.names = names
        self.started, self.times = time.time(), []

    def run(self, name: str, fn):
        i = self.names.index(name)
        elapsed = time.time() - self.started
        # ETA from the pretraining and evaluation stages so far (they dominate and are alike per method;
        # the data stage is not, so it is left out of the average).
        done = [t["wall_s"] for t in self.times[1:]]
        eta = f", about {sum(done) / len(done) * (len(self.names) - i) / 60:.1f} min left" if done else ""
        log.info("stage %d/%d: %s  (%.1f min elapsed%s)", i + 1, len(self.names), name, elapsed / 60, eta)
        wall, cpu = time.time(), _cpu_seconds()
        result = fn()
        self.times.append({"stage": name, "wall_s": round(time.time() - wall, 1),
                           "cpu_s": round(_cpu_seconds() - cpu, 1)})
        return result


def _pretrain(method: str, manifest: Path, run_dir: Path, budget: DemoBudget, seed: int, device: str) -> Path:
    from .training.config import load_config
    from .training.loop import train

    cfg = load_config(BASE_CONFIG, [
        f"objective.name={method}", f"data.manifest={manifest}", f"model.preset={_preset(method)}",
        f"model.overrides={{image: {{image_size: {budget.size}}}}}",
        f"train.output_dir={run_dir}", f"train.epochs={budget.epochs}", f"train.batch_size={budget.batch_size}",
        f"train.seed={seed}", f"train.device={device}", f"optim.lr={budget.lr}", "train.tensorboard=false",
        "data.synthetic=null",
    ])
    if (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()  # a fresh run; old curves would mix with the new ones
    result = train(cfg)
    return result.best_checkpoint or result.last_checkpoint


def _evaluate(checkpoint: str, preset: str, manifest, eval_dir: Path, budget: DemoBudget, cache: Path,
              domain: str, device: str) -> None:
    """The suite (every task but those left out) and segmentation, on one encoder loaded once and the manifest
    read once (``manifest``: a ``Manifest``); the suite's frozen features are extracted once per split and
    kind, and cached in ``cache``, where the report reads its embedding maps from."""
    from .evaluation import evaluate_all, segment, task_spec
    from .evaluation.encoder import load_encoder
    from .evaluation.present import print_tables
    from .evaluation.suite import suite_tables

    encoder = load_encoder(checkpoint, preset, budget.eval_seeds[0], None if device == "auto" else device)
    suite = evaluate_all(checkpoint, manifest, eval_dir / "all.json", model=preset, encoder=encoder,
                         tasks=suite_tasks(), seeds=budget.eval_seeds, fractions=budget.fractions,
                         epochs=budget.eval_epochs, cache_dir=cache, domain=domain)
    segmented = segment(checkpoint, manifest, model=preset, encoder=encoder, fractions=budget.segment_fractions,
                        seeds=(budget.eval_seeds[0],), epochs=budget.eval_epochs, patience=budget.eval_epochs,
                        out=eval_dir / "segment.json")
    print_tables([*suite_tables(suite), *task_spec("segment").console(segmented)])


def _differences(runs, results: dict, resamples: int) -> list[dict]:
    """Each method against the random baseline and CLIP: which differences are larger than their intervals."""
    from .report.differences import differences, task_entries

    entries = {run.name: task_entries([record for _, record in run.evaluations]) for run in runs}
    return [d.to_dict() for d in differences(results, entries, resamples=resamples)]


def run_demo(domain: str = "cxr", quick: bool = False, out: str | Path = "runs/demo", *, epochs: int | None = None,
             n: int | None = None, methods: tuple[str, ...] | None = None, seed: int = 0, device: str = "auto",
             report: bool = True) -> dict:
    """Run the demo; returns the results dict also written to ``OUT/results.json``. ``methods``: names of
    registered objectives (default: all, in the registry's order)."""
    from .data.manifest import read_manifest
    from .data.synthetic import generate
    from .losses.objective import OBJECTIVES
    from .report import build_report
    from .report.results import collect_results, read_runs
    from .threads import use_threads

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
    stages = Stages(["data", *[f"pretrain {m}" for m in methods], *[f"evaluate {m}" for m in methods],
                     "evaluate random", "compare", "report"])

    data_dir = out / "data" / f"{domain}-{budget.size}px-n{budget.n}-seed{seed}"
    manifest = data_dir / "manifest.jsonl"

    def make_data():
        if manifest.is_file():
            log.info("reusing %s", manifest)
            return manifest
        # one generating process per core this process may use (the output is the same whatever the count)
        return generate(domain, data_dir, n=budget.n, seed=seed, size=budget.size, workers=use_threads().cores)

    stages.run("data", make_data)
    (out / "demo.json").write_text(json.dumps({"domain": domain, "quick": quick, "seed": seed,
                                               "budget": asdict(budget), "methods": list(methods)}, indent=2))
    checkpoints = {m: stages.run(f"pretrain {m}", lambda m=m: _pretrain(m, manifest, method_dir(out, m), budget,
                                                                        seed, device))
                   for m in methods}
    cache, records = out / "cache", read_manifest(manifest)
    for method in methods:
        stages.run(f"evaluate {method}", lambda m=method: _evaluate(
            str(checkpoints[m]), _preset(m), records, method_dir(out, m) / "eval", budget, cache, domain, device))
    stages.run("evaluate random", lambda: _evaluate("random", "tiny", records, out / "random" / "eval", budget,
                                                    cache, domain, device))

    run_dirs = [method_dir(out, m) for m in methods] + [out / "random"]
    runs = read_runs(run_dirs)
    results = collect_results(runs, title=_title(methods, domain))
    results["data"] = str(manifest)
    results["differences"] = stages.run("compare", lambda: _differences(runs, results, budget.resamples))
    print_differences(results["differences"])

    def write(minutes: float) -> None:
        results["demo"] = {"domain": domain, "quick": quick, "seed": seed, "budget": asdict(budget),
                           "tasks": [*suite_tasks(), *ON_ITS_OWN], "left_out": LEFT_OUT, "minutes": round(minutes, 2),
                           "stages": stages.times, "threads": asdict(use_threads())}
        atomic_write(out / "results.json", json.dumps(results, indent=2))

    write((time.time() - stages.started) / 60)  # kept even if the report fails
    if report:
        html = stages.run("report", lambda: build_report(run_dirs, out / "report.html", results=results,
                                                         data_manifest=manifest, cache_dir=cache))
        log.info("report: %s", html)
    minutes = (time.time() - stages.started) / 60
    write(minutes)
    log.info("results: %s  (%.1f min)", out / "results.json", minutes)
    return results


def print_differences(rows: list[dict]) -> None:
    """The differences as a console table; ``*`` marks one larger than its interval."""
    from .evaluation.present import Table, print_tables
    from .report.differences import describe

    table = [[f"{d['table']}: {d['column']}", f"{d['method']} vs {d['against']}", describe(d),
              f"{'* ' if d['marked'] else ''}{d['verdict']}", d["how"]] for d in rows]
    print_tables([Table("differences against the random baseline and CLIP (* larger than its interval)",
                        ["metric", "methods", "difference [95% CI]", "verdict", "how"], table)])
