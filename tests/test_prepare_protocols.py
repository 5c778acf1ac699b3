"""The benchmark protocols' adapters: PadChest and VinDr-CXR from the real label files shipped in the
torchxrayvision wheel (read in place, images made tiny), VinDr's PhysioNet layout, CheXpert's test
labels, MS-CXR's CSV and JSON over a prepared MIMIC-CXR, and the 5x200 construction."""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import pytest
from fixtures_prepare import CHEXPERT_OBSERVATIONS, make_mimic_cxr, write_dicom, write_image

from medgrain.data.manifest import Record, read_manifest, write_manifest
from medgrain.data.prepare import PrepareError, prepare
from medgrain.data.prepare.five_by_200 import CLASSES


def _wheel_file(name: str) -> Path:
    try:
        path = Path(metadata.distribution("torchxrayvision").locate_file(f"torchxrayvision/data/{name}"))
    except metadata.PackageNotFoundError:
        pytest.skip("torchxrayvision is not installed; its wheel holds the real label files")
    if not path.is_file():
        pytest.skip(f"{name} is not in this torchxrayvision wheel")
    return path


def _rows(path: Path) -> list[dict]:
    with io.TextIOWrapper(gzip.open(path), encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _by_id(path):
    return {r.id: r for r in read_manifest(path).records}


# --- PadChest --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def padchest(tmp_path_factory):
    """The real PadChest CSV with tiny images for 40 of its frontal, well-formed rows."""
    labels = _wheel_file("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
    rows = _rows(labels)
    root = tmp_path_factory.mktemp("padchest")
    chosen = [r for r in rows if r["Projection"] in ("PA", "AP", "AP_horizontal") and r["Labels"].startswith("[")
              and "exclude" not in r["Labels"]][:40:2] + \
             [r for r in rows if r["MethodLabel"] == "Physician" and r["Projection"] == "PA"
              and r["Labels"].startswith("[") and "exclude" not in r["Labels"]][:20]
    for i, r in enumerate(chosen):
        write_image(root / r["ImageDir"] / r["ImageID"], seed=i, size=8)
    return labels, rows, root, {r["ImageID"]: r for r in chosen}


def test_padchest_from_the_real_labels(padchest, tmp_path):
    labels, rows, root, chosen = padchest
    out = tmp_path / "padchest.jsonl"
    result = prepare("padchest", root, out, labels_csv=labels, on_error="skip")
    records = _by_id(out)
    assert set(records) == {i.removesuffix(".png") for i in chosen}
    for image_id, row in chosen.items():
        record = records[image_id.removesuffix(".png")]
        expected = [x.strip() for x in ast.literal_eval(row["Labels"]) if x.strip()]
        expected = list(dict.fromkeys(x for x in expected if x not in ("normal", "suboptimal study")))
        assert record.labels == sorted(expected) or set(record.labels) == set(expected)
        assert record.texts["abnormality"] == ("Abnormal" if expected else "Normal")
        assert record.report == row["Report"].strip() and record.patient_id == row["PatientID"]
        # localization is absent (issue 12) where no label is localized, never a copy of the category
        assert list(record.texts) in (["abnormality", "category", "localization"], ["abnormality", "category"])
    non_frontal = sum(r["Projection"] not in ("PA", "AP", "AP_horizontal") for r in rows)
    assert sum(n for reason, n in result.dropped.items() if reason.startswith("projection")) == non_frontal
    # every frontal row without a tiny image is a counted skip, none is lost silently
    assert sum(result.skipped.values()) + len(chosen) + result.dropped.get("labelled 'exclude' by the authors", 0) \
        == len(rows) - non_frontal


def test_padchest_physician_subset(padchest, tmp_path):
    labels, rows, root, chosen = padchest
    out = tmp_path / "physician.jsonl"
    result = prepare("padchest", root, out, labels_csv=labels, physician_only=True, on_error="skip")
    expected = {i.removesuffix(".png") for i, r in chosen.items() if r["MethodLabel"] == "Physician"}
    assert set(_by_id(out)) == expected and len(expected) >= 20
    frontal_rnn = sum(r["Projection"] in ("PA", "AP", "AP_horizontal") and r["MethodLabel"] == "RNN_model"
                      for r in rows)
    assert result.dropped["labelled by the RNN, not a physician"] == frontal_rnn
    assert "physician-labelled" in str(result)


def test_padchest_bad_labels_cell(tmp_path):
    root = tmp_path / "pc"
    write_image(root / "0" / "a.png", seed=1, size=8)
    header = "ImageID,ImageDir,PatientID,Projection,MethodLabel,Report,Labels,Localizations,LabelsLocalizationsBySentence"
    (root / "PADCHEST_x.csv").write_text(header + "\na.png,0,p1,PA,Physician,informe normal,nan,[],[]\n",
                                         encoding="utf-8")
    with pytest.raises(PrepareError, match=r"PADCHEST_x.csv:2: column 'Labels' value 'nan': expected a list"):
        prepare("padchest", root, tmp_path / "m.jsonl")


# --- VinDr-CXR ------------------------------------------------------------------------------------

def _readers_rule(rows: list[dict], min_readers: int) -> tuple[list[str], dict[str, int]]:
    """A direct reading of the merge rule: labels and their box counts for one image's rows."""
    readers, marked, boxes = set(), defaultdict(set), defaultdict(int)
    for r in rows:
        readers.add(r["rad_id"])
        if r["class_name"] != "No finding":
            marked[r["class_name"]].add(r["rad_id"])
            boxes[r["class_name"]] += bool(r["x_min"])
    labels = sorted(n for n, who in marked.items() if len(who) >= min(min_readers, len(readers)))
    return labels, {n: boxes[n] for n in labels}


@pytest.mark.parametrize("min_readers", [1, 2])
def test_vindr_competition_layout_from_the_real_labels(tmp_path, min_readers):
    labels = _wheel_file("vinbigdata-train.csv.gz")
    rows = _rows(labels)
    by_image = defaultdict(list)
    for r in rows:
        by_image[r["image_id"]].append(r)
    root = tmp_path / "vindr"
    chosen = list(by_image)[:30]
    meta = ["image_id,dim0,dim1"]
    for i, image_id in enumerate(chosen):  # converted PNGs, 16 px wide: boxes scale by 16 / original width
        write_image(root / "train" / f"{image_id}.png", seed=i, size=16)
        meta.append(f"{image_id},3200,3200")
    (root / "train_meta.csv").write_text("\n".join(meta) + "\n", encoding="utf-8")
    out = tmp_path / "vindr.jsonl"
    result = prepare("vindr-cxr", root, out, labels_csv=labels, min_readers=min_readers, on_error="skip")
    records = _by_id(out)
    assert set(records) == set(chosen)
    assert result.skipped["image file not found"] == len(by_image) - len(chosen)
    for image_id in chosen:
        expected, box_counts = _readers_rule(by_image[image_id], min_readers)
        record = records[image_id]
        assert record.labels == expected
        assert {n: sum(f.name == n for f in record.findings) for n in expected} == box_counts
        for f in record.findings:  # 3200 px originals shown at 16 px
            assert all(0 <= v <= 16 for v in f.box)
        if not expected:
            assert record.texts["abnormality"] == "Normal"  # "No finding" images kept as normal
    assert f"at least {min_readers} reader" in str(result)


def test_vindr_converted_images_need_their_original_size(tmp_path):
    root = tmp_path / "vindr"
    (root / "train").mkdir(parents=True)
    (root / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                                    "a,Nodule/Mass,8,R1,10,10,20,20\n", encoding="utf-8")
    write_image(root / "train" / "a.png", seed=0, size=16)
    with pytest.raises(PrepareError, match="train_meta.csv with image_id, dim0, dim1"):
        prepare("vindr-cxr", root, tmp_path / "m.jsonl")
    (root / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                                    "a,Nodule/Mass,8,R1,30,10,20,20\n", encoding="utf-8")
    with pytest.raises(PrepareError, match=r"train.csv:2: column 'x_min' .*box is not"):
        prepare("vindr-cxr", root, tmp_path / "m.jsonl")


def test_vindr_physionet_layout(tmp_path):
    root = tmp_path / "vindr"
    ann = root / "annotations"
    ann.mkdir(parents=True)
    label_cols = ["Aortic enlargement", "Cardiomegaly", "Pleural effusion", "Lung tumor", "No finding"]
    (ann / "image_labels_train.csv").write_text(
        "image_id,rad_id," + ",".join(label_cols) + "\n"
        "a,R1,0,1,0,0,0\na,R2,0,1,1,0,0\na,R3,0,0,0,0,1\n"
        "b,R4,0,0,0,0,1\nb,R5,0,0,0,0,1\nb,R6,0,0,0,0,1\n", encoding="utf-8")
    (ann / "annotations_train.csv").write_text(
        "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
        "a,R1,Cardiomegaly,2,8,14,12\na,R2,Cardiomegaly,3,8,13,12\na,R2,Pleural effusion,1,1,4,4\n"
        "a,R3,No finding,,,,\nb,R4,No finding,,,,\n", encoding="utf-8")
    # the test set is a consensus: its files may carry no reader column
    (ann / "image_labels_test.csv").write_text("image_id," + ",".join(label_cols) + "\n"
                                               "t,1,0,0,1,0\n", encoding="utf-8")
    (ann / "annotations_test.csv").write_text("image_id,class_name,x_min,y_min,x_max,y_max\n"
                                              "t,Aortic enlargement,5,2,9,6\n", encoding="utf-8")
    for i, (folder, image_id) in enumerate([("train", "a"), ("train", "b"), ("test", "t")]):
        write_dicom(root / folder / f"{image_id}.dicom", image_id, seed=i)
    out = tmp_path / "vindr.jsonl"
    prepare("vindr-cxr", root, out, valid_fraction=0.0)
    records = _by_id(out)
    assert records["a"].labels == ["Cardiomegaly", "Pleural effusion"]
    assert len(records["a"].findings) == 3 and records["a"].split == "train"
    assert records["b"].labels == [] and records["b"].texts["abnormality"] == "Normal"
    assert records["t"].split == "test" and records["t"].labels == ["Aortic enlargement", "Lung tumor"]
    assert [f.box for f in records["t"].findings] == [(5, 2, 9, 6)]  # a global label (tumour) has no box
    prepare("vindr-cxr", root, out, valid_fraction=0.0, min_readers=2)
    assert _by_id(out)["a"].labels == ["Cardiomegaly"]


# --- CheXpert test ----------------------------------------------------------------------------------

def test_chexpert_test_labels(tmp_path):
    root = tmp_path / "chexpert"
    header = "Path," + ",".join(CHEXPERT_OBSERVATIONS)
    rows = [("test/patient64741/study1/view1_frontal.jpg", {"Cardiomegaly", "Edema"}),
            ("test/patient64742/study1/view1_frontal.jpg", {"No Finding"}),
            ("test/patient64742/study1/view2_lateral.jpg", {"No Finding"})]
    lines = [header] + [",".join([p] + [str(int(c in pos)) for c in CHEXPERT_OBSERVATIONS]) for p, pos in rows]
    (root / "test").mkdir(parents=True)
    (root / "test_labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for i, (p, _) in enumerate(rows):
        write_image(root / p, seed=i, size=8)
    out = tmp_path / "test.jsonl"
    result = prepare("chexpert-test", root, out)
    records = _by_id(out)
    assert set(records) == {"test/patient64741/study1/view1_frontal", "test/patient64742/study1/view1_frontal"}
    assert records["test/patient64741/study1/view1_frontal"].labels == ["Cardiomegaly", "Edema"]
    assert records["test/patient64742/study1/view1_frontal"].labels == []
    assert all(r.split == "test" for r in records.values()) and result.dropped == {"lateral views": 1}
    (root / "test_labels.csv").write_text("\n".join(lines[:2] + [lines[1].replace(",1,", ",-1,", 1)]) + "\n",
                                          encoding="utf-8")
    with pytest.raises(PrepareError, match=r"test_labels.csv:3: column '.*' value '-1': expected 0 or 1"):
        prepare("chexpert-test", root, out)


# --- MS-CXR -------------------------------------------------------------------------------------------

MS_CXR_HEADER = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height"


def _mimic(tmp_path):
    root = make_mimic_cxr(tmp_path / "mimic")
    return prepare("mimic-cxr", root, tmp_path / "mimic.jsonl").manifest


def test_ms_cxr_csv_over_a_prepared_mimic(tmp_path):
    mimic = _mimic(tmp_path)
    ms = tmp_path / "ms-cxr"
    ms.mkdir()
    # published at 32 x 32; the prepared JPEGs are 16 x 16, so boxes halve
    (ms / "MS_CXR_Local_Alignment_v1.0.0.csv").write_text(
        MS_CXR_HEADER + "\n"
        "d3,Edema,mild pulmonary edema,files/p10/p10000032/s50000002/d3.jpg,4,6,20,10,32,32\n"
        "d3,Pleural Effusion,small left effusion,files/p10/p10000032/s50000002/d3.jpg,18,20,10,8,32,32\n"
        "d3,Pleural Effusion,small left effusion,files/p10/p10000032/s50000002/d3.jpg,2,20,6,8,32,32\n"
        "d4,Cardiomegaly,stable cardiomegaly,files/p10/p10000764/s50000003/d4.jpg,8,8,16,12,32,32\n",
        encoding="utf-8")
    out = tmp_path / "ms.jsonl"
    result = prepare("ms-cxr", ms, out, manifest=mimic)
    records = _by_id(out)
    mimic_records = _by_id(mimic)
    assert set(records) == {"d3", "d4"} and all(r.split == "test" for r in records.values())
    d3 = records["d3"]
    assert [(f.name, f.phrase, f.box) for f in d3.findings] == [
        ("Edema", "mild pulmonary edema", (2, 3, 12, 8)), ("Pleural Effusion", "small left effusion", (9, 10, 14, 14)),
        ("Pleural Effusion", "small left effusion", (1, 10, 4, 14))]
    assert d3.report == mimic_records["d3"].report and d3.patient_id == "10000032"
    assert (out.parent / d3.image).resolve() == (mimic.parent / mimic_records["d3"].image).resolve()
    assert "4 phrase-box pairs over 2 images" in str(result)
    with open(ms / "MS_CXR_Local_Alignment_v1.0.0.csv", "a", encoding="utf-8") as f:
        f.write("d99,Edema,edema,files/x/d99.jpg,1,1,2,2,32,32\n")
    with pytest.raises(PrepareError, match=r"csv:6: column 'dicom_id' value 'd99': not an image of the MIMIC-CXR"):
        prepare("ms-cxr", ms, out, manifest=mimic)
    assert prepare("ms-cxr", ms, out, manifest=mimic, on_error="skip").skipped == {
        "image not in the MIMIC-CXR manifest": 1}


def test_ms_cxr_coco_json(tmp_path):
    mimic = _mimic(tmp_path)
    ms = tmp_path / "ms-cxr"
    ms.mkdir()
    coco = {"images": [{"id": 7, "file_name": "d7.jpg", "path": "files/p10/p10001122/s50000005/d7.jpg",
                        "width": 16, "height": 16}],
            "categories": [{"id": 1, "name": "Pneumonia"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 3, 5, 4],
                             "label_text": "right lower lobe pneumonia"}]}
    (ms / "MS_CXR_Local_Alignment_v1.0.0.json").write_text(json.dumps(coco), encoding="utf-8")
    out = tmp_path / "ms.jsonl"
    prepare("ms-cxr", ms, out, manifest=mimic)
    (finding,) = _by_id(out)["d7"].findings
    assert (finding.name, finding.phrase, finding.box) == ("Pneumonia", "right lower lobe pneumonia", (2, 3, 7, 7))
    with pytest.raises(ValueError, match="--manifest MIMIC.jsonl is required"):
        prepare("ms-cxr", ms, out)


# --- 5x200 -------------------------------------------------------------------------------------------

def _chexpert_like(tmp_path, per_class=230, extra=100) -> Path:
    """Single-positive records per class, multi-positive and normal ones; two images per patient."""
    records = []
    for c, name in enumerate(CLASSES):
        for k in range(per_class):
            records.append(Record(id=f"{c}-{k}", image=f"img/{c}-{k}.jpg", split="train", labels=[name],
                                  patient_id=f"pt{c}-{k // 2}", texts={"category": name}, report=f"{name} seen."))
    for k in range(extra):
        records.append(Record(id=f"multi-{k}", image=f"img/m{k}.jpg", split="train", labels=list(CLASSES[:2]),
                              patient_id=f"ptm{k}", texts={"category": "two"}, report="Two findings."))
        records.append(Record(id=f"unsure-{k}", image=f"img/u{k}.jpg", split="train", labels=["Edema"],
                              patient_id=f"ptu{k}", texts={"category": "Edema"}, report="Edema.",
                              meta={"uncertain": ["Atelectasis"]}))
    path = tmp_path / "data" / "chexpert.jsonl"
    write_manifest(records, path)
    return path


def test_5x200_exactly_200_single_positive_and_no_patient_in_pretraining(tmp_path):
    source = _chexpert_like(tmp_path)
    out = tmp_path / "eval" / "5x200.jsonl"
    clean = tmp_path / "eval" / "pretrain.jsonl"
    result = prepare("chexpert-5x200", None, out, manifest=source, seed=3, pretrain=source, pretrain_out=clean)
    records = list(read_manifest(out).records)
    assert len(records) == 1000
    for name in CLASSES:
        assert sum(r.labels == [name] for r in records) == 200
    assert not any(r.id.startswith(("multi", "unsure")) for r in records)
    assert all(r.split == "test" and r.report for r in records)
    assert (out.parent / records[0].image).resolve() == (source.parent / "img" / f"{records[0].id}.jpg").resolve()
    test_patients = {r.patient_id for r in records}
    pretraining = list(read_manifest(clean).records)
    assert not test_patients & {r.patient_id for r in pretraining}
    assert len(pretraining) == len(read_manifest(source).records) - sum(
        r.patient_id in test_patients for r in read_manifest(source).records)
    assert (clean.parent / pretraining[0].image).resolve() == (source.parent / pretraining[0].image).resolve()
    assert "5x200 patients" in str(result)
    again = prepare("chexpert-5x200", None, tmp_path / "again.jsonl", manifest=source, seed=3)
    assert {r.id for r in read_manifest(again.manifest).records} == {r.id for r in records}
    other = prepare("chexpert-5x200", None, tmp_path / "other.jsonl", manifest=source, seed=4)
    assert {r.id for r in read_manifest(other.manifest).records} != {r.id for r in records}


def test_5x200_published_ids_and_errors(tmp_path):
    source = _chexpert_like(tmp_path, per_class=150, extra=2)
    with pytest.raises(ValueError, match="too few records .*'Atelectasis': 150"):
        prepare("mimic-5x200", None, tmp_path / "o.jsonl", manifest=source)
    ids = tmp_path / "chexpert_5x200.csv"
    header = "Path," + ",".join(CLASSES)
    lines = [header, "img/0-1.jpg,1,0,0,0,0", "img/2-5.jpg,0,0,1,0,0", "img/multi-0.jpg,0,1,0,0,0"]
    ids.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare("chexpert-5x200", None, tmp_path / "pub.jsonl", manifest=source, ids=ids)
    got = {r.id: r.labels for r in read_manifest(tmp_path / "pub.jsonl").records}
    assert got == {"0-1": ["Atelectasis"], "2-5": ["Edema"], "multi-0": ["Cardiomegaly"]}
    ids.write_text("\n".join(lines + ["img/ghost.jpg,1,0,0,0,0"]) + "\n", encoding="utf-8")
    with pytest.raises(PrepareError, match=r"1 of 4 ids name no record .*5 'img/ghost.jpg'"):
        prepare("chexpert-5x200", None, tmp_path / "pub.jsonl", manifest=source, ids=ids)
    with pytest.raises(ValueError, match="--manifest is required"):
        prepare("chexpert-5x200", None, tmp_path / "pub.jsonl")
    with pytest.raises(ValueError, match="--pretrain and --pretrain-out go together"):
        prepare("chexpert-5x200", None, tmp_path / "pub.jsonl", manifest=source, pretrain=source)
