"""``medgrain reproduce TABLE --checkpoint C --data NAME=MANIFEST ...``: one command per paper table.

Each table names, per dataset, the protocol the paper used (task, label fractions, solver, selection
rule, metric) and the paper's numbers; the command runs it on the manifests given and prints the
paper's number next to ours with its 95% interval. A dataset without a manifest is reported with
where to get it and how to prepare it, not skipped silently.

Paper numbers: MGCA (Wang et al., NeurIPS 2022, arXiv:2210.06044), Tables 1-3 (transcribed from
memory of the paper: verify against the PDF); MGLL (Li et al., ICLR 2026, arXiv:2511.15943), the ICLR
poster's Table 2 and its fundus radar chart, read from the poster's vector graphics. Where our protocol differs from
the paper's (detection's score filtering, the data splits), the table's ``note`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgrain.registry import Registry

PROTOCOL_TABLES: Registry = Registry("paper table")

WHERE = {
    "chexpert": ("Stanford AIMI: CheXpert-v1.0-small", "medgrain prepare chexpert --root DIR --out M.jsonl"),
    "rsna-pneumonia": ("Kaggle: RSNA Pneumonia Detection Challenge (stage 2)",
                       "medgrain prepare rsna-pneumonia --root DIR --out M.jsonl [--splits test_list.txt]"),
    "covidx": ("github.com/lindawangg/COVID-Net (COVIDx)", "medgrain prepare covidx --root DIR --out M.jsonl"),
    "siim-pneumothorax": ("Kaggle: SIIM-ACR Pneumothorax Segmentation",
                          "medgrain prepare siim-pneumothorax --root DIR --out M.jsonl"),
    "object-cxr": ("JF Healthcare Object-CXR (MIDL 2020 challenge; the original links are dead, see MGCA issues)",
                   "no medgrain adapter yet: write a manifest with one box per object (docs/manifest.md)"),
    "chestxray14": ("NIH Clinical Center: ChestX-ray14", "medgrain prepare chestxray14 --root DIR --out M.jsonl"),
    "rfmid": ("RFMiD (IEEE DataPort, Retinal Fundus Multi-disease Image Dataset)",
              "medgrain prepare rfmid --root DIR --out M.jsonl"),
    "midrc-xr": ("MIDRC (data.midrc.org, access on request)",
                 "no medgrain adapter: MGLL's MIDRC splits are unpublished; write a manifest (docs/manifest.md)"),
}


@dataclass(frozen=True)
class Protocol:
    """One dataset of a table: the task and its options, the metric read from the result, and the
    paper's numbers per row (method) and label fraction."""

    dataset: str
    task: str
    metric: str  # a key of the result's macro metrics
    options: dict[str, Any] = field(default_factory=dict)
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    paper: dict[str, tuple[float | None, ...]] = field(default_factory=dict)  # row -> one value per fraction


@dataclass(frozen=True)
class PaperTable:
    title: str
    protocols: tuple[Protocol, ...]
    note: str = ""


def _register(name: str, table: PaperTable) -> None:
    PROTOCOL_TABLES.add(name, table, help=table.title)


_MGCA_LP = {"solver": "adamw", "select": "loss"}  # MGCA's AdamW linear layer, best validation loss
_register("mgca-linear-probe", PaperTable(
    "MGCA Table 1: linear classification (CheXpert, RSNA AUROC; COVIDx accuracy) at 1/10/100% labels",
    (Protocol("chexpert", "linear-probe", "auroc", _MGCA_LP,
              paper={"MGCA (ViT-B/16)": (88.8, 89.1, 89.7), "MGCA (ResNet-50)": (87.6, 88.0, 88.2)}),
     Protocol("rsna-pneumonia", "linear-probe", "auroc", _MGCA_LP,
              paper={"MGCA (ViT-B/16)": (89.1, 89.9, 90.8), "MGCA (ResNet-50)": (88.6, 89.1, 89.9)}),
     Protocol("covidx", "linear-probe", "accuracy", _MGCA_LP,
              paper={"MGCA (ViT-B/16)": (74.8, 84.8, 92.3), "MGCA (ResNet-50)": (72.0, 83.5, 90.5)})),
    "MGCA's splits and label subsets were drawn by its scripts and are unpublished: ours are drawn by patient "
    "(or published ones, prepare --splits), so expect a band, not the digit."))
_register("mgca-segmentation", PaperTable(
    "MGCA Table 3: segmentation Dice (SIIM pneumothorax masks, RSNA pneumonia box masks) at 1/10/100% labels",
    (Protocol("siim-pneumothorax", "segment", "dice", {"lr": 5e-4, "weight_decay": 0.05},
              paper={"MGCA (ViT-B/16)": (60.1, 65.4, 69.6), "MGCA (ResNet-50)": (49.7, 59.3, 64.2)}),
     Protocol("rsna-pneumonia", "segment", "dice", {"lr": 5e-4, "weight_decay": 0.05},
              paper={"MGCA (ViT-B/16)": (66.2, 71.3, 73.6), "MGCA (ResNet-50)": (63.0, 68.3, 69.8)})),
    "MGCA's decoders: U-Net (ResNet-50) or SETR-naive (ViT) on the frozen encoder; medgrain's segment task "
    "is a U-Net decoder on the frozen tower, early stopping on validation loss."))
_register("mgca-detection", PaperTable(
    "MGCA Table 2: detection mAP over IoU 0.40-0.75 (RSNA, Object-CXR) at 1/10/100% labels, ResNet-50",
    (Protocol("rsna-pneumonia", "detect", "map_40_75", {"weight_decay": 1e-6},
              paper={"MGCA (ResNet-50)": (12.9, 16.8, 24.9)}),
     Protocol("object-cxr", "detect", "map_40_75", {"weight_decay": 1e-6},
              paper={"MGCA (ResNet-50)": (None, 12.1, 19.2)})),
    "MGCA used YOLOv3 and filtered detections at objectness 0.5 before AP (a truncated PR curve); medgrain "
    "scores FCOS detections down to 0.05, so its numbers are not directly comparable (docs/evaluation.md, detect)."))
