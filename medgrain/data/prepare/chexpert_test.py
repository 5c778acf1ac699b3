"""CheXpert's radiologist-labelled test set (Irvin et al., AAAI 2019, arXiv 1901.07031; labels
released with CheXlocalize, Saporta et al., Nature Machine Intelligence 2022) -> a test-only manifest.

Layout: ``ROOT/test_labels.csv`` (``labels_csv`` elsewhere) with ``Path`` and the 14 observations as
0/1, the consensus of five radiologists over 500 studies; ``Path`` reads
``test/patient64741/study1/view1_frontal.jpg`` (a leading ``CheXpert-v1.0/`` is dropped) and is found
under ROOT. It is the test set of CheXzero's zero-shot AUROC, F1 and MCC (Tiu et al., Nature
Biomedical Engineering 2022): pass the manifest as ``--data`` for zero-shot, or as the test split of
a linear probe trained on ``prepare chexpert``.

Frontal views only (the view is read from the file name, ``view1_frontal.jpg``); "No Finding" makes
the record normal, as in the training manifest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from .chexpert import OBSERVATIONS, _image_parts
from .common import (
    NO_FINDING,
    PREPARERS,
    Preparation,
    PrepareError,
    PrepareResult,
    dataset_root,
    find_file,
    label_texts,
    progress,
    read_csv,
    require_dir,
)

CONSENSUS_VALUES = {"1": True, "1.0": True, "0": False, "0.0": False}


@PREPARERS.register("chexpert-test", help="CheXpert's radiologist-labelled test set (test-only manifest)")
def prepare_chexpert_test(root: str | Path, out: str | Path, *, labels_csv: str | Path | None = None,
                          seed: int = 0, on_error: str = "raise", exclude: Sequence[str | Path] = (),
                          leak_threshold: int | None = None) -> PrepareResult:
    """CheXpert's 500-study test set -> manifest whose records are all ``test``."""
    root = (require_dir(root, "chexpert-test") if labels_csv else
            dataset_root(root, "chexpert-test", ["test_labels.csv", "groundtruth.csv"]))
    path = Path(labels_csv) if labels_csv else find_file(root, ["test_labels.csv", "groundtruth.csv"],
                                                          "CheXpert test labels")
    prep = Preparation("chexpert-test", out, on_error)
    records = []
    for row in progress(read_csv(path, ["Path", *OBSERVATIONS]), path.name):
        try:
            parts = _image_parts(row)
            name = parts[-1] if parts else ""
            if "lateral" in name:
                prep.drop("lateral views")
                continue
            if "frontal" not in name:
                raise row.error("Path", row["Path"], "cannot tell the view: expected viewN_frontal or viewN_lateral",
                                reason="unknown view")
            positive = []
            for observation in OBSERVATIONS:
                value = row[observation]
                if value not in CONSENSUS_VALUES:
                    raise row.error(observation, value, "expected 0 or 1 (the test labels are a consensus)",
                                    reason="invalid label value")
                if CONSENSUS_VALUES[value]:
                    positive.append(observation)
            labels = [n for n in positive if n != NO_FINDING]
            patient = next((p for p in parts if re.fullmatch(r"patient\d+", p)), None)
            if patient is None:
                raise row.error("Path", row["Path"], "no patientNNNNN folder in the path", reason="bad path")
            records.append(prep.record(
                path, row.line, id=str(Path(*parts).with_suffix("")), image=prep.image(root.joinpath(*parts), path,
                                                                                       row.line),
                split="test", labels=labels, texts=label_texts(labels, not labels), patient_id=patient,
                domain="cxr"))
        except PrepareError as e:
            prep.skip(e)
    return prep.finish(records, exclude, leak_threshold)
