"""CheXpert 5x200 and MIMIC 5x200 (Huang et al., GLoRIA, ICCV 2021): 200 images for each of
atelectasis, cardiomegaly, edema, pleural effusion and consolidation, each positive for that class
only among the five. The zero-shot classification and retrieval test of GLoRIA, MedCLIP, cxr-clip,
UniMed-CLIP and BenchX.

``prepare chexpert-5x200 --manifest PREPARED_CHEXPERT.jsonl --out OUT.jsonl [--seed S] [--ids PUBLISHED.csv]``
(``mimic-5x200`` likewise, over ``prepare mimic-cxr``) builds it from a prepared manifest:

- **drawn**: among the records positive for exactly one of the five classes (and, where the manifest
  keeps the labeler's uncertain mentions in ``meta.uncertain``, uncertain about none of the others),
  200 per class in a seeded order that depends only on (seed, id). Fewer than 200 candidates is an
  error naming the class.
- **published** (``--ids``): GLoRIA's ``chexpert_5x200.csv`` (``Path`` and the CheXpert columns, one
  of the five at 1) or BenchX's MIMIC 5x200 list (an id column, see ``prepare --splits``); every id must
  name a record of the manifest, and each record's class is its published column, else its single
  positive among the five.

Every record keeps its texts and report (retrieval needs them) and gets ``labels = [its class]`` and
split ``test``. ``--pretrain M.jsonl --pretrain-out CLEAN.jsonl`` writes M without the 5x200 patients
(``medgrain.data.leakage.drop_patients``), so pretraining never sees a test patient.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..manifest import Record, read_manifest, write_manifest
from .common import PREPARERS, Preparation, PrepareError, PrepareResult, read_csv

CLASSES = ("Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion", "Consolidation")
PER_CLASS = 200


def single_positive(record: Record) -> str | None:
    """The record's one class among the five, or None (none, or several; or uncertain about another)."""
    positive = [c for c in CLASSES if c in record.labels]
    uncertain = set((record.meta or {}).get("uncertain") or ()) & set(CLASSES)
    if len(positive) != 1 or uncertain - set(positive):
        return None
    return positive[0]


def _order(seed: int, record_id: str) -> str:
    return hashlib.sha256(f"{seed}\0{record_id}".encode()).hexdigest()


def draw_five_by_200(records: Sequence[Record], seed: int, per_class: int = PER_CLASS) -> list[tuple[Record, str]]:
    candidates: dict[str, list[Record]] = {c: [] for c in CLASSES}
    for record in records:
        if record.image is not None and (c := single_positive(record)) is not None:
            candidates[c].append(record)
    short = {c: len(v) for c, v in candidates.items() if len(v) < per_class}
    if short:
        raise ValueError(f"too few records positive for only one of the five classes: {short} "
                         f"(need {per_class} each); is the manifest the whole training set?")
    return [(r, c) for c in CLASSES for r in sorted(candidates[c], key=lambda r: (_order(seed, r.id), r.id))[:per_class]]


def published_five_by_200(records: Sequence[Record], ids_csv: Path) -> list[tuple[Record, str]]:
    """The published list: each entry resolved to a record, its class from the list's columns."""
    from .splits import ID_COLUMNS, Entry, _resolve, record_index

    index, by_id = record_index(list(records)), {r.id: r for r in records}
    chosen, missing = [], []
    rows = list(read_csv(ids_csv, []))
    header = list(rows[0].cells) if rows else []
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    if id_column is None:
        raise PrepareError(ids_csv, 1, None, None, f"the header {header} has no id column (one of {ID_COLUMNS})")
    for row in rows:
        record_id = _resolve(Entry(row[id_column], ids_csv, row.line), index)
        if record_id is None:
            missing.append(f"{row.line} {row[id_column]!r}")
            continue
        published = [c for c in CLASSES if (row.cells.get(c) or "").strip() in ("1", "1.0")]
        cls = published[0] if len(published) == 1 else single_positive(by_id[record_id])
        if cls is None:
            raise row.error(id_column, row[id_column], "no single class among the five, in the list or the record")
        chosen.append((by_id[record_id], cls))
    if missing:
        raise PrepareError(ids_csv, None, None, None, f"{len(missing)} of {len(rows)} ids name no record of the "
                           f"manifest (first: {', '.join(missing[:5])})")
    return chosen


