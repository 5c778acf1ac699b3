"""What every dataset adapter shares: errors that name file, line and value; counted drops and skips;
patient-level splits; reading CSVs and DICOM headers; writing the manifest and its summary.

Two kinds of loss are kept apart and both are reported: *dropped* records are left out by design
(lateral views, studies without findings or impression, images leaking into an excluded manifest);
*skipped* records are bad input left out because the caller asked for ``on_error="skip"``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import user_error
from ...registry import Registry
from ..manifest import SPLITS, ManifestError, OnError, Record, not_utf8_message, parse_record, write_manifest

log = logging.getLogger(__name__)

NORMAL, ABNORMAL = "Normal", "Abnormal"
NO_FINDING = "No Finding"

# The dataset adapters: each module registers its ``prepare_<dataset>`` function under the dataset's name
# (``medgrain prepare <name>``); the command line's choices and help come from here.
PREPARERS: Registry = Registry("dataset")


@user_error
class PrepareError(ValueError):
    """Bad input in a dataset as published: names the file, the line (or record), the column and value.

    ``reason`` is the short kind of problem under which a skip is counted in the summary.
    """

    def __init__(self, path: str | Path, line: int | str | None, column: str | None, value: Any,
                 message: str, reason: str | None = None):
        self.path, self.line, self.column, self.value = str(path), line, column, value
        self.message, self.reason = message, reason or message
        where = self.path if line is None else f"{self.path}:{line}"
        parts = [f"column '{column}'"] if column else []
        if value is not None:
            text = str(value)  # long values (paths, run-length codes) keep their start and end
            shown = text if len(text) <= 100 else f"{text[:40]}...{text[-57:]}"
            parts.append(f"value {shown!r}")
        prefix = " ".join(parts) + ": " if parts else ""
        super().__init__(f"{where}: {prefix}{message}")


@dataclass
class Row:
    """One CSV row with where it came from, so that any problem with it names file and line."""

    path: Path
    line: int
    cells: dict[str, str | None]
    undecodable: PrepareError | None = None  # a cell that was not UTF-8: every read of the row raises it

    def __getitem__(self, column: str) -> str:
        if self.undecodable is not None:
            raise self.undecodable
        value = self.cells.get(column)
        if value is None:
            raise self.error(column, None, "the row has no cell for this column", reason="short row")
        return value.strip()

    def error(self, column: str | None, value: Any, message: str, reason: str | None = None) -> PrepareError:
        return PrepareError(self.path, self.line, column, value, message, reason)


def _open_surrogates(path: Path) -> io.TextIOBase:
    """Plain or gzipped text; ``utf-8-sig`` because some published CSVs start with a byte-order mark;
    ``surrogateescape`` so that a non-UTF-8 byte reaches the line (and cell) that holds it."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8-sig", errors="surrogateescape", newline="")
    return path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")


@contextmanager
def open_text(path: Path) -> Iterator[Iterator[str]]:
    """The lines of a plain or gzipped text file; a line that is not UTF-8 raises a PrepareError naming
    the file, the line and the byte (CSV rows read with ``read_csv`` name the column too)."""
    with _open_surrogates(path) as f:
        yield _utf8_lines(path, f)


def _utf8_lines(path: Path, lines: Iterable[str]) -> Iterator[str]:
    for line_no, line in enumerate(lines, start=1):
        bad = not_utf8_message(line, "line")
        if bad:
            raise PrepareError(path, line_no, None, None, bad, reason="not UTF-8")
        yield line


def _undecodable(row: Row) -> PrepareError | None:
    """The first cell of ``row`` that is not UTF-8, as the error every read of the row raises; the
    cells are left readable (the bytes replaced) for code that reads ``row.cells`` directly."""
    error = None
    for column, value in row.cells.items():
        bad = not_utf8_message(value or "", "cell")
        if bad:
            error = error or row.error(column, None, bad, reason="not UTF-8")
            row.cells[column] = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return error


def read_csv(path: Path, required: Sequence[str]) -> Iterator[Row]:
    """Rows of a CSV whose header must hold ``required``. Header names are stripped, because some
    releases pad them (SIIM's second column is ``" EncodedPixels"``). A row with a byte that is not
    UTF-8 raises, naming line and column, when it is read (so ``on_error=skip`` can skip it alone)."""
    with _open_surrogates(path) as f:
        reader = csv.reader(f)
        header = _header(path, reader)
        missing = [c for c in required if c not in header]
        if missing:
            raise PrepareError(path, 1, missing[0], None,
                               f"missing column (the header has {header}; expected {list(required)})",
                               reason="missing column")
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            row = Row(path, reader.line_num, dict(zip(header, cells)))
            row.undecodable = _undecodable(row)
            yield row


def _header(path: Path, reader) -> list[str]:
    header = [h.strip() for h in next(reader, [])]
    bad = not_utf8_message(",".join(header), "header")
    if bad:
        raise PrepareError(path, 1, None, None, bad, reason="not UTF-8")
    return header


