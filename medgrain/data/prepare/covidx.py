"""COVIDx (COVID-Net's chest X-ray collection) -> manifest.

Layout: ``ROOT/train_COVIDx9A.txt`` and ``ROOT/test_COVIDx9A.txt`` (MGCA's version; any
``train_COVIDx*.txt`` / ``test_COVIDx*.txt`` or ``train.txt`` / ``test.txt`` is found, or pass the file
names), images ``ROOT/train/<filename>`` and ``ROOT/test/<filename>``. Each line reads
``patient_id filename label source`` separated by spaces.

Three classes: normal (no label), pneumonia (non-COVID) and COVID-19; ``meta["class"]`` keeps the
class name for 3-class evaluation. The official test file is the test split; 20% of the training
patients form the validation split (MGCA took 20% of rows, so a patient could be on both sides).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
    open_text,
    require_dir,
    split_by_patient,
)

# label as written in the files (compared case-insensitively) -> (class name, manifest label or None)
CLASSES = {"normal": ("normal", None), "pneumonia": ("pneumonia", "Pneumonia"), "covid-19": ("COVID-19", "COVID-19")}


def _label_file(root: Path, given: str | Path | None, split: str) -> Path:
    if given is not None:
        path = Path(given) if Path(given).is_absolute() else root / given
        if not path.is_file():
            raise FileNotFoundError(f"COVIDx {split} label file not found: {path}")
        return path
    return find_file(root, [f"{split}_COVIDx*.txt", f"{split}.txt"], f"COVIDx {split} label file")


@PREPARERS.register("covidx", help="COVIDx: COVID-Net's chest X-ray collection (COVID-19, pneumonia, normal)")
def prepare_covidx(root: str | Path, out: str | Path, *, train_file: str | Path | None = None,
                   test_file: str | Path | None = None, valid_fraction: float = 0.2, seed: int = 0,
                   on_error: str = "raise", exclude: Sequence[str | Path] = (),
                   leak_threshold: int | None = None) -> PrepareResult:
    root = (require_dir(root, "covidx") if train_file or test_file else
            dataset_root(root, "covidx", ["train_COVIDx*.txt", "train.txt"]))
    prep = Preparation("covidx", out, on_error)
    records: list[Record] = []
    for split, given in (("train", train_file), ("test", test_file)):
        path = _label_file(root, given, split)
        with open_text(path) as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    tokens = line.split()
                    if len(tokens) < 4:
                        raise PrepareError(path, line_no, None, line.strip(),
                                           "expected 'patient_id filename label source'", reason="malformed line")
                    # filenames may contain spaces; the label and source never do
                    patient, filename, label, source = tokens[0], " ".join(tokens[1:-2]), tokens[-2], tokens[-1]
                    if label.lower() not in CLASSES:
                        raise PrepareError(path, line_no, "label", label, "expected normal, pneumonia or COVID-19",
                                           reason="invalid label value")
                    name, finding = CLASSES[label.lower()]
                    records.append(prep.record(
                        path, line_no, id=f"{split}/{filename}",
                        image=prep.image(root / split / filename, path, line_no), split=split,
                        labels=[finding] if finding else [],
                        texts={"abnormality": ABNORMAL if finding else NORMAL, "category": finding or NORMAL},
                        patient_id=patient, domain="cxr", meta={"class": name, "source": source}))
                except PrepareError as e:
                    prep.skip(e)
    records = split_by_patient(records, seed, valid=valid_fraction)
    return prep.finish(records, exclude, leak_threshold)