def prepare_five_by_200(dataset: str, out: str | Path, manifest: str | Path | None, ids: str | Path | None,
                        seed: int, pretrain: str | Path | None, pretrain_out: str | Path | None,
                        on_error: str = "raise", exclude: Sequence[str | Path] = (),
                        leak_threshold: int | None = None) -> PrepareResult:
    if manifest is None:
        raise ValueError(f"{dataset}: --manifest is required (a manifest from `medgrain prepare "
                         f"{dataset.removesuffix('-5x200').replace('mimic', 'mimic-cxr')}`)")
    if (pretrain is None) != (pretrain_out is None):
        raise ValueError(f"{dataset}: --pretrain and --pretrain-out go together")
    source = read_manifest(manifest)
    chosen = published_five_by_200(source.records, Path(ids)) if ids else draw_five_by_200(source.records, seed)
    prep = Preparation(dataset, out, on_error)
    records = [prep.record(Path(source.path), None, **_test_record(source, r, c, Path(out))) for r, c in chosen]
    prep.notes.append("per class: " + ", ".join(f"{c} {n}" for c, n in Counter(c for _, c in chosen).items())
                      + (f"; published list {ids}" if ids else f"; drawn with seed {seed}"))
    result = prep.finish(records, exclude, leak_threshold)
    if pretrain is not None:
        from ..leakage import drop_patients

        base = read_manifest(pretrain)
        kept, dropped = drop_patients(base.records, [result.manifest])
        write_manifest([_moved(r, base, Path(pretrain_out)) for r in kept], pretrain_out)
        result.notes.append(f"{pretrain_out}: {pretrain} without the {len(dropped)} 5x200 patients "
                            f"({len(base.records) - len(kept)} records dropped, {len(kept)} kept)")
    return result


def _test_record(source, record: Record, cls: str, out: Path) -> dict:
    fields = _moved(record, source, out).model_dump(exclude_none=True)
    fields.update(split="test", labels=[cls], findings=[f for f in fields.get("findings", []) if f["name"] == cls])
    return fields


def _moved(record: Record, manifest, out: Path) -> Record:
    """A record of ``manifest`` with its paths relative to ``out``'s folder."""
    import os

    def rel(path: str | None) -> str | None:
        if path is None:
            return None
        return Path(os.path.relpath(os.path.abspath(manifest.resolve(path)), os.path.abspath(out.parent))).as_posix()

    findings = [f.model_copy(update={"mask": rel(f.mask)}) for f in record.findings]
    return record.model_copy(update={"image": rel(record.image), "findings": findings})


@PREPARERS.register("chexpert-5x200", help="CheXpert 5x200 (GLoRIA): 200 images for each of five findings")
def prepare_chexpert_5x200(root: str | Path | None, out: str | Path, *, manifest: str | Path | None = None,
                           ids: str | Path | None = None, pretrain: str | Path | None = None,
                           pretrain_out: str | Path | None = None, seed: int = 0, on_error: str = "raise",
                           exclude: Sequence[str | Path] = (), leak_threshold: int | None = None) -> PrepareResult:
    """CheXpert 5x200 from a ``prepare chexpert`` manifest (``root`` is not used)."""
    return prepare_five_by_200("chexpert-5x200", out, manifest, ids, seed, pretrain, pretrain_out, on_error, exclude,
                               leak_threshold)


@PREPARERS.register("mimic-5x200", help="MIMIC 5x200 (GLoRIA): 200 images for each of five findings")
def prepare_mimic_5x200(root: str | Path | None, out: str | Path, *, manifest: str | Path | None = None,
                        ids: str | Path | None = None, pretrain: str | Path | None = None,
                        pretrain_out: str | Path | None = None, seed: int = 0, on_error: str = "raise",
                        exclude: Sequence[str | Path] = (), leak_threshold: int | None = None) -> PrepareResult:
    """MIMIC 5x200 from a ``prepare mimic-cxr`` manifest (``root`` is not used)."""
    return prepare_five_by_200("mimic-5x200", out, manifest, ids, seed, pretrain, pretrain_out, on_error, exclude,
                               leak_threshold)
