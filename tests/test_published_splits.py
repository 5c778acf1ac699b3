"""Published splits (`prepare --splits`): BenchX list folders, GLoRIA/MGCA split CSVs, MRM's
test_list.txt; label fractions as published fraction files; ids that resolve to nothing."""

from __future__ import annotations

import pytest
from fixtures_prepare import make_covidx, make_rsna

from medgrain.data.manifest import read_manifest
from medgrain.data.prepare import PrepareError, prepare
from medgrain.evaluation.fractions import load_or_draw_fraction


def _splits(path):
    return {r.id: r.split for r in read_manifest(path).records}


def _benchx(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (folder / f"{name}.txt").write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    return folder


def test_benchx_list_folder_sets_splits_and_published_fractions(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    spec = _benchx(tmp_path / "benchx", train=["p1", "p2", "p3"], train_1=["p2"], train_10=["p2", "p3"],
                   val=["p4"], test=["p5"])
    out = tmp_path / "out" / "rsna.jsonl"
    result = prepare("rsna-pneumonia", root, out, splits=spec)
    assert _splits(out) == {"p1": "train", "p2": "train", "p3": "train", "p4": "valid", "p5": "test"}
    assert result.splits == {"train": 3, "valid": 1, "test": 1}
    assert result.dropped["not in the published split"] == 1  # p6 is in no list: BenchX left it out
    manifest = read_manifest(out)
    for seed in (0, 1, 2):  # the published subset is the same for every seed, never a fresh draw
        assert load_or_draw_fraction(manifest, "train", 0.01, seed) == ["p2"]
        assert load_or_draw_fraction(manifest, "train", 0.1, seed) == ["p2", "p3"]
    assert "published" in str(result)


def test_list_entries_resolve_by_path_file_name_or_stem(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    spec = _benchx(tmp_path / "benchx", val=["stage_2_train_images/p4.dcm"], test=["p5.dcm", "./p6"])
    out = tmp_path / "rsna.jsonl"
    prepare("rsna-pneumonia", root, out, splits=spec, test_fraction=0.3)
    splits = _splits(out)
    # without train.txt the unlisted records keep their drawn split, but only the published ones are test
    assert splits["p4"] == "valid" and splits["p5"] == "test" and splits["p6"] == "test"
    assert sum(s == "test" for s in splits.values()) == 2


def test_split_csv_as_gloria_and_mgca_write_it(tmp_path):
    root = make_covidx(tmp_path / "covidx")
    out = tmp_path / "covidx.jsonl"
    ids = sorted(_splits(prepare("covidx", root, out).manifest))
    csv_path = tmp_path / "master.csv"
    rows = ["Path,split"] + [f"{i},{s}" for i, s in zip(ids, ["train", "train", "val", "test", "train", "train",
                                                             "test", "valid"])]
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    prepare("covidx", root, out, splits=csv_path)
    splits = _splits(out)
    assert [splits[i] for i in ids] == ["train", "train", "valid", "test", "train", "train", "test", "valid"]


def test_one_csv_per_split_as_gloria_and_mgca_write_them(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    folder = tmp_path / "mgca-rsna"
    folder.mkdir()
    # MGCA's RSNA preprocessing writes train.csv / val.csv / test.csv with patientId and the box columns
    for name, ids in (("train", ["p1", "p2", "p3"]), ("val", ["p4"]), ("test", ["p5", "p6"])):
        (folder / f"{name}.csv").write_text("patientId,x,y,width,height,Target\n" + "".join(
            f"{i},,,,,0\n" for i in ids), encoding="utf-8")
    out = tmp_path / "rsna.jsonl"
    prepare("rsna-pneumonia", root, out, splits=folder)
    assert _splits(out) == {"p1": "train", "p2": "train", "p3": "train", "p4": "valid", "p5": "test", "p6": "test"}
    gloria = tmp_path / "gloria"
    gloria.mkdir()
    (gloria / "rsna_train.csv").write_text("Path\nstage_2_train_images/p1.dcm\n", encoding="utf-8")
    (gloria / "rsna_validate.csv").write_text("Path\nstage_2_train_images/p2.dcm\n", encoding="utf-8")
    prepare("rsna-pneumonia", root, out, splits=gloria, on_error="skip")
    assert _splits(out) == {"p1": "train", "p2": "valid"}


def test_mrm_test_list(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    spec = tmp_path / "test_list.txt"
    spec.write_text("p1.dcm 1\np3.dcm 0\n", encoding="utf-8")  # MRM's lines: image and label
    out = tmp_path / "rsna.jsonl"
    prepare("rsna-pneumonia", root, out, splits=spec, test_fraction=0.5)
    splits = _splits(out)
    assert {i for i, s in splits.items() if s == "test"} == {"p1", "p3"}
    assert len(splits) == 6


def test_unresolved_ids_error_lists_the_first_few_or_are_counted(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    spec = _benchx(tmp_path / "benchx", train=["p1", "p2", "ghost1"], test=["p5", "ghost2"])
    out = tmp_path / "rsna.jsonl"
    with pytest.raises(PrepareError, match=r"2 of 5 entries .* name no record") as error:
        prepare("rsna-pneumonia", root, out, splits=spec)
    assert "train.txt:3 'ghost1'" in str(error.value) and "test.txt:2 'ghost2'" in str(error.value)
    result = prepare("rsna-pneumonia", root, out, splits=spec, on_error="skip")
    assert result.skipped["split entry names no record"] == 2
    assert _splits(out) == {"p1": "train", "p2": "train", "p5": "test"}


def test_bad_split_files(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    out = tmp_path / "rsna.jsonl"
    twice = _benchx(tmp_path / "twice", train=["p1"], test=["p1"])
    with pytest.raises(PrepareError, match=r"train.txt:1: value 'p1': record 'p1' is also in split 'test' \(test.txt:1\)"):
        prepare("rsna-pneumonia", root, out, splits=twice)
    fraction_outside = _benchx(tmp_path / "outside", train=["p1"], train_1=["p2"], test=["p2"])
    with pytest.raises(PrepareError, match="1% label fraction are not in the published train split"):
        prepare("rsna-pneumonia", root, out, splits=fraction_outside)
    bad_csv = tmp_path / "splits.csv"
    bad_csv.write_text("Path,split\np1,holdout\n", encoding="utf-8")
    with pytest.raises(PrepareError, match=r"splits.csv:2: column 'split' value 'holdout': unknown split"):
        prepare("rsna-pneumonia", root, out, splits=bad_csv)
    no_id = tmp_path / "noid.csv"
    no_id.write_text("name,split\np1,train\n", encoding="utf-8")
    with pytest.raises(PrepareError, match="has no id column"):
        prepare("rsna-pneumonia", root, out, splits=no_id)
    with pytest.raises(FileNotFoundError, match="no train.txt"):
        prepare("rsna-pneumonia", root, out, splits=_benchx(tmp_path / "empty"))
    odd = tmp_path / "holdout.txt"
    odd.write_text("p1\n", encoding="utf-8")
    with pytest.raises(PrepareError, match="must be named <split>.txt"):
        prepare("rsna-pneumonia", root, out, splits=odd)


def test_entries_resolve_by_the_longest_unique_tail(tmp_path):
    from medgrain.data.manifest import Record
    from medgrain.data.prepare.splits import Entry, _resolve, record_index

    records = [Record(id=f"train/patient{p}/study1/view1_frontal", image=f"../CheXpert-v1.0-small/train/patient{p}/"
                      "study1/view1_frontal.jpg", split="train") for p in (1, 2)]
    index = record_index(records)

    def resolve(value):
        return _resolve(Entry(value, tmp_path / "list.csv", 2), index)

    # GLoRIA's lists start at CheXpert-v1.0/ (not -small): the tail after it names the image
    assert resolve("CheXpert-v1.0/train/patient2/study1/view1_frontal.jpg") == "train/patient2/study1/view1_frontal"
    assert resolve("patient1/study1/view1_frontal.png") == "train/patient1/study1/view1_frontal"
    assert resolve("train/patient3/study1/view1_frontal.jpg") is None
    assert resolve("view1_frontal.jpg") is None  # two records: unresolved, reported with the missing ones
