"""The manifest: the only thing the rest of medgrain knows about a dataset.

One JSON object per line (``manifest.jsonl``), also readable from CSV. Paths are relative to the
manifest's folder. Every record is validated; a bad one is reported with file, line and field, or,
with ``on_error="skip"``, skipped and counted (never dropped silently). See docs/manifest.md.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, ValidationInfo, field_validator

from ..errors import user_error
from ..io import atomic_write

SPLITS = ("train", "valid", "test")
OnError = Literal["raise", "skip"]


def field_kind(field: str) -> str:
    """A field without its list indices (``findings.0.box`` -> ``findings.box``): skips count per kind."""
    return re.sub(r"[.]\d+", "", field)


@user_error
class ManifestError(ValueError):
    """A bad manifest record: names the file, the line (1-based) and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str, kind: str | None = None):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        # the short reason a skip is counted under: "invalid field 'findings.box'", "malformed JSON"...
        self.kind = kind or (f"invalid field '{field_kind(field)}'" if field else "malformed line")
        where = f"{self.path}:{line}" if line is not None else self.path
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


def _non_empty(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


class Finding(BaseModel):
    """One finding of a record, with where it is and how severe, and its ground truth if known."""

    model_config = ConfigDict(extra="forbid")
    name: str
    location: str | None = None
    severity: str | None = None
    mask: str | None = None  # PNG path relative to the manifest, same size as the image
    box: tuple[float, float, float, float] | None = None  # [x0, y0, x1, y1] in pixels
    phrase: str | None = None  # the text that names this finding here (MS-CXR's label_text), for grounding

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _non_empty(v, "finding name")

    @field_validator("mask")
    @classmethod
    def _mask(cls, v: str | None) -> str | None:
        return None if v is None else _non_empty(v, "mask path")

    @field_validator("phrase")
    @classmethod
    def _phrase(cls, v: str | None) -> str | None:
        return None if v is None else _non_empty(v, "finding phrase")

    @field_validator("box", mode="before")
    @classmethod
    def _box_has_four_numbers(cls, v):
        if v is not None and (not isinstance(v, (list, tuple)) or len(v) != 4):
            raise ValueError(f"box must be 4 numbers [x0, y0, x1, y1], got {v!r}")
        return v

    @field_validator("box")
    @classmethod
    def _box(cls, v):
        # pixel edges: a one-pixel finding at (5, 5) is [5, 5, 6, 6], so an empty box is an error
        if v is not None and not (all(math.isfinite(c) for c in v) and 0 <= v[0] < v[2] and 0 <= v[1] < v[3]):
            raise ValueError(f"box {list(v)} is not [x0, y0, x1, y1] in pixels with 0 <= x0 < x1 and 0 <= y0 < y1")
        return v


class Record(BaseModel):
    """One image (or one text-only study) with its labels and texts at every granularity."""

    model_config = ConfigDict(extra="forbid")
    id: str
    image: str | None  # None: a text-only record (e.g. OpenI reports without their images)
    split: Literal["train", "valid", "test"]
    labels: list[str] = []  # finding names; empty means normal
    # granularity -> text, ordered coarse to fine; a granularity whose text is null (or left out) is
    # absent for this record: it is dropped here, so ``g in record.texts`` means "has a text at g"
    texts: dict[str, str | None] = {}
    report: str | None = None
    findings: list[Finding] = []
    domain: str | None = None
    view: str | None = None
    patient_id: str | None = None
    meta: dict[str, Any] = {}
    _line: int | None = PrivateAttr(default=None)  # where read_manifest found it, for later errors

    @property
    def line(self) -> int | None:
        """The record's 1-based line in its manifest file (None for records built in memory)."""
        return self._line

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _non_empty(v, "id")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        return None if v is None else _non_empty(v, "image path")

    @field_validator("texts")
    @classmethod
    def _texts(cls, v: dict[str, str | None]) -> dict[str, str]:
        for k, t in v.items():
            _non_empty(k, "granularity name")
            if t is not None:  # null is an absent text; an empty or blank string is a bad one
                _non_empty(t, f"text of granularity '{k}'")
        return {k: t for k, t in v.items() if t is not None}

    @field_validator("report")
    @classmethod
    def _report(cls, v: str | None) -> str | None:
        return None if v is None else _non_empty(v, "report")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        for name in v:
            _non_empty(name, "label")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate labels in {v}")
        return v

    @field_validator("findings")
    @classmethod
    def _findings_are_labelled(cls, v: list[Finding], info: ValidationInfo) -> list[Finding]:
        if "labels" not in info.data:  # labels were invalid; that error is reported instead
            return v
        unknown = sorted({f.name for f in v} - set(info.data["labels"]))
        if unknown:
            raise ValueError(f"findings {unknown} are not in labels {info.data['labels']}")
        return v

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_defaults=False), ensure_ascii=False)


