"""CheXpert (v1.0 and its -small variant) -> manifest; also the CheXpert-labeler reading MIMIC-CXR shares.

Layout: ``ROOT/train.csv``, ``ROOT/valid.csv`` with ``Path,Sex,Age,Frontal/Lateral,AP/PA`` and the 14
observations; ``Path`` reads ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``, i.e. it
starts with the dataset's own folder, which is ROOT.

Frontal images only. Observations: 1 positive, 0 negative, -1 uncertain, blank not mentioned (= 0).
The official valid.csv (202 frontal images) is the test split, as in MGCA; the validation split is drawn
from train by patient (MGCA drew it by row, and its train and validation overlapped).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from ..manifest import Record
from .common import (
    NO_FINDING,
    PREPARERS,
    Preparation,
    PrepareError,
    PrepareResult,
    Row,
    dataset_root,
    find_file,
    label_texts,
    progress,
    read_csv,
    split_by_patient,
)

OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
# Which observations an uncertain (-1) mention makes positive. "mgca" is the CheXpert paper's
# per-observation choice that MGCA follows: U-Ones for Atelectasis, Edema, Pleural Effusion; U-Zeros
# for Cardiomegaly, Consolidation; the other nine are not among the competition tasks and become 0.
UNCERTAIN_POLICIES: dict[str, frozenset[str]] = {
    "mgca": frozenset({"Atelectasis", "Edema", "Pleural Effusion"}),
    "positive": frozenset(OBSERVATIONS),
    "negative": frozenset(),
}
LABEL_VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": 0}


def uncertain_policy(name: str) -> frozenset[str]:
    if name not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain policy must be one of {sorted(UNCERTAIN_POLICIES)}, not {name!r}")
    return UNCERTAIN_POLICIES[name]


def labeler_findings(row: Row, uncertain_positive: frozenset[str]) -> tuple[list[str], bool, list[str]]:
    """The CheXpert labeler's output of one row: (positive findings, normal?, uncertain findings).

    "No Finding" is not a label: it makes the record normal. A record with no positive observation
    at all is normal too (the labeler found nothing to mention).
    """
    positive, uncertain = [], []
    for name in OBSERVATIONS:
        value = row[name]
        if value not in LABEL_VALUES:
            raise row.error(name, value, "expected 1.0, 0.0, -1.0 (uncertain) or blank", reason="invalid label value")
        if LABEL_VALUES[value] == -1:
            uncertain.append(name)
        if LABEL_VALUES[value] == 1 or (LABEL_VALUES[value] == -1 and name in uncertain_positive):
            positive.append(name)
    labels = [n for n in positive if n != NO_FINDING]
    return labels, NO_FINDING in positive or not labels, uncertain


def _image_parts(row: Row) -> tuple[str, ...]:
    parts = PurePosixPath(row["Path"]).parts
    if parts and parts[0].startswith("CheXpert-v1.0"):
        parts = parts[1:]
    return parts


@PREPARERS.register("chexpert", help="CheXpert: chest radiographs with 14 labeler findings")
def prepare_chexpert(root: str | Path, out: str | Path, *, uncertain: str = "mgca", valid_fraction: float = 0.05,
                     seed: int = 0, on_error: str = "raise", exclude: Sequence[str | Path] = (),
                     leak_threshold: int | None = None) -> PrepareResult:
    """CheXpert -> manifest. ``uncertain``: "mgca" (default), "positive" or "negative"."""
    root = dataset_root(root, "chexpert", ["train.csv", "valid.csv"])
    policy = uncertain_policy(uncertain)
    prep = Preparation("chexpert", out, on_error)
    records: list[Record] = []
    for csv_name, split in (("train.csv", "train"), ("valid.csv", "test")):
        path = find_file(root, [csv_name], f"CheXpert {csv_name}")
        for row in progress(read_csv(path, ["Path", "Frontal/Lateral", *OBSERVATIONS]), csv_name):
            try:
                view = row["Frontal/Lateral"]
                if view == "Lateral":
                    prep.drop("lateral views")
                    continue
                if view != "Frontal":
                    raise row.error("Frontal/Lateral", view, "unknown view; expected Frontal or Lateral",
                                    reason="unknown view")
                parts = _image_parts(row)
                patient = next((p for p in parts if re.fullmatch(r"patient\d+", p)), None)
                if patient is None:
                    raise row.error("Path", row["Path"], "no patientNNNNN folder in the path", reason="bad path")
                labels, normal, unsure = labeler_findings(row, policy)
                records.append(prep.record(
                    path, row.line, id=str(PurePosixPath(*parts).with_suffix("")),
                    image=prep.image(root.joinpath(*parts), path, row.line), split=split,
                    labels=labels, texts=label_texts(labels, normal), patient_id=patient, domain="cxr",
                    view=(row.cells.get("AP/PA") or "").strip() or None, meta={"uncertain": unsure}))
            except PrepareError as e:
                prep.skip(e)
    records = split_by_patient(records, seed, valid=valid_fraction)
    return prep.finish(records, exclude, leak_threshold)
