"""MGLL-Fundus (the MGLL authors' released image-text manifest) -> manifest.

Accepted files (``manifest``; by default the one ``*.jsonl`` or ``*.json`` in ROOT):

- a JSON object with the splits as keys, ``{"train": [...], "validation": [...], "test": [...]}``, or
  under ``"splits"`` (as MGLL's ``ManifestFundusDataset`` reads it); ``val``/``valid`` also name validation;
- a JSON list of records, or JSON lines with one record each; a record may then carry ``"split"``.

A record has an image path in the first present of ``image_path``, ``path``, ``image``, ``ImageID``,
``url`` (relative to ROOT), an optional ``patient_id``, and ``annotations``: a list of objects with
``Disease`` (or ``disease``) and ``Description`` (or ``description``); a record without annotations is
its own single annotation. ``Disease`` reads ``"<Normal|Abnormal>, <category>"``, e.g.
``"Abnormal, Mild Non-Proliferative Diabetic Retinopathy"``.

Granularities: abnormality (before the first comma), category (after it), description. One record
per image with all its annotations (categories and descriptions joined by "; ", since categories
may contain commas), or with ``flatten=True`` one per annotation, as MGLL's loader does. Without
splits in the file, the validation split is drawn by patient (the image path when there is no
``patient_id``), and annotations of one image always share its split.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from ..manifest import Record
from .common import (
    ABNORMAL,
    NORMAL,
    PREPARERS,
    Preparation,
    PrepareError,
    PrepareResult,
    dataset_root,
    find_file,
    require_dir,
    split_by_patient,
)

IMAGE_FIELDS = ("image_path", "path", "image", "ImageID", "url")  # MGLL's loader tries them in this order
SPLIT_NAMES = {"train": "train", "validation": "valid", "valid": "valid", "val": "valid", "test": "test"}


def _entries(path: Path) -> Iterator[tuple[str | int, Any, str | None]]:
    """(where, record, split name as written or None) for every record of the file."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line_no, text in enumerate(f, start=1):
                if text.strip():
                    try:
                        obj = json.loads(text)
                    except json.JSONDecodeError as e:
                        raise PrepareError(path, line_no, None, text.strip(), f"not JSON ({e.msg})",
                                           reason="malformed line") from None
                    yield line_no, obj, obj.get("split") if isinstance(obj, dict) else None
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PrepareError(path, e.lineno, None, None, f"not JSON ({e.msg})", reason="malformed file") from None
    if isinstance(data, list):
        for i, obj in enumerate(data):
            yield f"record {i}", obj, obj.get("split") if isinstance(obj, dict) else None
        return
    container = data.get("splits", data) if isinstance(data, dict) else None
    keys = [k for k in (container or {}) if k in SPLIT_NAMES and isinstance(container[k], list)]
    if not keys:
        raise PrepareError(path, None, None, None, f"expected a list of records or an object with split lists "
                           f"({sorted(SPLIT_NAMES)}), not {type(data).__name__}", reason="malformed file")
    for key in keys:
        for i, obj in enumerate(container[key]):
            yield f"{key}[{i}]", obj, key


def parse_disease(text: str) -> tuple[str, str]:
    """``"Abnormal, Mild NPDR"`` -> ("Abnormal", "Mild NPDR"); raises ValueError for any other form."""
    head, _, category = text.partition(",")
    head = head.strip().lower()
    if head not in ("normal", "abnormal") or not category.strip():
        raise ValueError("expected '<Normal|Abnormal>, <category>'")
    return (NORMAL if head == "normal" else ABNORMAL), category.strip()


def _annotations(obj: dict, error) -> list[tuple[str, str, str]]:
    """(abnormality, category, description) of each annotation of a record."""
    anns = obj.get("annotations")
    if not isinstance(anns, list) or not anns:
        anns = [obj]
    parsed = []
    for k, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise error(f"annotations[{k}]", ann, "an annotation must be an object", "malformed record")
        disease = ann.get("Disease", ann.get("disease", obj.get("Disease", obj.get("disease"))))
        description = ann.get("Description", ann.get("description", obj.get("Description", obj.get("description"))))
        # A missing (or null) Description is an absent text; an empty one is a bad annotation.
        if not isinstance(disease, str) or not (description is None or (isinstance(description, str) and description.strip())):
            raise error(f"annotations[{k}]", ann, "needs a Disease and a Description that is null or not empty",
                        "missing annotation field")
        try:
            parsed.append((*parse_disease(disease), None if description is None else " ".join(description.split())))
        except ValueError as e:
            raise error("Disease", disease, str(e), "invalid label value") from None
    return parsed


def _unique(values) -> list[str]:
    return list(dict.fromkeys(values))


@PREPARERS.register("mgll-fundus", help="MGLL-Fundus: the MGLL authors' released fundus image-text manifest")
def prepare_mgll_fundus(root: str | Path, out: str | Path, *, manifest: str | Path | None = None,
                        flatten: bool = False, valid_fraction: float = 0.1, seed: int = 0, on_error: str = "raise",
                        exclude: Sequence[str | Path] = (), leak_threshold: int | None = None) -> PrepareResult:
    root = require_dir(root, "mgll-fundus") if manifest else dataset_root(root, "mgll-fundus", ["*.jsonl", "*.json"])
    prep = Preparation("mgll-fundus", out, on_error)
    if manifest is None:
        source = find_file(root, ["*.jsonl", "*.json"], "MGLL-Fundus manifest")
    else:
        source = Path(manifest) if Path(manifest).is_absolute() else root / manifest
        if not source.is_file():
            raise FileNotFoundError(f"MGLL-Fundus manifest not found: {source}")

    entries = list(_entries(source))
    has_splits = any(split_name is not None for _, _, split_name in entries)
    records: list[Record] = []
    for where, obj, split_name in entries:
        def error(field, value, message, reason, where=where):
            return PrepareError(source, where, field, value, message, reason)

        try:
            if not isinstance(obj, dict):
                raise error(None, obj, "a record must be an object", "malformed record")
            image_rel = next((obj[f] for f in IMAGE_FIELDS if isinstance(obj.get(f), str) and obj[f].strip()), None)
            if image_rel is None:
                raise error(None, None, f"no image path in any of {IMAGE_FIELDS}", "missing image path")
            if has_splits and split_name not in SPLIT_NAMES:
                raise error("split", split_name, f"expected one of {sorted(SPLIT_NAMES)} (other records have one)",
                            "invalid split")
            anns = _annotations(obj, error)
            image_id = str(PurePosixPath(image_rel).with_suffix(""))
            common = dict(image=prep.image(root / image_rel, source, where),
                          split=SPLIT_NAMES[split_name] if split_name else "train",
                          patient_id=str(obj.get("patient_id") or image_rel), domain="fundus")
            groups = [[a] for a in anns] if flatten else [anns]
            for k, group in enumerate(groups):
                abnormal = [a for a in group if a[0] == ABNORMAL]
                records.append(prep.record(
                    source, where, id=f"{image_id}#{k}" if flatten else image_id, **common,
                    labels=_unique(a[1] for a in abnormal),
                    texts={"abnormality": ABNORMAL if abnormal else NORMAL,
                           "category": "; ".join(_unique(a[1] for a in group)),
                           # absent when no annotation of the group has one
                           "description": "; ".join(_unique(a[2] for a in group if a[2])) or None}))
        except PrepareError as e:
            prep.skip(e)
    if not has_splits:
        records = split_by_patient(records, seed, valid=valid_fraction)
    return prep.finish(records, exclude, leak_threshold)