@dataclass
class Skipped:
    line: int
    field: str | None
    reason: str
    kind: str = "malformed line"  # the short reason it is counted under (ManifestError.kind)


@dataclass
class Manifest:
    """Validated records plus where they came from and what was skipped."""

    path: Path
    records: list[Record]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    # Where images and masks come from: files beside the manifest here; members of WebDataset
    # shards in ``medgrain.data.shards.ShardedManifest``. Datasets read only through these three.
    def has_file(self, relative: str) -> bool:
        return self.resolve(relative).is_file()

    def read_image(self, relative: str, max_pixels: int | None = None):
        from .imageio import read_image

        return read_image(self.resolve(relative), max_pixels)

    def read_mask(self, relative: str, size: tuple[int, int] | None = None, max_pixels: int | None = None):
        from .imageio import read_mask

        return read_mask(self.resolve(relative), size, max_pixels)

    def split(self, name: str) -> list[Record]:
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}'; expected one of {SPLITS}")
        return [r for r in self.records if r.split == name]

    @property
    def granularities(self) -> list[str]:
        """Every granularity any record has (the union), coarse to fine as the records order them."""
        return union_of_orders(list(order) for order in dict.fromkeys(tuple(r.texts) for r in self.records))

    @property
    def finding_names(self) -> list[str]:
        return sorted({name for r in self.records for name in r.labels})

    def __len__(self) -> int:
        return len(self.records)


def union_of_orders(orders: Iterable[list[str]]) -> list[str]:
    """Merge ordered lists of names into one that keeps each list's order where they agree: a name
    first seen in a later list goes right after the name that precedes it there (``[a, c]`` then
    ``[a, b, c]`` gives ``[a, b, c]``), so a record lacking a granularity cannot reorder the rest."""
    merged: list[str] = []
    for order in orders:
        for k, name in enumerate(order):
            if name in merged:
                continue
            before = next((p for p in reversed(order[:k]) if p in merged), None)
            merged.insert(0 if before is None else merged.index(before) + 1, name)
    return merged


def _field_of(err: ValidationError) -> tuple[str | None, str]:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    kind, msg = first.get("type"), first.get("msg", str(err))
    if kind == "extra_forbidden":
        msg = "unknown field"
    elif kind == "missing":
        msg = "required field is missing"
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif "input" in first:
        msg = f"{msg} (got {first['input']!r})"
    return loc or None, msg


def parse_record(obj: Any, path: str | Path = "<record>", line: int | None = None) -> Record:
    """Validate one record (a dict as read from a JSON line); errors name ``path``, ``line`` and the field."""
    if not isinstance(obj, dict):
        raise ManifestError(path, line, None, f"expected a JSON object, got {type(obj).__name__}", "not a JSON object")
    try:
        record = Record.model_validate(obj)
    except ValidationError as e:
        fld, msg = _field_of(e)
        what = {"extra_forbidden": "unknown", "missing": "missing"}.get(e.errors()[0].get("type"), "invalid")
        raise ManifestError(path, line, fld, msg, f"{what} field '{field_kind(fld or '')}'") from None
    record._line = line
    return record


CSV_JSON_COLUMNS = ("findings", "meta", "texts")


def undecodable_byte(text: str) -> tuple[int, int] | None:
    """``(position, byte)`` of the first byte that was not UTF-8 in ``text`` decoded with
    ``errors="surrogateescape"`` (where such a byte became a lone surrogate), else None. Decoding that
    way lets a CSV reader reach the row and cell that holds the byte, and name them."""
    if text.isascii():
        return None
    for k, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            return k, ord(ch) - 0xDC00
    return None


def not_utf8_message(text: str, where: str) -> str | None:
    """The message for ``text``'s first non-UTF-8 byte (``where``: "cell", "line"), or None."""
    bad = undecodable_byte(text)
    if bad is None:
        return None
    return (f"not UTF-8 text: byte 0x{bad[1]:02X} at character {bad[0] + 1} of the {where} "
            "(re-save the file as UTF-8)")


def _csv_header(path: Path, header: list[str] | None) -> list[str]:
    """Check the header once: a wrong column would otherwise fail every row the same way."""
    if header is None:
        raise ManifestError(path, 1, None, "empty CSV file: expected a header row")
    columns = [c.strip() for c in header]
    known = set(Record.model_fields)
    for c in columns:
        if c not in known and not (c.startswith("texts.") and c[len("texts."):].strip()):
            raise ManifestError(path, 1, c or "<empty>", f"unknown column; expected texts.<granularity> or one of {sorted(known)}")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ManifestError(path, 1, duplicated[0], "column appears more than once")
    for required in ("id", "split"):
        if required not in columns:
            raise ManifestError(path, 1, required, "required column is missing")
    return columns


