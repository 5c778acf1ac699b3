"""Published splits: ``medgrain prepare DATASET ... --splits SPEC`` puts records where a paper put them.

Drawing our own patient split makes every number incomparable with the literature; the test sets of
the field are published as id lists instead. Three layouts are read:

- **a folder of list files** (BenchX, Zhou et al., NeurIPS 2024 Datasets & Benchmarks): ``train.txt``,
  ``train_1.txt``, ``train_10.txt``, ``val.txt`` (or ``valid.txt``), ``test.txt``, one image id or path
  per line. ``train_1``/``train_10`` are the 1% and 10% label fractions; they become medgrain's
  published fraction files, so ``--fractions 0.01 0.1`` trains on exactly them.
- **a CSV with an id column and a split column** (what GLoRIA's and MGCA's preprocessing writes, e.g.
  MGCA's ``master.csv`` with ``Path`` and ``split``); split values ``train``, ``valid``/``val``/
  ``validate``, ``test``; or **a folder of one CSV per split** (``train.csv``, ``val.csv``, ``test.csv``,
  or ``<name>_train.csv`` ..., as GLoRIA's and MGCA's RSNA, SIIM and CheXpert preprocessing writes them),
  each with an id column.
- **one list file** named ``<split>_list.txt`` or ``<split>.txt`` (MRM's RSNA ``test_list.txt``: one id
  per line, optionally followed by labels, of which the first token is the id).

An entry resolves to a record by the record's ``id`` or the image's path: the entry's whole path, or
ever shorter tails of it, against the tails of the image path, with or without file suffixes
(``CheXpert-v1.0/train/patient1/study1/view1_frontal.jpg`` names the record whose image is
``CheXpert-v1.0-small/train/patient1/study1/view1_frontal.jpg``; ``p1.png`` names ``p1.dcm``). An entry that resolves to nothing
is an error listing the first few (or a counted skip with ``on_error="skip"``); one that resolves to
two records, or a record listed in two splits, is always an error.

Records not listed: when the split defines ``train`` they are dropped and counted (the published split
is the whole dataset); otherwise (a test list alone, BenchX sets without ``train.txt``) they keep the
split the adapter drew, except that a drawn test record moves to train, so the test set is exactly
the published one.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..manifest import Record, read_manifest, write_manifest
from .common import PrepareError, PrepareResult, open_text

SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "validate": "valid",
                 "dev": "valid", "test": "test"}
# BenchX's label-fraction files: name -> fraction of the training split
FRACTION_FILES = {"train_1": 0.01, "train_10": 0.1}
ID_COLUMNS = ("id", "Path", "path", "dicom_id", "image_id", "ImageID", "patientId", "Image Index", "imgpath",
              "filename", "image")
SHOWN = 5


@dataclass
class Entry:
    """One line of a split file, kept with where it came from for error messages."""

    value: str
    source: Path
    line: int


@dataclass
class PublishedSplit:
    source: Path
    splits: dict[str, list[Entry]] = field(default_factory=dict)
    fractions: dict[float, list[Entry]] = field(default_factory=dict)


def read_published_split(spec: str | Path) -> PublishedSplit:
    spec = Path(spec)
    if spec.is_dir():
        return _read_list_folder(spec)
    if not spec.is_file():
        raise FileNotFoundError(f"--splits: no such file or folder: {spec}")
    if spec.suffix.lower() in (".csv", ".gz") or spec.name.endswith(".csv.gz"):
        return _read_split_csv(spec)
    name = spec.stem.removesuffix("_list")
    if name not in SPLIT_ALIASES:
        raise PrepareError(spec, None, None, spec.name, "a single list file must be named <split>.txt or "
                           f"<split>_list.txt with split one of {sorted(SPLIT_ALIASES)} (MRM's test_list.txt)")
    return PublishedSplit(spec, {SPLIT_ALIASES[name]: _read_list(spec)})


def _read_list(path: Path) -> list[Entry]:
    entries = []
    with open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            tokens = line.split()
            if tokens and not tokens[0].startswith("#"):
                entries.append(Entry(tokens[0].strip(","), path, line_no))
    return entries


def _csv_split_name(path: Path) -> str | None:
    """``train.csv``, ``rsna_valid.csv``, ``chexpert-test.csv`` -> the split their last word names."""
    word = path.name.removesuffix(".gz").removesuffix(".csv").replace("-", "_").split("_")[-1].lower()
    return SPLIT_ALIASES.get(word)


def _read_id_csv(path: Path) -> list[Entry]:
    with open_text(path) as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        id_column = next((c for c in ID_COLUMNS if c in header), None)
        if id_column is None:
            raise PrepareError(path, 1, None, None, f"the header {header} has no id column (one of "
                                                    f"{', '.join(ID_COLUMNS)})")
        return [Entry((row.get(id_column) or "").strip(), path, reader.line_num) for row in reader]


def _read_list_folder(folder: Path) -> PublishedSplit:
    split = PublishedSplit(folder)
    for path in sorted([*folder.glob("*.csv"), *folder.glob("*.csv.gz")]):
        name = _csv_split_name(path)
        if name is not None:
            if name in split.splits:
                raise PrepareError(path, None, None, path.name, f"a second file for split '{name}'")
            split.splits[name] = _read_id_csv(path)
    for path in sorted(folder.glob("*.txt")):
        name = path.stem.removesuffix("_list")
        if name in FRACTION_FILES:
            split.fractions[FRACTION_FILES[name]] = _read_list(path)
        elif name in SPLIT_ALIASES:
            target = SPLIT_ALIASES[name]
            if target in split.splits:
                raise PrepareError(path, None, None, path.name, f"a second file for split '{target}'")
            split.splits[target] = _read_list(path)
    if not split.splits:
        raise FileNotFoundError(f"--splits {folder}: no train.txt, val.txt or test.txt (BenchX) nor train.csv, "
                                "val.csv or test.csv (GLoRIA/MGCA) in the folder; see docs/evaluation.md")
    return split


def _read_split_csv(path: Path) -> PublishedSplit:
    split = PublishedSplit(path)
    with open_text(path) as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        id_column = next((c for c in ID_COLUMNS if c in header), None)
        split_column = next((c for c in header if c.lower() == "split"), None)
        if id_column is None or split_column is None:
            missing = f"id column (one of {', '.join(ID_COLUMNS)})" if id_column is None else "'split' column"
            raise PrepareError(path, 1, None, None, f"the header {header} has no {missing}")
        for row in reader:
            value = (row.get(split_column) or "").strip().lower()
            if value not in SPLIT_ALIASES:
                raise PrepareError(path, reader.line_num, split_column, value,
                                   f"unknown split; expected one of {sorted(SPLIT_ALIASES)}")
            split.splits.setdefault(SPLIT_ALIASES[value], []).append(
                Entry((row.get(id_column) or "").strip(), path, reader.line_num))
    return split


# --- resolving entries to records ----------------------------------------------------------------------

def _keys(record: Record) -> set[str]:
    """The record's id and every tail of its image path, with and without the file suffix."""
    keys = {record.id}
    if record.image:
        path = PurePosixPath(record.image)
        for stripped in (path, path.with_suffix("")):
            parts = stripped.parts
            keys.update("/".join(parts[i:]) for i in range(len(parts)) if ".." not in parts[i:])
    return keys