def find_file(root: Path, patterns: Sequence[str], what: str) -> Path:
    """The one file under ``root`` matching the first pattern that matches anything."""
    for pattern in patterns:
        matches = sorted(p for p in root.glob(pattern) if p.is_file())
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise FileNotFoundError(f"{what}: several files match {pattern!r} under {root}: "
                                    f"{[str(m) for m in matches[:5]]}; pass the one to use")
    raise FileNotFoundError(f"{what}: nothing matches {list(patterns)} under {root}")


def require_dir(root: str | Path | None, dataset: str) -> Path:
    if root is None:
        raise ValueError(f"{dataset}: --root is required")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: root folder not found: {root}")
    return root


def dataset_root(root: str | Path | None, dataset: str, markers: Sequence[str], depth: int = 2) -> Path:
    """The folder that holds a dataset, given ``root`` as the user passed it: ``root`` itself when one of
    ``markers`` (glob patterns of the files the release puts at its top) is in it, else the one folder
    up to ``depth`` levels below that holds one. So both the folder an archive unpacks to and the
    folder above it work (CheXpert's CSV paths start with ``CheXpert-v1.0-small/``, so they are
    relative to the folder above). Anything else is an error that says which folder to pass."""
    root = require_dir(root, dataset)
    if _holds(root, markers):
        return root
    level = [root]
    for _ in range(depth):
        level = sorted(d for folder in level for d in _subfolders(folder))
        if len(level) > 256:  # a folder of images or patients, not one that holds a release
            break
        found = [d for d in level if _holds(d, markers)]
        if len(found) == 1:
            log.info("%s: reading the release in %s", dataset, found[0])
            return found[0]
        if found:
            raise FileNotFoundError(f"{dataset}: several folders under {root} hold {markers[0]}: "
                                    f"{[str(f) for f in found[:5]]}; pass the one to read as --root")
    raise FileNotFoundError(f"{dataset}: {markers[0]} is neither in {root} nor in a folder below it; pass as --root "
                            f"the folder that holds {markers[0]} (the one the archive unpacks to) or the folder above it")


def _holds(folder: Path, markers: Sequence[str]) -> bool:
    return any(p.is_file() for pattern in markers for p in folder.glob(pattern))


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:  # unreadable: not where the release is
        return []


def check_on_error(on_error: str) -> OnError:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    return on_error  # type: ignore[return-value]


def progress(items: Iterable, desc: str, total: int | None = None) -> Iterable:
    """A progress bar on a terminal, nothing in logs or tests."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, disable=None, leave=False)


def label_texts(findings: Sequence[str], normal: bool) -> dict[str, str]:
    """The two label-derived granularities of the chest X-ray sets: normal/abnormal, then the findings."""
    return {"abnormality": NORMAL if normal else ABNORMAL, "category": ", ".join(findings) or NO_FINDING}


# --- splits -----------------------------------------------------------------------------------------

def patient_order(patient_ids: Iterable[str], seed: int) -> list[str]:
    """Patients in a seeded order that depends only on (seed, id): a hash, not a random generator,
    so the order is the same on every Python version and platform."""
    def key(pid: str) -> str:
        return hashlib.sha256(f"{seed}\0{pid}".encode()).hexdigest()

    return sorted(set(patient_ids), key=lambda pid: (key(pid), pid))


def split_by_patient(records: list[Record], seed: int, valid: float = 0.0, test: float = 0.0,
                     pool: str = "train") -> list[Record]:
    """Move whole patients of the ``pool`` split to test and valid, ``round(n * fraction)`` each.

    Records of other splits (an official test list) keep their split. A patient is never divided.
    """
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise ValueError(f"split fractions must be in [0, 1) and sum below 1; got valid={valid}, test={test}")
    order = patient_order((r.patient_id for r in records if r.split == pool), seed)
    n_test, n_valid = round(len(order) * test), round(len(order) * valid)
    moved = {pid: "test" for pid in order[:n_test]}
    moved.update({pid: "valid" for pid in order[n_test:n_test + n_valid]})
    return [r.model_copy(update={"split": moved[r.patient_id]}) if r.split == pool and r.patient_id in moved
            else r for r in records]


# --- DICOM ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DicomHeader:
    width: int
    height: int
    photometric: str
    view: str | None
    patient_id: str | None


def read_dicom_header(path: Path) -> DicomHeader:
    """Check that a DICOM is a readable single-channel radiograph and return what prepare needs.

    The pixel data is deferred (not read), so this costs one small read per file; decoding is left
    to ``medgrain.data.imageio`` at training time.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size="1 KB")
        width, height = int(ds.Columns), int(ds.Rows)
        has_pixels = "PixelData" in ds
    except Exception as e:  # pydicom raises many types for a corrupt or non-DICOM file
        raise PrepareError(path, None, None, None, f"unreadable DICOM ({type(e).__name__}: {e})",
                           reason="unreadable DICOM") from None
    if not has_pixels:
        raise PrepareError(path, None, None, None, "DICOM has no pixel data", reason="unreadable DICOM")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PrepareError(path, None, "PhotometricInterpretation", photometric,
                           "expected MONOCHROME1 or MONOCHROME2 for a radiograph", reason="unreadable DICOM")
    view = str(ds.get("ViewPosition", "")).strip() or None
    patient = str(ds.get("PatientID", "")).strip() or None
    return DicomHeader(width, height, photometric, view, patient)