_MGLL_SELECT = {"select": "accuracy"}  # MGLL keeps the checkpoint with the best validation accuracy
_register("mgll-linear-probe", PaperTable(
    "MGLL Table 1 (X-ray) and Fig. 3 (fundus): linear probe AUC at 100% labels",
    (Protocol("chestxray14", "linear-probe", "auroc", {"solver": "adamw", **_MGLL_SELECT}, (1.0,),
              paper={"MGLL": (82.94,), "CLIP": (69.75,)}),
     Protocol("rfmid", "linear-probe", "auroc", {"solver": "adamw", **_MGLL_SELECT}, (1.0,),
              paper={"MGLL": (79.62,), "CLIP": (44.66,)}),
     Protocol("midrc-xr", "linear-probe", "auroc", {"solver": "adamw", **_MGLL_SELECT}, (1.0,),
              paper={"MGLL": (61.25,), "CLIP": (54.72,)})),
    "MGLL trains a Linear layer for 50 epochs and keeps the best validation accuracy; its splits are unpublished."))
_register("mgll-finetune", PaperTable(
    "MGLL Table 1 (X-ray) and Fig. 3 (fundus): full fine-tuning AUC at 100% labels",
    (Protocol("chestxray14", "finetune", "auroc", {**_MGLL_SELECT, "schedule": "cosine", "warmup_epochs": 1.0},
              (1.0,), paper={"MGLL": (87.37,), "CLIP": (82.05,)}),
     Protocol("rfmid", "finetune", "auroc", {**_MGLL_SELECT, "schedule": "cosine", "warmup_epochs": 1.0}, (1.0,),
              paper={"MGLL": (92.83,), "CLIP": (65.10,)})),
    "MGLL fine-tunes every weight with AdamW and a cosine schedule after one warm-up epoch, best validation accuracy."))


def parse_data(items: list[str]) -> dict[str, Path]:
    """``NAME=MANIFEST`` pairs; a bad item names itself."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"reproduce: --data takes NAME=MANIFEST (e.g. chexpert=manifests/chexpert.jsonl), got {item!r}")
        out[name] = Path(path)
    return out


def _ours(record: dict[str, Any], metric: str, fraction_name: str) -> tuple[float | None, list | None]:
    fractions = record["metrics"].get("fractions", {})
    macro = fractions.get(fraction_name, {}).get("macro", {})
    value, ci = macro.get(metric), macro.get(f"{metric}_ci")
    if isinstance(value, dict):
        value = value.get("mean")
    if isinstance(ci, dict):  # several seeds: their intervals are listed, not merged
        ci = None
    return value, ci


def reproduce(table: str, checkpoint: str, data: dict[str, Path], *, out: str | Path | None = None,
              seeds: tuple[int, ...] = (0,), bootstrap: int = 1000, **context: Any) -> dict[str, Any]:
    """Run every protocol of ``table`` whose dataset has a manifest in ``data``; rows for the console
    and the JSON (``out``), and the datasets that are missing with where to get them."""
    from medgrain.evaluation.fractions import fraction_name
    from medgrain.evaluation.registry import evaluate
    from medgrain.evaluation.results import write_result

    spec: PaperTable = PROTOCOL_TABLES.get(table)
    unknown = sorted(set(data) - {p.dataset for p in spec.protocols})
    if unknown:
        raise ValueError(f"reproduce {table}: no dataset {unknown} in this table; it has "
                         f"{[p.dataset for p in spec.protocols]}")
    rows, missing, results = [], {}, {}
    for protocol in spec.protocols:
        if protocol.dataset not in data:
            source, how = WHERE[protocol.dataset]
            missing[protocol.dataset] = f"get it from {source}; then {how}"
            continue
        record = evaluate(protocol.task, checkpoint, data[protocol.dataset], fractions=protocol.fractions,
                          seeds=seeds, bootstrap=bootstrap, **protocol.options, **context)
        results[protocol.dataset] = record
        for k, fraction in enumerate(protocol.fractions):
            value, ci = _ours(record, protocol.metric, fraction_name(fraction))
            rows.append({"dataset": protocol.dataset, "metric": protocol.metric, "labels": fraction_name(fraction),
                         "ours": None if value is None else 100 * value,
                         "ours_ci": None if ci is None else [100 * ci[0], 100 * ci[1]],
                         "paper": {row: values[k] for row, values in protocol.paper.items()}})
    summary = {"table": table, "title": spec.title, "checkpoint": checkpoint, "note": spec.note, "rows": rows,
               "missing": missing, "results": results}
    write_result(summary, out)
    return summary


def reproduce_tables(summary: dict[str, Any]) -> list:
    """The console tables: ours with its interval next to each paper row, then the missing datasets."""
    from medgrain.evaluation.present import Table

    paper_rows = list(dict.fromkeys(name for row in summary["rows"] for name in row["paper"]))
    tables = [Table(summary["title"], ["dataset", "metric", "labels", "ours (%)", *paper_rows],
                    [[r["dataset"], r["metric"], r["labels"], {"mean": r["ours"], "ci": r["ours_ci"]}
                      if r["ours"] is not None else None, *(r["paper"].get(p) for p in paper_rows)]
                     for r in summary["rows"]])]
    if summary["missing"]:
        tables.append(Table("datasets not given (--data NAME=MANIFEST)", ["dataset", "where"],
                            [[name, where] for name, where in summary["missing"].items()]))
    return tables