def record_index(records: list[Record]) -> dict[str, list[str]]:
    """Every key an entry may use -> the ids of the records it names."""
    index: dict[str, list[str]] = {}
    for record in records:
        for key in _keys(record):
            index.setdefault(key, []).append(record.id)
    return index


def _resolve(entry: Entry, index: dict[str, list[str]]) -> str | None:
    """The record an entry names: its whole path first, then ever shorter tails of it (a published list
    may start at another folder: ``CheXpert-v1.0/train/...`` for ``CheXpert-v1.0-small/train/...``), each
    with and without its file suffix (``p1.png`` for ``p1.dcm``). A tail naming several records leaves
    the entry unresolved (a shorter one would be more ambiguous still); it is reported with the others."""
    parts = [p for p in PurePosixPath(entry.value).parts if p not in (".", "/")]
    for i in range(len(parts)):
        tail = "/".join(parts[i:])
        for key in dict.fromkeys((tail, str(PurePosixPath(tail).with_suffix("")) if "." in parts[-1] else tail)):
            ids = sorted(set(index.get(key, ())))
            if len(ids) > 1:
                return None
            if ids:
                return ids[0]
    return None


def _unresolved_error(missing: list[Entry], total: int) -> PrepareError:
    shown = ", ".join(f"{e.source.name}:{e.line} {e.value!r}" for e in missing[:SHOWN])
    first = missing[0]
    return PrepareError(first.source, first.line, None, first.value,
                        f"{len(missing)} of {total} entries of the published split name no record of the manifest (or several) "
                        f"(first: {shown}); is it the same dataset and release? --on-error skip counts and leaves "
                        "them out", reason="split entry names no record")


