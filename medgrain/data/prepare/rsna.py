"""RSNA Pneumonia Detection Challenge (stage 2) -> manifest.

Layout (Kaggle): ``ROOT/stage_2_train_labels.csv`` with ``patientId,x,y,width,height,Target`` (one row per
box; a patient without pneumonia has one row with empty box cells and Target 0) and
``ROOT/stage_2_train_images/<patientId>.dcm``. The stage 2 test images have no public labels.

One record per patient (one image each): label "Pneumonia" with every box as [x0, y0, x1, y1] when the
patient has any box. Split 70/15/15 by patient, as MGCA (whose split used sklearn's shuffle; ours is a
seeded hash of the patient id, so the same patients do not land in the same splits).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..manifest import Record
from .common import (
    PREPARERS,
    Preparation,
    PrepareError,
    PrepareResult,
    Row,
    dataset_root,
    find_file,
    progress,
    read_csv,
    read_dicom_header,
    split_by_patient,
)

PNEUMONIA = "Pneumonia"
BOX_COLUMNS = ("x", "y", "width", "height")


def _box(row: Row) -> tuple[float, float, float, float] | None:
    """The row's box as [x0, y0, x1, y1], or None for a negative row; the cells must agree with Target."""
    target = row["Target"]
    if target not in ("0", "1"):
        raise row.error("Target", target, "expected 0 or 1", reason="invalid label value")
    cells = [row[c] for c in BOX_COLUMNS]
    if target == "0":
        if any(cells):
            raise row.error("x", ",".join(cells), "Target is 0 but the row has a box", reason="invalid box")
        return None
    try:
        x, y, w, h = (float(c) for c in cells)
    except ValueError:
        raise row.error("x", ",".join(cells), "Target is 1 but the box is not four numbers", reason="invalid box") from None
    if min(x, y) < 0 or w <= 0 or h <= 0:
        raise row.error("x", ",".join(cells), "box has a negative corner or no area", reason="invalid box")
    return (x, y, x + w, y + h)


@PREPARERS.register("rsna-pneumonia", help="RSNA Pneumonia Detection: chest radiographs with pneumonia boxes")
def prepare_rsna(root: str | Path, out: str | Path, *, valid_fraction: float = 0.15, test_fraction: float = 0.15,
                 seed: int = 0, on_error: str = "raise", exclude: Sequence[str | Path] = (),
                 leak_threshold: int | None = None) -> PrepareResult:
    root = dataset_root(root, "rsna-pneumonia", ["stage_2_train_labels.csv"])
    prep = Preparation("rsna-pneumonia", out, on_error)
    labels_csv = find_file(root, ["stage_2_train_labels.csv"], "RSNA labels CSV")
    by_patient: dict[str, list[Row]] = {}
    for row in read_csv(labels_csv, ["patientId", *BOX_COLUMNS, "Target"]):
        by_patient.setdefault(row["patientId"], []).append(row)

    records: list[Record] = []
    for patient, patient_rows in progress(by_patient.items(), "reading DICOM headers", total=len(by_patient)):
        first = patient_rows[0]
        try:  # one bad row makes the whole patient bad: a record with some of its boxes would be wrong
            rows = [(row, _box(row)) for row in patient_rows]
            found = [b for _, b in rows if b is not None]
            if found and len(found) != len(rows):
                raise first.error("Target", patient, "the patient has rows with Target 0 and with Target 1",
                                  reason="inconsistent rows")
            dicom = root / "stage_2_train_images" / f"{patient}.dcm"
            image = prep.image(dicom, labels_csv, first.line)
            header = read_dicom_header(dicom)
            for row, (x0, y0, x1, y1) in ((r, b) for r, b in rows if b is not None):
                if x1 > header.width or y1 > header.height:
                    raise row.error("x", f"{x0},{y0},{x1},{y1}",
                                    f"box leaves the {header.width}x{header.height} image", reason="invalid box")
            records.append(prep.record(
                labels_csv, first.line, id=patient, image=image, labels=[PNEUMONIA] if found else [],
                texts={"category": PNEUMONIA if found else f"No {PNEUMONIA}"},
                findings=[{"name": PNEUMONIA, "box": b} for b in found], patient_id=patient, domain="cxr",
                view=header.view, meta={"photometric": header.photometric}))
        except PrepareError as e:
            prep.skip(e)
    records = split_by_patient(records, seed, valid=valid_fraction, test=test_fraction)
    return prep.finish(records, exclude, leak_threshold)
