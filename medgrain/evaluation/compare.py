"""``medgrain compare A.json B.json``: is A better than B on this test set, per metric.

Two evaluation results of the same task on the same test images are compared with the paired
bootstrap (``medgrain.evaluation.bootstrap.paired_bootstrap``): both are re-scored on the same
resamples of the images, so image difficulty cancels and the interval is that of the *difference*.
It needs what each result stored per image:

- zero-shot, linear probe, fine-tuning: ``scores`` (per-image scores and labels of the findings).
  Multi-label: macro AUROC and macro AP, which need no threshold (F1's validation thresholds are not
  stored). Multi-class (one label per image): top-1 accuracy, macro F1 and macro AUROC.
- grounding: ``metrics.per_pair`` (each phrase-region pair's CNR and mIoU);
- retrieval: each query's rank (Recall@1/5/10 per text source and direction);
- segmentation: each test image's Dice (the largest label fraction's first seed).

Detection is not paired (its mAP is not a mean over images).

The images (or pairs) are matched by id; two results on different test sets are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medgrain.evaluation.bootstrap import (
    Bootstrap,
    auroc_rows,
    average_precision_rows,
    macro,
    macro_f1_multiclass,
    mean_rows,
    paired_bootstrap,
    rare_class_strata,
    top1_accuracy,
)

SHOWN = 5


def read_result(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"compare: no such result file: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a result JSON ({e})") from None


def _aligned(ids_a: list[str], ids_b: list[str], name_a: str, name_b: str) -> np.ndarray:
    """Row of B for every row of A; the two must hold the same ids."""
    only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
    if only_a or only_b or len(ids_a) != len(ids_b):
        raise ValueError(f"compare: {name_a} and {name_b} were not scored on the same test set "
                         f"({len(only_a)} ids only in the first, e.g. {only_a[:SHOWN]}; {len(only_b)} only in the "
                         f"second, e.g. {only_b[:SHOWN]}); a paired comparison needs the same images")
    row = {i: k for k, i in enumerate(ids_b)}
    return np.array([row[i] for i in ids_a])


def _classification(a: dict, b: dict, names: tuple[str, str], bootstrap: Bootstrap) -> dict[str, dict]:
    sa, sb = a.get("scores"), b.get("scores")
    for s, name in ((sa, names[0]), (sb, names[1])):
        if not isinstance(s, dict) or "scores" not in s:
            raise ValueError(f"compare: {name} stored no per-image scores (written by an older medgrain, or a task "
                             "that keeps none); evaluate again")
    if sa["names"] != sb["names"]:
        raise ValueError(f"compare: the findings differ ({sa['names']} vs {sb['names']})")
    order = _aligned(sa["ids"], sb["ids"], *names)
    scores_a, labels = np.asarray(sa["scores"], np.float64), np.asarray(sa["labels"], bool)
    scores_b = np.asarray(sb["scores"], np.float64)[order]
    if not np.array_equal(labels, np.asarray(sb["labels"], bool)[order]):
        raise ValueError("compare: the two results disagree on the labels of the same images")
    strata = rare_class_strata(labels)
    if (labels.sum(1) == 1).all():  # multi-class: one label per image
        target = labels.argmax(1)
        statistics = {"accuracy": top1_accuracy, "f1": macro_f1_multiclass(labels.shape[1])}
        out = {k: paired_bootstrap(f, [scores_a, target], [scores_b, target], bootstrap, strata)
               for k, f in statistics.items()}
    else:
        out = {}
    for key, rows in (("auroc", auroc_rows), ("ap", average_precision_rows)):
        out[key] = paired_bootstrap(macro(rows), [scores_a, labels], [scores_b, labels], bootstrap, strata)
    return out


def _grounding(a: dict, b: dict, names: tuple[str, str], bootstrap: Bootstrap) -> dict[str, dict]:
    pa, pb = a["metrics"].get("per_pair"), b["metrics"].get("per_pair")
    if pa is None or pb is None:
        raise ValueError("compare: a grounding result without metrics.per_pair (older medgrain); evaluate again")
    order = _aligned(pa["ids"], pb["ids"], *names)
    out = {}
    for key in ("cnr", "miou"):
        va = np.asarray([np.nan if v is None else v for v in pa[key]], np.float64)
        vb = np.asarray([np.nan if v is None else v for v in pb[key]], np.float64)[order]
        out[key] = paired_bootstrap(mean_rows, [va], [vb], bootstrap)
    return out


def _per_value(a: dict, b: dict, names: tuple[str, str], bootstrap: Bootstrap, pick) -> dict[str, dict]:
    """Paired means of per-image values: ``pick(result) -> (ids, {metric: values})``."""
    (ids_a, values_a), (ids_b, values_b) = pick(a, names[0]), pick(b, names[1])
    order = _aligned(ids_a, ids_b, *names)
    return {key: paired_bootstrap(mean_rows, [np.asarray(values_a[key], np.float64)],
                                  [np.asarray(values_b[key], np.float64)[order]], bootstrap) for key in values_a}


def _segmentation_values(result: dict, name: str):
    per_image = result["metrics"].get("per_image")
    if not per_image:
        raise ValueError(f"compare: {name} stored no per-image Dice (older medgrain); evaluate again")
    return per_image["ids"], {"dice": per_image["dice"]}


def _retrieval_values(result: dict, name: str, ks=(1, 5, 10)):
    values, ids = {}, None
    for source, entry in result["metrics"].get("by_text", {}).items():
        ranks = entry.get("ranks")
        if ranks is None:
            raise ValueError(f"compare: {name} stored no per-query ranks (older medgrain); evaluate again")
        ids = ranks["ids"]
        for direction, arrow in (("image_to_text", "i→t"), ("text_to_image", "t→i")):
            r = np.asarray(ranks[direction])
            values.update({f"{source} {arrow} R@{k}": (r <= k).astype(np.float64) for k in ks})
    if ids is None:
        raise ValueError(f"compare: {name} has no retrieval results")
    return ids, values


def compare_results(a: dict, b: dict, bootstrap: Bootstrap | None = None,
                    names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Per metric: A's value, B's, their difference with its 95% interval and the p-value of no difference."""
    bootstrap = bootstrap or Bootstrap()
    if a.get("task") != b.get("task"):
        raise ValueError(f"compare: {names[0]} is a {a.get('task')!r} result and {names[1]} a {b.get('task')!r} one")
    task = a["task"]
    if task == "grounding":
        paired = _grounding(a, b, names, bootstrap)
    elif task == "segment":
        paired = _per_value(a, b, names, bootstrap, _segmentation_values)
    elif task == "retrieval":
        paired = _per_value(a, b, names, bootstrap, _retrieval_values)
    elif task in ("zero-shot", "linear-probe", "finetune"):
        paired = _classification(a, b, names, bootstrap)
    else:
        raise ValueError(f"compare: {task!r} results store no per-image values to pair; compare works on zero-shot, "
                         "linear-probe, finetune, retrieval, segment and grounding results")
    return {"task": task, "a": a.get("checkpoint"), "b": b.get("checkpoint"), "data": a.get("data"),
            "resamples": bootstrap.resamples, "seed": bootstrap.seed, "metrics": paired}


def compare_command(path_a: str | Path, path_b: str | Path, resamples: int = 1000, seed: int = 0,
                    out: str | Path | None = None) -> dict[str, Any]:
    """Read, compare, print a table and (with ``out``) write the comparison JSON."""
    from medgrain.evaluation.present import Table, print_tables
    from medgrain.evaluation.results import write_result

    result = compare_results(read_result(path_a), read_result(path_b), Bootstrap(resamples=resamples, seed=seed),
                             (str(path_a), str(path_b)))
    rows = [[metric, v["a"], v["b"], {"mean": v["difference"], "ci": v["difference_ci"]}, v["p_value"]]
            for metric, v in result["metrics"].items()]
    print_tables([Table(f"{result['task']}: A = {path_a}, B = {path_b} (paired bootstrap, {resamples} resamples)",
                        ["metric", "A", "B", "A - B [95% CI]", "p"], rows)])
    write_result(result, out)
    return result
