"""PadChest (Bustos et al., "PadChest: A large chest x-ray image dataset with multi-label annotated
reports", Medical Image Analysis 2020, arXiv 1901.07441) -> manifest.

Layout as published (BIMCV): ``ROOT/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or .csv.gz)
with ``ImageID, ImageDir, PatientID, Projection, MethodLabel, Report, Labels, Localizations,
LabelsLocalizationsBySentence, ...``; images under ``ROOT/<ImageDir>/<ImageID>``. ``labels_csv``
points at the CSV elsewhere (e.g. the copy inside the torchxrayvision wheel).

Granularities come from the release itself, coarse to fine: normal/abnormal, the label set, the
labels with their localisations sentence by sentence (``LabelsLocalizationsBySentence``), and the
report (Spanish, stemmed as released). ``physician_only`` keeps the 39,053 images whose labels a
physician read (``MethodLabel == Physician``, the rest were labelled by the authors' RNN), the test
set of zero-shot papers (KAD, Zhang et al., Nature Communications 2023).

Frontal projections (PA, AP, AP_horizontal) only; lateral, costal and the rows the authors marked
``EXCLUDE``/``UNK`` are dropped by design, as are images labelled ``exclude``. ``normal`` is not a
label: it makes the record normal. ``suboptimal study`` is a remark about the image, not a finding,
and is left out of the labels. There is no official split: patients are split with ``valid_fraction``
and ``test_fraction`` (or pass ``--splits``).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

from ..manifest import Record
from .common import (
    ABNORMAL,
    NO_FINDING,
    NORMAL,
    PREPARERS,
    Preparation,
    PrepareError,
    PrepareResult,
    Row,
    dataset_root,
    find_file,
    progress,
    read_csv,
    require_dir,
    split_by_patient,
)

FRONTAL = ("PA", "AP", "AP_horizontal")
NOT_FINDINGS = frozenset({"normal", "suboptimal study", "exclude"})
COLUMNS = ("ImageID", "ImageDir", "PatientID", "Projection", "MethodLabel", "Report", "Labels", "Localizations",
           "LabelsLocalizationsBySentence")


def _list_cell(row: Row, column: str) -> list:
    """PadChest writes lists as Python literals (``['normal']``); parsed as literals, never evaluated."""
    value = row[column]
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = None
    if not isinstance(parsed, list):
        raise row.error(column, value, "expected a list such as ['normal']", reason=f"unreadable {column}")
    return parsed


def _clean(items) -> list[str]:
    return list(dict.fromkeys(x.strip() for x in items if isinstance(x, str) and x.strip()))


def padchest_texts(row: Row) -> tuple[list[str], dict[str, str], bool]:
    """(labels, texts, excluded?) of one row. ``localization`` comes from the labels localized by
    sentence (or the row's localizations); a row with neither has no localization text (absent, not
    a copy of the category: docs/manifest.md, *Absent texts*)."""
    raw = _clean(_list_cell(row, "Labels"))
    labels = [x for x in raw if x not in NOT_FINDINGS]
    localizations = _clean(_list_cell(row, "Localizations"))
    by_sentence = [" ".join(_clean(s)) for s in _list_cell(row, "LabelsLocalizationsBySentence") if isinstance(s, list)]
    by_sentence = [s for s in dict.fromkeys(by_sentence) if s]
    category = ", ".join(labels) or NO_FINDING
    texts = {"abnormality": ABNORMAL if labels else NORMAL, "category": category}
    if by_sentence:
        texts["localization"] = "; ".join(by_sentence)
    elif localizations:
        texts["localization"] = f"{category}; {', '.join(localizations)}"
    return labels, texts, "exclude" in raw


@PREPARERS.register("padchest", help="PadChest: chest radiographs with labels from Spanish reports")
def prepare_padchest(root: str | Path, out: str | Path, *, labels_csv: str | Path | None = None,
                     physician_only: bool = False, valid_fraction: float = 0.1, test_fraction: float = 0.2,
                     seed: int = 0, on_error: str = "raise", exclude: Sequence[str | Path] = (),
                     leak_threshold: int | None = None) -> PrepareResult:
    """PadChest -> manifest; ``physician_only`` keeps the physician-labelled subset."""
    root = (require_dir(root, "padchest") if labels_csv else
            dataset_root(root, "padchest", ["PADCHEST_*.csv", "PADCHEST_*.csv.gz"]))
    path = Path(labels_csv) if labels_csv else find_file(root, ["PADCHEST_*.csv", "PADCHEST_*.csv.gz"],
                                                          "PadChest labels CSV")
    prep = Preparation("padchest", out, on_error)
    records: list[Record] = []
    for row in progress(read_csv(path, COLUMNS), "PadChest"):
        try:
            record = _record(prep, root, path, row, physician_only)
            if record is not None:
                records.append(record)
        except PrepareError as e:
            prep.skip(e)
    if physician_only:
        prep.notes.append("physician-labelled subset only (MethodLabel == Physician)")
    records = split_by_patient(records, seed, valid=valid_fraction, test=test_fraction)
    return prep.finish(records, exclude, leak_threshold)


def _record(prep: Preparation, root: Path, path: Path, row: Row, physician_only: bool) -> Record | None:
    projection = row["Projection"]
    if projection not in FRONTAL:
        prep.drop(f"projection {projection} (frontal only)")
        return None
    method = row["MethodLabel"]
    if method not in ("Physician", "RNN_model"):
        raise row.error("MethodLabel", method, "expected Physician or RNN_model", reason="unknown MethodLabel")
    if physician_only and method != "Physician":
        prep.drop("labelled by the RNN, not a physician")
        return None
    image = prep.image(root / row["ImageDir"] / row["ImageID"], path, row.line)
    labels, texts, excluded = padchest_texts(row)
    if excluded:
        prep.drop("labelled 'exclude' by the authors")
        return None
    report = row["Report"].strip() or None
    return prep.record(path, row.line, id=row["ImageID"].removesuffix(".png"), image=image, labels=labels,
                       texts=texts, report=report, patient_id=row["PatientID"], domain="cxr", view=projection,
                       meta={"label_method": method, "study_id": row.cells.get("StudyID")})
