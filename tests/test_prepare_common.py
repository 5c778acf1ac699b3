"""Shared machinery of medgrain prepare: patient-level splits, errors, summary, registry; and leakage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_prepare import make_chexpert, make_rsna, pixels, write_image
from PIL import Image

from medgrain.data import leakage
from medgrain.data.manifest import Record, read_manifest, write_manifest
from medgrain.data.prepare import PREPARERS, PrepareError, options, prepare
from medgrain.data.prepare.common import split_by_patient


def records(patients: dict[str, int]) -> list[Record]:
    return [Record(id=f"{p}-{k}", image=None, split="train", patient_id=p) for p, n in patients.items() for k in range(n)]


def test_split_by_patient_exact_whole_deterministic():
    recs = records({f"pt{i:03d}": 1 + i % 3 for i in range(100)})
    split = split_by_patient(recs, seed=7, valid=0.15, test=0.15)
    by_patient: dict[str, set[str]] = {}
    for r in split:
        by_patient.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())  # never divided
    counts = {s: sum(next(iter(v)) == s for v in by_patient.values()) for s in ("train", "valid", "test")}
    assert counts == {"train": 70, "valid": 15, "test": 15}
    again = split_by_patient(list(reversed(recs)), seed=7, valid=0.15, test=0.15)
    assert {r.id: r.split for r in again} == {r.id: r.split for r in split}  # order of records is irrelevant
    other = split_by_patient(recs, seed=8, valid=0.15, test=0.15)
    assert {r.id: r.split for r in other} != {r.id: r.split for r in split}


def test_split_by_patient_keeps_official_splits():
    recs = records({"a": 1, "b": 1, "c": 1, "d": 1}) + [Record(id="t", image=None, split="test", patient_id="z")]
    split = split_by_patient(recs, seed=0, valid=0.5)
    assert [r.split for r in split if r.id == "t"] == ["test"] and sum(r.split == "valid" for r in split) == 2
    with pytest.raises(ValueError, match="fractions"):
        split_by_patient(recs, seed=0, valid=0.6, test=0.5)


def test_registry_and_option_checking(tmp_path):
    assert set(PREPARERS) == {"mimic-cxr", "chexpert", "rsna-pneumonia", "covidx", "siim-pneumothorax",
                              "chestxray14", "mgll-fundus", "rfmid", "openi", "chexpert-5x200", "mimic-5x200",
                              "chexpert-test", "padchest", "vindr-cxr", "ms-cxr"}
    for name in PREPARERS:
        assert {"seed", "on_error", "exclude", "leak_threshold"} <= set(options(name))
    with pytest.raises(ValueError, match="unknown dataset 'mimic'"):
        prepare("mimic", tmp_path, tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match=r"chexpert does not take \['flatten'\]"):
        prepare("chexpert", tmp_path, tmp_path / "m.jsonl", flatten=True)
    with pytest.raises(FileNotFoundError, match="root folder not found"):
        prepare("chexpert", tmp_path / "nope", tmp_path / "m.jsonl")
    with pytest.raises(FileNotFoundError, match=r"chexpert: train.csv is neither in .* nor in a folder below it"):
        prepare("chexpert", tmp_path, tmp_path / "m.jsonl")


def test_summary_names_splits_labels_drops_and_skips(tmp_path):
    root = make_chexpert(tmp_path)
    (root / "train/patient00005/study1/view1_frontal.jpg").unlink()
    result = prepare("chexpert", root, tmp_path / "c.jsonl", on_error="skip")
    text = str(result)
    assert "chexpert: 10 records" in text and "splits: train" in text and "Edema 5" in text
    assert "dropped by design: 2\n    2 lateral views" in text
    assert "skipped as bad input: 1\n    1 image file not found, e.g. " in text and "patient00005" in text
    assert read_manifest(result.manifest).records  # the manifest validates


def test_prepare_error_fields():
    e = PrepareError("a/b.csv", 12, "View", "X" * 300, "unknown view")
    assert str(e).startswith("a/b.csv:12: column 'View' value 'XXXX") and str(e).endswith("': unknown view")
    assert e.path == "a/b.csv" and e.line == 12 and e.column == "View" and e.reason == "unknown view"


# --- leakage -----------------------------------------------------------------------------------

def test_phash_same_for_uint8_and_float_and_both_dct_paths(monkeypatch):
    image = torch.from_numpy(pixels(1, size=64).copy())[None]
    h = leakage.phash(image)
    assert h == leakage.phash(image.float() / 255) and 0 < h < 2**256
    rgb = image.expand(3, -1, -1)
    assert leakage.phash(rgb) == h
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    x = np.random.default_rng(0).random((64, 64))
    with_scipy = leakage._dct2(x)
    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert np.allclose(leakage._dct2(x), with_scipy)


def test_hamming_counts_bits():
    a = np.array([0, 0b1011, 2**64 - 1], dtype=np.uint64)
    b = np.array([0b1000], dtype=np.uint64)
    assert leakage.hamming(a, b).tolist() == [[1, 2, 63]]


def test_hamming_of_256_bit_hashes_matches_python_bit_counts():
    rng = np.random.default_rng(1)
    hashes = [int.from_bytes(rng.bytes(32), "big") for _ in range(5)]
    got = leakage.hamming(leakage.as_words(hashes[:3]), leakage.as_words(hashes[3:]))
    want = [[bin(x ^ y).count("1") for x in hashes[:3]] for y in hashes[3:]]
    assert got.tolist() == want


def _manifest(tmp_path, name, images):
    recs = [Record(id=i, image=str(p.relative_to(tmp_path)), split="train", patient_id=i) for i, p in images.items()]
    return write_manifest(recs, tmp_path / f"{name}.jsonl")


def test_find_leaks_resized_reencoded_copy(tmp_path):
    a = {f"a{i}": write_image(tmp_path / "a" / f"{i}.png", seed=i, size=64) for i in range(4)}
    b = {"copy": tmp_path / "b" / "copy.jpg", "new": write_image(tmp_path / "b" / "new.png", seed=99, size=64)}
    Image.open(a["a2"]).resize((48, 48)).save(b["copy"], quality=90)
    leaks = leakage.find_leaks(_manifest(tmp_path, "A", a), _manifest(tmp_path, "B", b))
    assert [(bid, aid) for bid, aid, _ in leaks] == [("copy", "a2")] and leaks[0][2] <= leakage.DEFAULT_THRESHOLD
    assert leakage.find_leaks(_manifest(tmp_path, "A", a), _manifest(tmp_path, "B", b), threshold=256)[0][2] <= 12
    table = leakage.format_leaks(leaks, "A.jsonl", "B.jsonl").splitlines()
    assert table[0] == "B.jsonl id\tA.jsonl id\tdistance" and table[1].startswith("copy\ta2\t")
    assert table[-1] == "1 images of B.jsonl also appear in A.jsonl (1 pairs)"


def test_prepare_excludes_images_of_another_manifest(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    first = prepare("rsna-pneumonia", root, tmp_path / "all.jsonl")
    test_set = tmp_path / "downstream.jsonl"
    write_manifest([r for r in read_manifest(first.manifest).records if r.id in ("p2", "p5")], test_set)
    result = prepare("rsna-pneumonia", root, tmp_path / "pretrain.jsonl", exclude=[test_set], leak_threshold=0)
    assert sorted(r.id for r in read_manifest(result.manifest).records) == ["p1", "p3", "p4", "p6"]
    assert {(b, a.split("#")[1]) for b, a, _ in result.leaks} == {("p2", "p2"), ("p5", "p5")}
    assert sum(result.dropped.values()) == 2 and "excluded manifest" in str(result)


def test_non_utf8_bytes_name_line_and_column(tmp_path):
    import gzip

    from medgrain.data.prepare.common import PrepareError, open_text, read_csv

    body = b"Path,Sex\n" + b"".join(f"p{k}.jpg,F\n".encode() for k in range(300)) + b"p\xff.jpg,M\nlast.jpg,F\n"
    for name, data in (("a.csv", body), ("a.csv.gz", gzip.compress(body))):
        (tmp_path / name).write_bytes(data)
        rows = list(read_csv(tmp_path / name, ["Path"]))
        assert len(rows) == 302 and rows[-1]["Path"] == "last.jpg"
        with pytest.raises(PrepareError, match=rf"{name}:302: column 'Path': not UTF-8 text: byte 0xFF at "
                                               r"character 2 of the cell") as info:
            rows[300]["Sex"]  # any read of the row: the row as a whole is suspect
        assert info.value.reason == "not UTF-8" and rows[300].cells["Path"] == "p\ufffd.jpg"
    with pytest.raises(PrepareError, match=r"a\.csv:302: not UTF-8 text: byte 0xFF at character 2 of the line"):
        with open_text(tmp_path / "a.csv") as f:
            list(f)


@pytest.mark.parametrize("dataset, make, inner", [
    ("chexpert", "make_chexpert", None),  # make_chexpert writes BASE/CheXpert-v1.0-small itself
    ("chestxray14", "make_chestxray14", "nih"),
    ("covidx", "make_covidx", "covidx"),
    ("mimic-cxr", "make_mimic_cxr", "physionet.org/files/mimic-cxr-jpg/2.0.0"),
    ("rsna-pneumonia", "make_rsna", "rsna"),
    ("siim-pneumothorax", "make_siim", "siim"),
    ("mgll-fundus", "make_mgll_fundus", "mgll"),
])
def test_the_release_folder_or_the_folder_above_it(tmp_path, dataset, make, inner):
    """Both the folder an archive unpacks to and the one above it (CheXpert's CSV paths are relative
    to it) give the same manifest; a folder that holds neither names the folder to pass."""
    import fixtures_prepare

    base = tmp_path / "data"
    release = getattr(fixtures_prepare, make)(base if inner is None else base / inner)
    options = {"valid_fraction": 0.25} if dataset in ("chexpert", "chestxray14", "covidx") else {}
    inside = prepare(dataset, release, tmp_path / "a" / "m.jsonl", **options)
    above = prepare(dataset, base, tmp_path / "b" / "m.jsonl", **options)
    assert [r.model_dump() for r in read_manifest(inside.manifest).records] == \
           [r.model_dump() for r in read_manifest(above.manifest).records]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither in .*empty nor in a folder below it; pass as --root the folder"):
        prepare(dataset, tmp_path / "empty", tmp_path / "c" / "m.jsonl", **options)
