"""VinDr-CXR (Nguyen et al., "VinDr-CXR: An open dataset of chest X-rays with radiologist's
annotations", Scientific Data 2022, arXiv 2012.15029) -> manifest, one record per image with its boxes.

Two published layouts are read:

- **the Kaggle competition** (VinBigData Chest X-ray Abnormalities Detection): ``ROOT/train.csv`` with
  ``image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max`` (one row per reader and box;
  "No finding" rows have no box) and images ``ROOT/train/<image_id>.dicom``, or images converted to
  ``.png``/``.jpg``. Converted images are smaller than the DICOMs the boxes were drawn on, so a
  converted copy needs its original sizes: ``ROOT/train_meta.csv`` with ``image_id, dim0, dim1``
  (rows, columns), as the converted Kaggle copies ship it; boxes are scaled to the image as stored.
  The competition's test labels are not public: every record is train, split by image.
- **the PhysioNet release** (v1.0.0): ``ROOT/annotations/annotations_{train,test}.csv`` (boxes:
  ``image_id, rad_id, class_name, x_min, y_min, x_max, y_max``), ``ROOT/annotations/image_labels_{train,
  test}.csv`` (``image_id, rad_id`` and one 0/1 column per finding, local and global) and
  ``ROOT/{train,test}/<image_id>.dicom``. Its test set (3,000 images, the consensus of five readers)
  is the test split; validation is drawn from train.

**Merging the readers.** Each training image was read by three radiologists. A finding is a label of
the image when at least ``min_readers`` of its readers marked it (default 1, any reader, as
torchxrayvision reads the competition file; 2 is the majority of three). The boxes of a finding that
is a label are all kept, every reader's, unfused. An image with no finding that passes the rule is
normal, whether its readers wrote "No finding" or not: "No finding" images are kept as normal records.
The test set's labels are already a consensus and have one reader.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    label_texts,
    progress,
    read_csv,
    require_dir,
    split_by_patient,
)

NO_FINDING_CLASS = "No finding"
IMAGE_SUFFIXES = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")


@dataclass
class Marks:
    """What the readers of one image said: per finding, the readers who marked it and their boxes."""

    first: Row
    readers: set[str] = field(default_factory=set)
    marked: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    boxes: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=lambda: defaultdict(list))


def _box(row: Row) -> tuple[float, float, float, float] | None:
    cells = [row.cells.get(c, "").strip() for c in BOX_COLUMNS]
    if not any(cells):
        return None
    try:
        x0, y0, x1, y1 = (float(c) for c in cells)
    except ValueError:
        raise row.error("x_min", ",".join(cells), "box coordinates are not numbers", reason="invalid box") from None
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise row.error("x_min", ",".join(cells), "box is not x_min < x_max, y_min < y_max, all >= 0",
                        reason="invalid box")
    return x0, y0, x1, y1


def _reader(row: Row) -> str:
    """The radiologist of a row; the PhysioNet test files (a consensus) may have no reader column."""
    return (row.cells.get("rad_id") or row.cells.get("rad_ID") or "consensus").strip() or "consensus"


def read_box_rows(path: Path, prep: Preparation) -> dict[str, Marks]:
    """Readers' marks per image from a competition ``train.csv`` or a PhysioNet ``annotations_*.csv``."""
    images: dict[str, Marks] = {}
    for row in progress(read_csv(path, ["image_id", "class_name", *BOX_COLUMNS]), path.name):
        try:
            marks = images.setdefault(row["image_id"], Marks(row))
            reader, name = _reader(row), row["class_name"]
            marks.readers.add(reader)
            if name == NO_FINDING_CLASS:
                continue
            marks.marked[name].add(reader)
            box = _box(row)
            if box is not None:
                marks.boxes[name].append(box)
        except PrepareError as e:
            prep.skip(e)
    return images


def read_image_labels(path: Path, prep: Preparation) -> dict[str, Marks]:
    """PhysioNet ``image_labels_*.csv``: per image and reader, 0/1 for every finding (local and global)."""
    images: dict[str, Marks] = {}
    rows = read_csv(path, ["image_id"])
    for row in progress(rows, path.name):
        try:
            marks = images.setdefault(row["image_id"], Marks(row))
            reader = _reader(row)
            marks.readers.add(reader)
            for name, value in row.cells.items():
                if name in ("image_id", "rad_id", "rad_ID", NO_FINDING_CLASS):
                    continue
                value = (value or "").strip()
                if value not in ("0", "1", "0.0", "1.0"):
                    raise row.error(name, value, "expected 0 or 1", reason="invalid label value")
                if float(value) == 1:
                    marks.marked[name].add(reader)
        except PrepareError as e:
            prep.skip(e)
    return images


def merged_labels(marks: Marks, min_readers: int) -> list[str]:
    """The findings marked by at least ``min_readers`` readers (by all of them when fewer read the image)."""
    needed = min(min_readers, len(marks.readers))
    return sorted(name for name, readers in marks.marked.items() if len(readers) >= needed)


def _image_path(root: Path, folder: str, image_id: str) -> Path | None:
    return next((p for p in (root / folder / f"{image_id}{s}" for s in IMAGE_SUFFIXES) if p.is_file()), None)