def _csv_row(path: Path, line: int, columns: list[str], row: list[str]) -> dict[str, Any]:
    """One CSV row as the record dict a JSON line would give; empty cells are absent fields."""
    if len(row) != len(columns):
        raise ManifestError(path, line, None, f"row has {len(row)} cells but the header has {len(columns)}",
                            "wrong number of CSV cells")
    obj: dict[str, Any] = {"image": None}
    texts: dict[str, str] = {}
    for column, value in zip(columns, row):
        if value == "":
            continue
        bad = not_utf8_message(value, "cell")
        if bad:
            raise ManifestError(path, line, column, bad, "not UTF-8")
        if column.startswith("texts."):
            texts[column[len("texts."):]] = value
        elif column == "labels" and not value.lstrip().startswith("["):
            obj[column] = [name.strip() for name in value.split("|")]
        elif column in CSV_JSON_COLUMNS or column == "labels":
            try:
                obj[column] = json.loads(value)
            except json.JSONDecodeError as e:
                raise ManifestError(path, line, column, f"cell is not valid JSON: {e}") from None
        else:
            obj[column] = value
    if texts:
        obj["texts"] = {**obj.get("texts", {}), **texts}
    return obj


def _csv_objects(path: Path) -> Iterator[tuple[int, dict | ManifestError]]:
    # surrogateescape: a non-UTF-8 byte reaches its row and cell, which _csv_row names
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            bad = not_utf8_message(",".join(header or []), "header")
            if bad:
                raise ManifestError(path, 1, None, bad)
            columns = _csv_header(path, header)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                try:
                    yield reader.line_num, _csv_row(path, reader.line_num, columns, row)
                except ManifestError as e:
                    yield reader.line_num, e
        except csv.Error as e:
            raise ManifestError(path, reader.line_num, None, f"malformed CSV: {e}") from None


def _jsonl_objects(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield line_no, ManifestError(path, line_no, None, f"not UTF-8 text ({e.reason})", "not UTF-8")
                continue
            if not text.strip():
                continue
            try:
                yield line_no, json.loads(text)
            except json.JSONDecodeError as e:
                yield line_no, ManifestError(path, line_no, None, f"malformed JSON: {e.msg} at column {e.colno}",
                                             "malformed JSON")


def read_manifest(path: str | Path, on_error: OnError = "raise") -> Manifest:
    """Read and validate a manifest (``.jsonl``/``.json`` lines, or ``.csv``).

    ``on_error="raise"`` stops at the first bad record with a ManifestError naming file, line and
    field; ``"skip"`` keeps going and lists every skipped line in ``Manifest.skipped``. Problems that
    no record can survive (a bad CSV header, undecodable CSV text) raise in both modes.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    objects = _csv_objects(path) if path.suffix.lower() == ".csv" else _jsonl_objects(path)
    records: list[Record] = []
    skipped: list[Skipped] = []
    seen: dict[str, int] = {}
    for line_no, obj in objects:
        try:
            if isinstance(obj, ManifestError):
                raise obj
            rec = parse_record(obj, path, line_no)
            if rec.id in seen:
                raise ManifestError(path, line_no, "id", f"duplicate id '{rec.id}' (first on line {seen[rec.id]})",
                                    "duplicate id")
        except ManifestError as e:
            if on_error == "raise":
                raise
            skipped.append(Skipped(line_no, e.field, e.message, e.kind))
            continue
        seen[rec.id] = line_no
        records.append(rec)
    return Manifest(path=path, records=records, skipped=skipped)


def write_manifest(records: Iterable[Record | dict], path: str | Path) -> Path:
    """Write records as JSON lines, validating each and refusing duplicate ids; the file appears only
    when every record is written (``atomic_write``), so a failure leaves no half manifest."""
    path = Path(path)
    seen: dict[str, int] = {}

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            for line, r in enumerate(records, start=1):
                rec = r if isinstance(r, Record) else parse_record(r, path, line)
                if rec.id in seen:
                    raise ManifestError(path, line, "id", f"duplicate id '{rec.id}' (first on line {seen[rec.id]})")
                seen[rec.id] = line
                f.write(rec.to_json() + "\n")

    return atomic_write(path, write)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one manifest line; docs/manifest.schema.json is this, written by
    ``python -c "import json, medgrain.data as d; print(json.dumps(d.json_schema(), indent=2))"``."""
    schema = Record.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "medgrain manifest record"
    return schema

