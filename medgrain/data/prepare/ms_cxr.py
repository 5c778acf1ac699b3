"""MS-CXR (Boecking et al., "Making the Most of Text Semantics to Improve Biomedical Vision-Language
Processing", ECCV 2022, arXiv 2204.09817) -> a phrase-grounding manifest over a prepared MIMIC-CXR.

MS-CXR publishes boxes and phrases only; the images are MIMIC-CXR's. Both published files are read
(``ROOT/MS_CXR_Local_Alignment_v*.csv`` preferred, else the COCO-style ``.json``):

- CSV: ``dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height`` (and
  ``split`` where the release has it), one row per box;
- JSON: ``images`` (``id, file_name, path, width, height``), ``annotations`` (``image_id, category_id,
  bbox [x, y, w, h], label_text``), ``categories`` (``id, name``), as hi-ml-multimodal converts it.

Each image of MS-CXR becomes one record of the prepared MIMIC-CXR manifest (``manifest``, matched by
``dicom_id``), with its texts and report, and one finding per box: ``name`` the category, ``box``
``[x, y, x + w, y + h]`` scaled from the published image size to the image as prepared, ``phrase`` the
``label_text``. Everything is ``test`` unless the release gives a split: MS-CXR is for evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..manifest import Record, read_manifest
from .common import (
    PREPARERS,
    Preparation,
    PrepareError,
    PrepareResult,
    Row,
    dataset_root,
    find_file,
    read_csv,
    read_dicom_header,
)

CSV_COLUMNS = ("dicom_id", "category_name", "label_text", "x", "y", "w", "h", "image_width", "image_height")
SPLITS = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}


def _csv_boxes(path: Path) -> list[tuple[Row, dict]]:
    out = []
    for row in read_csv(path, CSV_COLUMNS):
        try:
            x, y, w, h, width, height = (float(row[c]) for c in ("x", "y", "w", "h", "image_width", "image_height"))
        except ValueError:
            raise row.error("x", ",".join(row.cells.get(c, "") for c in ("x", "y", "w", "h")),
                            "box and image size must be numbers", reason="invalid box") from None
        out.append((row, {"dicom_id": row["dicom_id"], "name": row["category_name"], "phrase": row["label_text"],
                          "box": (x, y, x + w, y + h), "size": (width, height),
                          "split": (row.cells.get("split") or "").strip().lower()}))
    return out


def _json_boxes(path: Path) -> list[tuple[Row, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {im["id"]: im for im in data["images"]}
        categories = {c["id"]: c["name"] for c in data["categories"]}
        annotations = data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PrepareError(path, None, None, None, f"not MS-CXR's COCO JSON ({type(e).__name__}: {e})") from None
    out = []
    for k, ann in enumerate(annotations):
        where = Row(path, f"annotations[{k}]", {})
        try:
            image = images[ann["image_id"]]
            x, y, w, h = (float(v) for v in ann["bbox"])
            out.append((where, {"dicom_id": Path(image["file_name"]).stem, "name": categories[ann["category_id"]],
                                "phrase": ann["label_text"], "box": (x, y, x + w, y + h),
                                "size": (float(image["width"]), float(image["height"])), "split": ""}))
        except (KeyError, TypeError, ValueError) as e:
            raise where.error(None, None, f"annotation is missing {e} or is malformed", reason="invalid annotation") \
                from None
    return out


@PREPARERS.register("ms-cxr", help="MS-CXR: phrase-grounding boxes over a prepared MIMIC-CXR")
def prepare_ms_cxr(root: str | Path, out: str | Path, *, manifest: str | Path | None = None, seed: int = 0,
                   on_error: str = "raise", exclude: Sequence[str | Path] = (),
                   leak_threshold: int | None = None) -> PrepareResult:
    """MS-CXR boxes and phrases over the MIMIC-CXR manifest ``manifest`` (from ``prepare mimic-cxr``)."""
    root = dataset_root(root, "ms-cxr", ["MS_CXR_Local_Alignment_v*.csv", "MS_CXR_Local_Alignment_v*.json"])
    if manifest is None:
        raise ValueError("ms-cxr: --manifest MIMIC.jsonl is required (a manifest from `medgrain prepare mimic-cxr`); "
                         "MS-CXR publishes boxes, its images are MIMIC-CXR's")
    mimic = read_manifest(manifest)
    by_id = {r.id: r for r in mimic.records}
    try:
        source = find_file(root, ["MS_CXR_Local_Alignment_v*.csv"], "MS-CXR CSV")
        boxes = _csv_boxes(source)
    except FileNotFoundError:
        source = find_file(root, ["MS_CXR_Local_Alignment_v*.json"], "MS-CXR CSV or JSON")
        boxes = _json_boxes(source)
    prep = Preparation("ms-cxr", out, on_error)
    grouped: dict[str, list[tuple[Row, dict]]] = {}
    for row, box in boxes:
        grouped.setdefault(box["dicom_id"], []).append((row, box))
    records = [r for dicom_id, rows in grouped.items()
               if (r := _record(prep, mimic, by_id.get(dicom_id), rows)) is not None]
    prep.notes.append(f"{sum(len(r.findings) for r in records)} phrase-box pairs over {len(records)} images")
    return prep.finish(records, exclude, leak_threshold)


def _record(prep: Preparation, mimic, base: Record | None, rows: list[tuple[Row, dict]]) -> Record | None:
    row, first = rows[0]
    try:
        if base is None or base.image is None:
            raise row.error("dicom_id", first["dicom_id"], f"not an image of the MIMIC-CXR manifest {mimic.path}",
                            reason="image not in the MIMIC-CXR manifest")
        image = mimic.resolve(base.image)
        scale = _scale(image, first["size"], row)
        findings = [{"name": b["name"], "phrase": b["phrase"],
                     "box": [b["box"][0] * scale[0], b["box"][1] * scale[1], b["box"][2] * scale[0],
                             b["box"][3] * scale[1]]} for _, b in rows]
        split = SPLITS.get(first["split"], "test")
        labels = sorted({b["name"] for _, b in rows} | set(base.labels))
        return prep.record(row.path, row.line, id=base.id, image=prep.relative(Path(image)), split=split,
                           labels=labels, texts=dict(base.texts), report=base.report, findings=findings,
                           patient_id=base.patient_id, domain="cxr", view=base.view)
    except PrepareError as e:
        prep.skip(e)
        return None


def _scale(image: Path, published: tuple[float, float], row: Row) -> tuple[float, float]:
    """MS-CXR's boxes are in the published image size; a prepared copy may have been resized."""
    from PIL import Image, UnidentifiedImageError

    if image.suffix.lower() in (".dcm", ".dicom"):
        header = read_dicom_header(image)
        return header.width / published[0], header.height / published[1]
    try:
        with Image.open(image) as im:
            width, height = im.size
    except (OSError, UnidentifiedImageError) as e:
        raise row.error("path", str(image), f"cannot read the image size ({e})", reason="unreadable image") from None
    return width / published[0], height / published[1]