def _original_sizes(root: Path, prep: Preparation) -> dict[str, tuple[float, float]]:
    meta = root / "train_meta.csv"
    if not meta.is_file():
        return {}
    sizes = {}
    for row in read_csv(meta, ["image_id", "dim0", "dim1"]):
        try:
            sizes[row["image_id"]] = (float(row["dim0"]), float(row["dim1"]))
        except ValueError:
            prep.skip(row.error("dim0", row.cells.get("dim0"), "original size is not a number", reason="invalid size"))
    return sizes


def _scaled(findings: list[dict], image: Path, original: tuple[float, float] | None, source: Path,
            line: int) -> list[dict]:
    """Boxes drawn on the DICOM, brought to a converted (smaller) PNG/JPEG."""
    if image.suffix.lower() in (".dicom", ".dcm") or not findings:
        return findings
    if original is None:
        raise PrepareError(source, line, "image_id", image.name, "a converted image needs its original size to "
                           "scale the boxes: train_meta.csv with image_id, dim0, dim1", reason="no original size")
    from PIL import Image

    with Image.open(image) as im:
        width, height = im.size
    sy, sx = height / original[0], width / original[1]
    return [{"name": f["name"], "box": [f["box"][0] * sx, f["box"][1] * sy, f["box"][2] * sx, f["box"][3] * sy]}
            for f in findings]


@PREPARERS.register("vindr-cxr", help="VinDr-CXR: chest radiographs with radiologists' boxes")
def prepare_vindr_cxr(root: str | Path, out: str | Path, *, min_readers: int = 1, labels_csv: str | Path | None = None,
                      valid_fraction: float = 0.1,
                      test_fraction: float = 0.2, seed: int = 0, on_error: str = "raise",
                      exclude: Sequence[str | Path] = (), leak_threshold: int | None = None) -> PrepareResult:
    """VinDr-CXR, competition or PhysioNet layout -> manifest. ``min_readers``: how many of an image's
    readers must mark a finding for it to be a label (1: any, 2: majority of three). ``labels_csv``: the
    competition's ``train.csv`` when it is not under ``root`` (e.g. torchxrayvision's copy).
    ``test_fraction`` applies to the competition layout only (the PhysioNet release has its test set)."""
    root = (require_dir(root, "vindr-cxr") if labels_csv else
            dataset_root(root, "vindr-cxr", ["train.csv", "annotations/annotations_train.csv"]))
    if min_readers < 1:
        raise ValueError(f"vindr-cxr: min_readers must be at least 1, got {min_readers}")
    prep = Preparation("vindr-cxr", out, on_error)
    if (root / "annotations").is_dir():
        records = _physionet(root, prep, min_readers)
        records = split_by_patient(records, seed, valid=valid_fraction)
    else:
        records = _competition(root, prep, min_readers, labels_csv)
        records = split_by_patient(records, seed, valid=valid_fraction, test=test_fraction)
    prep.notes.append(f"readers merged: a finding is a label when at least {min_readers} reader(s) of the image "
                      "marked it; every reader's boxes of a label are kept; images without one are normal")
    return prep.finish(records, exclude, leak_threshold)


def _competition(root: Path, prep: Preparation, min_readers: int, labels_csv: str | Path | None) -> list[Record]:
    path = Path(labels_csv) if labels_csv else find_file(root, ["train.csv", "train.csv.gz"], "VinDr-CXR train.csv")
    sizes = _original_sizes(root, prep)
    return [r for image_id, marks in read_box_rows(path, prep).items()
            if (r := _record(prep, root, "train", "train", image_id, marks, marks, min_readers, sizes)) is not None]


def _physionet(root: Path, prep: Preparation, min_readers: int) -> list[Record]:
    records = []
    for split in ("train", "test"):
        labels_csv = find_file(root / "annotations", [f"image_labels_{split}.csv"], f"VinDr-CXR image labels ({split})")
        boxes_csv = find_file(root / "annotations", [f"annotations_{split}.csv"], f"VinDr-CXR annotations ({split})")
        boxes = read_box_rows(boxes_csv, prep)
        for image_id, marks in read_image_labels(labels_csv, prep).items():
            box_marks = boxes.get(image_id, Marks(marks.first))
            record = _record(prep, root, split, split, image_id, marks, box_marks, min_readers, {})
            if record is not None:
                records.append(record)
    return records


def _record(prep: Preparation, root: Path, folder: str, split: str, image_id: str, marks: Marks, box_marks: Marks,
            min_readers: int, sizes: dict) -> Record | None:
    row = marks.first
    try:
        image = _image_path(root, folder, image_id)
        if image is None:
            raise row.error("image_id", image_id, f"no {folder}/{image_id}.dicom (or .png/.jpg) under {root}",
                            reason="image file not found")
        labels = merged_labels(marks, min_readers)
        findings = [{"name": name, "box": box} for name in labels for box in box_marks.boxes.get(name, [])]
        findings = _scaled(findings, image, sizes.get(image_id), row.path, row.line)
        return prep.record(row.path, row.line, id=image_id, image=prep.relative(image), split=split, labels=labels,
                           texts=label_texts(labels, not labels), findings=findings, patient_id=image_id,
                           domain="cxr", meta={"readers": sorted(marks.readers)})
    except PrepareError as e:
        prep.skip(e)
        return None
