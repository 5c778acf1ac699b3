"""NIH ChestX-ray14 -> manifest.

Layout (the NIH Clinical Center release): ``ROOT/Data_Entry_2017_v2020.csv`` (or ``Data_Entry_2017.csv``)
with ``Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,...``,
labels joined by ``|``; ``ROOT/train_val_list.txt`` and ``ROOT/test_list.txt``; images in
``ROOT/images*/`` folders (``images/``, or ``images_001/images/`` ... as unpacked from the archives);
optionally ``ROOT/BBox_List_2017.csv`` whose header ``Image Index,Finding Label,Bbox [x,y,w,h],,,``
splits the box over the columns ``Bbox [x``, ``y``, ``w``, ``h]``.

14 labels ("Pleural_Thickening" written "Pleural Thickening"; the box list's "Infiltrate" is the entry
list's "Infiltration"), "No Finding" as normal; the official test list is the test split; the
validation split is drawn from train_val by patient; boxes become findings [x0, y0, x1, y1].
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

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
    open_text,
    progress,
    read_csv,
    split_by_patient,
)

LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
          "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")
BOX_LABEL_ALIASES = {"Infiltrate": "Infiltration"}
VIEWS = ("PA", "AP")


def finding_name(label: str) -> str:
    return label.replace("_", " ")


def _read_list(path: Path) -> set[str]:
    with open_text(path) as f:
        return {line.strip() for line in f if line.strip()}


def _box_rows(path: Path) -> dict[str, list[Row]]:
    """Box rows by image, each as a Row with cells Image Index, Finding Label and Bbox ("x,y,w,h")."""
    with open_text(path) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        start = next((i for i, h in enumerate(header) if h.startswith("Bbox")), None)
        if "Image Index" not in header or "Finding Label" not in header or start is None:
            raise PrepareError(path, 1, "Bbox [x" if start is None else "Image Index", None,
                               f"missing column (the header has {header})", reason="missing column")
        image_at, label_at = header.index("Image Index"), header.index("Finding Label")
        rows: dict[str, list[Row]] = {}
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            row = Row(path, reader.line_num, {"Image Index": cells[image_at] if image_at < len(cells) else None,
                                             "Finding Label": cells[label_at] if label_at < len(cells) else None,
                                             "Bbox": ",".join(cells[start:start + 4])})
            rows.setdefault(row["Image Index"], []).append(row)
        return rows


def _box(row: Row, labels: list[str]) -> dict:
    label = BOX_LABEL_ALIASES.get(row["Finding Label"], row["Finding Label"])
    if finding_name(label) not in labels:
        raise row.error("Finding Label", row["Finding Label"], f"the image's Finding Labels are {labels or [NO_FINDING]}",
                        reason="box label not among the image's labels")
    try:
        x, y, w, h = (float(v) for v in row["Bbox"].split(","))
    except ValueError:
        raise row.error("Bbox", row["Bbox"], "expected four numbers x, y, w, h", reason="invalid box") from None
    if min(x, y) < 0 or w <= 0 or h <= 0:
        raise row.error("Bbox", row["Bbox"], "box has a negative corner or no area", reason="invalid box")
    return {"name": finding_name(label), "box": (x, y, x + w, y + h)}


@PREPARERS.register("chestxray14", help="NIH ChestX-ray14: chest radiographs with 14 findings and some boxes")
def prepare_chestxray14(root: str | Path, out: str | Path, *, valid_fraction: float = 0.1, seed: int = 0,
                        on_error: str = "raise", exclude: Sequence[str | Path] = (),
                        leak_threshold: int | None = None) -> PrepareResult:
    root = dataset_root(root, "chestxray14", ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"])
    prep = Preparation("chestxray14", out, on_error)
    entries = find_file(root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"], "ChestX-ray14 Data_Entry CSV")
    train_val = _read_list(find_file(root, ["train_val_list.txt"], "ChestX-ray14 train_val_list.txt"))
    test = _read_list(find_file(root, ["test_list.txt"], "ChestX-ray14 test_list.txt"))
    images = {}
    for path in sorted(root.glob("images*/**/*.png")):
        images.setdefault(path.name, path)
    bbox_csv = next(iter(sorted(root.glob("BBox_List_2017.csv"))), None)
    boxes = _box_rows(bbox_csv) if bbox_csv else {}

    records: list[Record] = []
    seen: set[str] = set()
    for row in progress(read_csv(entries, ["Image Index", "Finding Labels", "Patient ID", "View Position"]), entries.name):
        try:
            name = row["Image Index"]
            seen.add(name)
            raw = row["Finding Labels"].split("|")
            unknown = [v for v in raw if v not in LABELS and v != NO_FINDING]
            if unknown or (NO_FINDING in raw and len(raw) > 1):
                raise row.error("Finding Labels", row["Finding Labels"],
                                f"expected labels from {list(LABELS)} joined by '|', or '{NO_FINDING}' alone",
                                reason="invalid label value")
            labels = [finding_name(v) for v in raw if v != NO_FINDING]
            view = row["View Position"]
            if view not in VIEWS:
                raise row.error("View Position", view, f"unknown view; expected one of {VIEWS}", reason="unknown view")
            if name in test and name in train_val:
                raise row.error("Image Index", name, "listed in both train_val_list.txt and test_list.txt",
                                reason="image in two official lists")
            if name not in test and name not in train_val:
                prep.drop("images in neither train_val_list.txt nor test_list.txt")
                continue
            if name not in images:
                raise row.error("Image Index", name, f"no such PNG in the images*/ folders under {root}",
                                reason="image file not found")
            records.append(prep.record(
                entries, row.line, id=Path(name).stem, image=prep.relative(images[name]),
                split="test" if name in test else "train", labels=labels, texts=label_texts(labels, not labels),
                findings=[_box(b, labels) for b in boxes.get(name, [])], patient_id=row["Patient ID"],
                domain="cxr", view=view))
        except PrepareError as e:
            prep.skip(e)
    for name in sorted(set(boxes) - seen):
        prep.skip(boxes[name][0].error("Image Index", name, f"not in {entries.name}", reason="box for an unknown image"))
    records = split_by_patient(records, seed, valid=valid_fraction)
    return prep.finish(records, exclude, leak_threshold)
