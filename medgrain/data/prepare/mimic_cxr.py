"""MIMIC-CXR-JPG with the MIMIC-CXR free-text reports -> manifest (MGCA's pretraining set).

Layout (PhysioNet): ``ROOT/mimic-cxr-2.0.0-{metadata,split,chexpert}.csv[.gz]``, images
``ROOT/files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``, reports ``REPORTS/files/pXX/pSUBJECT/sSTUDY.txt`` (REPORTS
defaults to ROOT; the reports come from the MIMIC-CXR project, not the JPG one).

One record per frontal (PA/AP) image; the images of a study share its report. The report is the
IMPRESSION followed by the FINDINGS (MGCA's order); a study with neither is dropped and counted.
The official split is kept, ``validate`` becoming ``valid`` (MGCA merged validate and test into one
validation set; we keep the held-out test).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..manifest import Record
from .chexpert import OBSERVATIONS, labeler_findings, uncertain_policy
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
)

FRONTAL_VIEWS = ("PA", "AP")
# Every other ViewPosition the metadata CSV uses; blank means the view was not recorded.
OTHER_VIEWS = ("LATERAL", "LL", "AP AXIAL", "AP LLD", "AP RLD", "PA LLD", "PA RLD", "LAO", "RAO", "LPO",
               "SWIMMERS", "XTABLE LATERAL", "")
SPLIT_NAMES = {"train": "train", "validate": "valid", "test": "test"}

# Headings of the two sections we keep, in the variants radiologists write. A combined
# "findings and impression" heading counts as the impression, as in MIT-LCP's section parser.
FINDINGS_HEADINGS = {"findings", "finding"}
IMPRESSION_HEADINGS = {
    "impression", "impressions", "conclusion", "conclusions", "opinion", "interpretation", "summary",
    "findings and impression", "findings and impressions", "findings/impression", "impression and findings",
    "impression/findings", "impression and recommendation", "impression and recommendations",
    "impression/recommendation", "impression/recommendations",
}
# A heading is an upper-case phrase at the start of a line followed by a colon ("FINDINGS:").
_HEADING = re.compile(r"^[ \t]*([A-Z][A-Z0-9 /&,()'-]*?)[ \t]*:", re.MULTILINE)


def report_sections(text: str) -> dict[str, str] | None:
    """``{"findings": ..., "impression": ...}`` (either may be missing) of a report, or None when the
    report has no section headings at all. A repeated section keeps its last non-empty occurrence."""
    heads = list(_HEADING.finditer(text))
    if not heads:
        return None
    sections: dict[str, str] = {}
    for head, nxt in zip(heads, heads[1:] + [None]):
        name = re.sub(r"\s*/\s*", "/", " ".join(head.group(1).lower().split()))
        body = " ".join(text[head.end():nxt.start() if nxt else len(text)].split())
        key = "findings" if name in FINDINGS_HEADINGS else "impression" if name in IMPRESSION_HEADINGS else None
        if key and body:
            sections[key] = body
    return sections


def _read_report(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise PrepareError(path, None, None, None, "report file not found", reason="report file not found") from None
    sections = report_sections(text)
    if sections is None:
        raise PrepareError(path, None, None, text.strip()[:60], "report has no section headings (e.g. 'FINDINGS:')",
                           reason="report has no sections")
    return sections


def _study_dir(base: Path, subject: str, study: str) -> Path:
    return base / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"


def _cached(cache: dict, key, compute, *args):
    """Study-level results (report, labels), errors included, are computed once and reused by every image."""
    if key not in cache:
        try:
            cache[key] = compute(*args)
        except PrepareError as e:
            cache[key] = e
    if isinstance(cache[key], PrepareError):
        raise cache[key]
    return cache[key]


@PREPARERS.register("mimic-cxr",
                    help="MIMIC-CXR-JPG: chest radiographs with free-text reports and CheXpert-labeler findings")
def prepare_mimic_cxr(root: str | Path, out: str | Path, *, reports: str | Path | None = None,
                      uncertain: str = "negative", on_error: str = "raise", exclude: Sequence[str | Path] = (),
                      leak_threshold: int | None = None, seed: int = 0) -> PrepareResult:
    """MIMIC-CXR-JPG -> manifest. ``uncertain`` (-1) labels: "negative" (default), "positive" or "mgca".

    ``seed`` is accepted for a uniform signature; the official split leaves nothing to draw.
    """
    root = dataset_root(root, "mimic-cxr", ["mimic-cxr-*-metadata.csv.gz", "mimic-cxr-*-metadata.csv"], depth=4)
    reports_root = require_dir(reports, "mimic-cxr reports") if reports is not None else root
    policy = uncertain_policy(uncertain)
    prep = Preparation("mimic-cxr", out, on_error)

    split_csv = find_file(root, ["mimic-cxr-*-split.csv.gz", "mimic-cxr-*-split.csv"], "MIMIC-CXR split CSV")
    splits: dict[str, str | PrepareError] = {}
    for row in read_csv(split_csv, ["dicom_id", "split"]):
        value = row["split"]
        splits[row["dicom_id"]] = SPLIT_NAMES.get(value) or row.error(
            "split", value, f"expected one of {list(SPLIT_NAMES)}", reason="invalid split")

    label_csv = find_file(root, ["mimic-cxr-*-chexpert.csv.gz", "mimic-cxr-*-chexpert.csv"], "MIMIC-CXR CheXpert CSV")
    label_rows: dict[str, Row] = {row["study_id"]: row
                                  for row in read_csv(label_csv, ["subject_id", "study_id", *OBSERVATIONS])}

    meta_csv = find_file(root, ["mimic-cxr-*-metadata.csv.gz", "mimic-cxr-*-metadata.csv"], "MIMIC-CXR metadata CSV")
    studies: dict[tuple[str, str], dict | PrepareError] = {}
    labels_of: dict[str, tuple | PrepareError] = {}
    records: list[Record] = []
    for row in progress(read_csv(meta_csv, ["dicom_id", "subject_id", "study_id", "ViewPosition"]), "MIMIC-CXR images"):
        try:
            dicom, subject, study, view = row["dicom_id"], row["subject_id"], row["study_id"], row["ViewPosition"]
            if view not in FRONTAL_VIEWS:
                if view not in OTHER_VIEWS:
                    raise row.error("ViewPosition", view, f"unknown view; expected one of {FRONTAL_VIEWS + OTHER_VIEWS}",
                                    reason="unknown view")
                prep.drop(f"non-frontal views ({view or 'blank'})")
                continue
            split = splits.get(dicom) or row.error("dicom_id", dicom, f"not in {split_csv.name}", reason="no split")
            if isinstance(split, PrepareError):
                raise split
            image = prep.image(_study_dir(root, subject, study) / f"{dicom}.jpg", meta_csv, row.line)
            report_path = _study_dir(reports_root, subject, study).with_suffix(".txt")
            sections = _cached(studies, (subject, study), _read_report, report_path)
            impression, findings = sections.get("impression"), sections.get("findings")
            if not impression and not findings:
                prep.drop("images of studies whose report has neither FINDINGS nor IMPRESSION")
                continue
            if study not in label_rows:
                raise row.error("study_id", study, f"no row in {label_csv.name}", reason="no CheXpert labels")
            labels, normal, unsure = _cached(labels_of, study, labeler_findings, label_rows[study], policy)
            records.append(prep.record(
                meta_csv, row.line, id=dicom, image=image, split=split, labels=labels,
                texts={**label_texts(labels, normal), "description": impression or findings},
                report=" ".join(s for s in (impression, findings) if s), patient_id=subject, domain="cxr",
                view=view, meta={"study_id": study, "uncertain": unsure}))
        except PrepareError as e:
            prep.skip(e)
    return prep.finish(records, exclude, leak_threshold)