# --- one run -----------------------------------------------------------------------------------------

@dataclass
class PrepareResult:
    """What ``prepare`` wrote and what it left out; ``str()`` is the summary printed at the end."""

    dataset: str
    manifest: Path
    splits: dict[str, int]
    labels: dict[str, int]
    normal: int
    dropped: dict[str, int]
    skipped: dict[str, int]
    skip_examples: dict[str, str] = field(default_factory=dict)
    leaks: list[tuple[str, str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(self.splits.values())

    def summary(self) -> str:
        lines = [f"{self.dataset}: {self.records} records -> {self.manifest}",
                 "  splits: " + ", ".join(f"{s} {self.splits.get(s, 0)}" for s in SPLITS)]
        labels = sorted(self.labels.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append(f"  labels ({len(labels)}; {self.normal} records without any): "
                     + (", ".join(f"{k} {v}" for k, v in labels) or "none"))
        lines.append(f"  dropped by design: {sum(self.dropped.values())}")
        lines += [f"    {n} {reason}" for reason, n in sorted(self.dropped.items())]
        lines.append(f"  skipped as bad input: {sum(self.skipped.values())}")
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"    {n} {reason}, e.g. {self.skip_examples[reason]}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    __str__ = summary


class Preparation:
    """Collects records, drops and skips for one dataset, then writes the manifest.

    Preparers build records with ``record()`` (which names the source of any invalid one), report
    bad input with ``skip()`` (raises unless ``on_error="skip"``) and designed omissions with
    ``drop()``; ``finish()`` excludes leaks, writes the manifest sorted by id and returns the result.
    """

    def __init__(self, dataset: str, out: str | Path, on_error: str = "raise"):
        self.dataset, self.out, self.on_error = dataset, Path(out), check_on_error(on_error)
        self.dropped: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.skip_examples: dict[str, str] = {}
        self.notes: list[str] = []
        self._ids: dict[str, str] = {}

    def relative(self, path: Path) -> str:
        """Manifest paths are relative to the manifest's folder (docs/manifest.md)."""
        # abspath, not resolve: no per-component symlink lookups over ~400k images, and a path through
        # a symlinked data folder stays valid when the link moves with it
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.out.parent))).as_posix()

    def image(self, path: Path, source: Path, line: int | str | None) -> str:
        if not path.is_file():
            raise PrepareError(source, line, None, str(path), "image file not found", reason="image file not found")
        return self.relative(path)

    def record(self, source: Path, line: int | str | None, **fields: Any) -> Record:
        fields.setdefault("split", "train")
        try:
            rec = parse_record(fields, source, line)
        except ManifestError as e:
            raise PrepareError(source, line, e.field, None, e.message, reason=f"invalid {e.field or 'record'}") from None
        where = f"{source}:{line}" if line is not None else str(source)
        if rec.id in self._ids:
            raise PrepareError(source, line, "id", rec.id, f"duplicate record id (first from {self._ids[rec.id]})",
                               reason="duplicate id")
        self._ids[rec.id] = where
        return rec

    def skip(self, error: PrepareError) -> None:
        if self.on_error == "raise":
            raise error
        self.skipped[error.reason] += 1
        self.skip_examples.setdefault(error.reason, str(error))

    def drop(self, reason: str, count: int = 1) -> None:
        if count:
            self.dropped[reason] += count

    def finish(self, records: list[Record], exclude: Sequence[str | Path] = (), leak_threshold: int | None = None,
               workers: int | None = None) -> PrepareResult:
        leaks: list[tuple[str, str, int]] = []
        if exclude:
            from ..leakage import DEFAULT_THRESHOLD, drop_leaks

            threshold = DEFAULT_THRESHOLD if leak_threshold is None else leak_threshold
            records, leaks = drop_leaks(records, self.out.parent, exclude, threshold=threshold,
                                        workers=workers, on_unreadable=self._unreadable)
            self.drop(f"images also in an excluded manifest (pHash distance <= {threshold})",
                      len({b_id for b_id, _, _ in leaks}))
        records = sorted(records, key=lambda r: r.id)
        write_manifest(records, self.out)
        labels = Counter(name for r in records for name in r.labels)
        return PrepareResult(
            dataset=self.dataset, manifest=self.out, splits=dict(Counter(r.split for r in records)),
            labels=dict(labels), normal=sum(not r.labels for r in records), dropped=dict(self.dropped),
            skipped=dict(self.skipped), skip_examples=self.skip_examples, leaks=leaks, notes=self.notes)

    def _unreadable(self, record: Record, reason: str) -> None:
        self.skip(PrepareError(self.out, None, "image", record.image, f"cannot hash image: {reason}",
                               reason="unreadable image"))
