"""The whole downstream suite on one checkpoint and one manifest, with defaults sized for the data,
written as one JSON (rewritten after every task, so a long run that stops keeps what it finished)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from medgrain.evaluation.common import (
    Result,
    load_encoder,
    note,
    open_manifest,
    print_table,
    split_sizes,
    write_result,
)
from medgrain.evaluation.detection import detect
from medgrain.evaluation.finetune import finetune
from medgrain.evaluation.fractions import FRACTIONS, fraction_name
from medgrain.evaluation.linear_probe import linear_probe
from medgrain.evaluation.metrics import require_coco_evaluation
from medgrain.evaluation.retrieval import retrieval
from medgrain.evaluation.segmentation import segment
from medgrain.evaluation.zeroshot import zero_shot

TASKS = ("zero-shot", "retrieval", "linear-probe", "finetune", "segment", "detect")


def sized_defaults(manifest) -> dict:
    """Options that follow the size of the training split.

    - fractions: those whose nominal size ``ceil(f * N)`` reaches 2 records per finding; below that
      a draw is only the positive/negative rule's picks (fractions.py), not a sample of the split;
    - epochs: about 20,000 training images seen at 100% (50 for small data, as in the papers, down
      to 10 for large data), patience a fifth of that;
    - batch size: 8 to 32, an eighth of the training split.
    """
    n_train = split_sizes(manifest)["train"]
    minimum = 2 * max(1, len(manifest.finding_names))
    fractions = tuple(f for f in FRACTIONS if f == 1 or math.ceil(f * n_train) >= minimum)
    epochs = int(min(50, max(10, round(20000 / max(n_train, 1)))))
    return {"fractions": fractions, "epochs": epochs, "batch_size": int(min(32, max(8, n_train // 8)))}


def _available(task: str, manifest, encoder) -> str | None:
    """Why ``task`` cannot run on this data and encoder, or None."""
    records = [r for r in manifest.records if r.image is not None]
    if task in ("zero-shot", "linear-probe", "finetune") and not manifest.finding_names:
        return "no record has a label"
    if task == "retrieval" and not (manifest.granularities or any(r.report for r in records)):
        return "the records have no texts"
    if task == "segment" and not any(f.mask for r in records for f in r.findings):
        return "no finding has a mask"
    if task == "detect":
        if not any(f.box for r in records for f in r.findings):
            return "no finding has a box"
        if not encoder.is_cnn:
            return f"detection needs a ResNet (CNN) image tower; this one is {encoder.config.image.name}"
        try:
            require_coco_evaluation()
        except ModuleNotFoundError as e:
            return str(e)
    return None


def evaluate_all(checkpoint: str, data, out=None, *, model: str = "tiny", tasks=TASKS, seeds=(0, 1, 2),
                 fractions=None, epochs: int | None = None, prompts=None, domain: str | None = None,
                 fractions_dir=None, cache_dir=None, workers: int = 0, device=None,
                 imagenet_weights: str | None = None) -> dict:
    """Run every task that the data and the encoder allow (the others are listed with the reason)."""
    manifest = open_manifest(data)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known: {list(TASKS)}")
    sized = sized_defaults(manifest)
    fractions = tuple(fractions) if fractions else sized["fractions"]
    epochs = epochs or sized["epochs"]
    patience = max(3, epochs // 5)
    seeds = list(seeds)
    encoder = load_encoder(checkpoint, model, seeds[0], device, imagenet_weights)
    options = {"model": model, "tasks": list(tasks), "seeds": seeds, "fractions": [fraction_name(f) for f in fractions],
               "epochs": epochs, "patience": patience, "batch_size": sized["batch_size"]}
    suite = Result("all", encoder, manifest, options, seeds)
    skipped_fractions = [fraction_name(f) for f in FRACTIONS if f not in fractions]
    if skipped_fractions:
        note(f"label fractions {skipped_fractions} left out: fewer than 2 records per finding "
             f"in {split_sizes(manifest)['train']} training records", suite.warnings)

    common = {"fractions_dir": fractions_dir, "workers": workers}
    trained = {**common, "fractions": fractions, "seeds": seeds, "epochs": epochs, "patience": patience,
               "batch_size": sized["batch_size"]}
    calls = {
        "zero-shot": lambda: zero_shot(checkpoint, manifest, encoder=encoder, prompts=prompts, domain=domain,
                                       cache_dir=cache_dir, workers=workers),
        "retrieval": lambda: retrieval(checkpoint, manifest, encoder=encoder, cache_dir=cache_dir, workers=workers),
        "linear-probe": lambda: linear_probe(checkpoint, manifest, encoder=encoder, fractions=fractions, seeds=seeds,
                                             cache_dir=cache_dir, **common),
        "finetune": lambda: finetune(checkpoint, manifest, encoder=encoder, **trained),
        "segment": lambda: segment(checkpoint, manifest, encoder=encoder, **trained),
        "detect": lambda: detect(checkpoint, manifest, encoder=encoder, **trained),
    }
    results: dict[str, dict] = {}
    for task in tasks:
        reason = _available(task, manifest, encoder)
        started = time.time()
        if reason:
            results[task] = {"skipped": reason}
            note(f"{task} skipped: {reason}", suite.warnings)
        else:
            try:
                done = calls[task]()
                results[task] = {k: done[k] for k in ("options", "metrics", "warnings")}
            except (ValueError, RuntimeError, OSError) as e:  # one task's failure must not lose the others
                results[task] = {"error": f"{type(e).__name__}: {e}"}
                note(f"{task} failed: {e}", suite.warnings)
        results[task]["elapsed_s"] = round(time.time() - started, 2)
        suite.metrics = results
        write_result(suite.to_dict(), out)

    print_table(f"evaluation suite: {encoder.checkpoint} on {Path(manifest.path)}", ["task", "headline", "value"],
                [[task, *headline(task, r)] for task, r in results.items()])
    return suite.to_dict()


# What `medgrain evaluate TASK` calls: every function takes (checkpoint, data, *, ..., out=...).
TASK_FUNCTIONS = {"zero-shot": zero_shot, "retrieval": retrieval, "linear-probe": linear_probe, "finetune": finetune,
                  "segment": segment, "detect": detect, "all": evaluate_all}


def headline(task: str, result: dict) -> tuple[str, object]:
    """The one number of a task for the summary table (the largest label fraction for trained tasks)."""
    if "skipped" in result or "error" in result:
        return ("skipped" if "skipped" in result else "error", result.get("skipped") or result.get("error"))
    metrics = result["metrics"]
    if task == "zero-shot":
        return ("macro AUROC" if metrics["mode"] == "pairs" else "accuracy",
                metrics["macro"]["auroc" if metrics["mode"] == "pairs" else "accuracy"])
    if task == "retrieval":
        source, values = next(iter(metrics["by_text"].items()))
        return (f"{source} image→text R@1", values["image_to_text"]["R@1"])
    name, fraction = next(reversed(metrics["fractions"].items()))
    key = {"segment": "dice", "detect": "map_40_75"}.get(task, "auroc")
    return (f"{key} at {name} labels", fraction["macro"][key])