def resolve_split(split: PublishedSplit, records: list[Record], on_error: str = "raise"):
    """``(split of each record id, fraction -> record ids, count of skipped entries)``."""
    index = record_index(records)
    assigned: dict[str, tuple[str, Entry]] = {}
    missing: list[Entry] = []
    total = 0
    for name, entries in split.splits.items():
        for entry in entries:
            total += 1
            record_id = _resolve(entry, index)
            if record_id is None:
                missing.append(entry)
                continue
            if record_id in assigned and assigned[record_id][0] != name:
                other = assigned[record_id][1]
                raise PrepareError(entry.source, entry.line, None, entry.value,
                                   f"record {record_id!r} is also in split '{assigned[record_id][0]}' "
                                   f"({other.source.name}:{other.line})")
            assigned[record_id] = (name, entry)
    fractions: dict[float, list[str]] = {}
    for fraction, entries in split.fractions.items():
        total += len(entries)
        ids = []
        for entry in entries:
            record_id = _resolve(entry, index)
            if record_id is None:
                missing.append(entry)
            else:
                ids.append(record_id)
        fractions[fraction] = list(dict.fromkeys(ids))
    if missing and on_error != "skip":
        raise _unresolved_error(missing, total)
    return {rid: name for rid, (name, _) in assigned.items()}, fractions, missing


def assign_splits(records: list[Record], assigned: dict[str, str], defines_train: bool) -> tuple[list[Record], int]:
    """Records with their published split; unlisted ones dropped (``defines_train``) or kept (test -> train)."""
    out, dropped = [], 0
    for record in records:
        if record.id in assigned:
            out.append(record.model_copy(update={"split": assigned[record.id]}))
        elif defines_train:
            dropped += 1
        else:
            out.append(record.model_copy(update={"split": "train"}) if record.split == "test" else record)
    return out, dropped


def apply_published_split(result: PrepareResult, spec: str | Path, on_error: str = "raise") -> PrepareResult:
    """Rewrite the manifest ``result`` names with the published split ``spec``; write its label
    fractions as published fraction files; return the updated summary."""
    from medgrain.evaluation.fractions import write_published_fraction

    split = read_published_split(spec)
    records = list(read_manifest(result.manifest).records)
    assigned, fractions, missing = resolve_split(split, records, on_error)
    records, dropped = assign_splits(records, assigned, "train" in split.splits)
    train_ids = {r.id for r in records if r.split == "train"}
    for fraction, ids in fractions.items():
        outside = [i for i in ids if i not in train_ids]
        if outside:
            raise PrepareError(split.source, None, None, outside[0], f"{len(outside)} records of the "
                               f"{fraction:.0%} label fraction are not in the published train split")
    write_manifest(records, result.manifest)
    for fraction, ids in fractions.items():
        write_published_fraction(result.manifest, "train", fraction, ids, f"published in {split.source}")
    result.splits = dict(Counter(r.split for r in records))
    result.labels = dict(Counter(name for r in records for name in r.labels))
    result.normal = sum(not r.labels for r in records)
    if dropped:
        result.dropped["not in the published split"] = dropped
    if missing:
        result.skipped["split entry names no record"] = len(missing)
        result.skip_examples["split entry names no record"] = str(_unresolved_error(missing, len(missing)))
    result.notes.append(f"split: published, from {split.source}"
                        + (f"; label fractions {', '.join(f'{f:.0%}' for f in sorted(fractions))} written as "
                           "published fraction files" if fractions else ""))
    _note_patient_overlap(result, records)
    return result


def _note_patient_overlap(result: PrepareResult, records: list[Record]) -> None:
    """A published split may divide a patient between train and test; say so rather than fix it."""
    splits_of: dict[str, set[str]] = {}
    for r in records:
        if r.patient_id:
            splits_of.setdefault(r.patient_id, set()).add(r.split)
    shared = sum(len(s) > 1 for s in splits_of.values())
    if shared:
        result.notes.append(f"warning: {shared} patients have images in more than one split of the published split")
