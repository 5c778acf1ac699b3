"""medgrain prepare on tiny fixtures of the chest X-ray sets with CSV labels: MIMIC-CXR, CheXpert,
ChestX-ray14 and COVIDx (fixtures in tests/fixtures_prepare.py)."""

from __future__ import annotations

import pytest
from fixtures_prepare import (
    CHEXPERT_HEADER,
    chexpert_row,
    make_chestxray14,
    make_chexpert,
    make_covidx,
    make_mimic_cxr,
    replace_in,
    write_csv,
)

from medgrain.data.manifest import read_manifest
from medgrain.data.prepare import PrepareError, prepare
from medgrain.data.prepare.mimic_cxr import report_sections


def by_id(path):
    return {r.id: r for r in read_manifest(path).records}


# --- MIMIC-CXR ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_mimic_cxr_frontal_images_sections_and_official_split(tmp_path, gz):
    root = make_mimic_cxr(tmp_path / "mimic", gz=gz)
    result = prepare("mimic-cxr", root, tmp_path / "out" / "mimic.jsonl")
    recs = by_id(result.manifest)
    assert sorted(recs) == ["d1", "d3", "d4", "d5", "d7"]
    assert {i: r.split for i, r in recs.items()} == {"d1": "train", "d3": "train", "d4": "valid", "d5": "valid",
                                                     "d7": "test"}
    assert {i: r.patient_id for i, r in recs.items()}["d4"] == "10000764"
    d1 = recs["d1"]
    assert d1.report == "No acute cardiopulmonary process. Lungs are clear. No pleural effusion or pneumothorax. " \
                        "Heart size is normal."
    assert d1.labels == [] and d1.texts == {"abnormality": "Normal", "category": "No Finding",
                                            "description": "No acute cardiopulmonary process."}
    assert (result.manifest.parent / d1.image).is_file() and d1.view == "PA"
    # "FINDINGS AND IMPRESSION:" counts as the impression; uncertain effusion is negative by default
    assert recs["d3"].report == "Mild pulmonary edema. Possible small left effusion."
    assert recs["d3"].labels == ["Edema"] and recs["d3"].meta["uncertain"] == ["Pleural Effusion"]
    assert recs["d4"].texts["category"] == "Cardiomegaly" and recs["d4"].report == "Stable cardiomegaly."
    # findings only: the description falls back to the findings
    assert recs["d7"].texts["description"] == "Heart and mediastinum are unremarkable."
    assert result.dropped == {"non-frontal views (LATERAL)": 1, "non-frontal views (blank)": 1,
                              "images of studies whose report has neither FINDINGS nor IMPRESSION": 1}
    assert result.splits == {"train": 2, "valid": 2, "test": 1}
    assert "dropped by design: 3" in str(result)


def test_mimic_cxr_uncertain_positive(tmp_path):
    root = make_mimic_cxr(tmp_path / "mimic", gz=False)
    result = prepare("mimic-cxr", root, tmp_path / "m.jsonl", uncertain="positive")
    d3 = by_id(result.manifest)["d3"]
    assert d3.labels == ["Edema", "Pleural Effusion"] and d3.texts["category"] == "Edema, Pleural Effusion"


def test_mimic_cxr_reports_in_a_separate_folder(tmp_path):
    root = make_mimic_cxr(tmp_path / "jpg", gz=False)
    reports = tmp_path / "reports"
    for txt in (root / "files").rglob("*.txt"):
        target = reports / txt.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        txt.rename(target)
    assert len(by_id(prepare("mimic-cxr", root, tmp_path / "m.jsonl", reports=reports).manifest)) == 5


def test_report_sections_heading_variants():
    assert report_sections(" FINDING: a.\n CONCLUSION: b.\n") == {"findings": "a.", "impression": "b."}
    assert report_sections("IMPRESSION: old.\nIMPRESSION:\n new one.\n") == {"impression": "new one."}
    assert report_sections("Impression: lower-case headings are not headings") is None
    assert report_sections("The lungs are clear.") is None


def test_mimic_cxr_report_without_sections(tmp_path):
    root = make_mimic_cxr(tmp_path / "mimic", gz=False)
    report = root / "files/p10/p10000764/s50000003.txt"
    report.write_text("Stable cardiomegaly, nothing else.\n")
    with pytest.raises(PrepareError, match="s50000003.txt.*no section headings"):
        prepare("mimic-cxr", root, tmp_path / "m.jsonl")
    result = prepare("mimic-cxr", root, tmp_path / "m.jsonl", on_error="skip")
    assert result.skipped == {"report has no sections": 2}  # both frontal images of the study
    assert "s50000003.txt" in str(result)


def test_mimic_cxr_unknown_view_and_label_value(tmp_path):
    root = make_mimic_cxr(tmp_path / "mimic", gz=False)
    replace_in(root / "mimic-cxr-2.0.0-metadata.csv", ",PA,16", ",OBLIQUE,16")
    with pytest.raises(PrepareError, match=r"metadata.csv:2: column 'ViewPosition' value 'OBLIQUE': unknown view"):
        prepare("mimic-cxr", root, tmp_path / "m.jsonl")
    root = make_mimic_cxr(tmp_path / "mimic2", gz=False)
    replace_in(root / "mimic-cxr-2.0.0-chexpert.csv", "1.0", "2.0")
    with pytest.raises(PrepareError, match=r"chexpert.csv:2: column 'No Finding' value '2.0'"):
        prepare("mimic-cxr", root, tmp_path / "m.jsonl")


# --- CheXpert ----------------------------------------------------------------------------------

def test_chexpert_frontal_mgca_uncertain_and_splits(tmp_path):
    root = make_chexpert(tmp_path)
    result = prepare("chexpert", root, tmp_path / "out" / "chexpert.jsonl", valid_fraction=0.25)
    recs = by_id(result.manifest)
    assert len(recs) == 11 and not any("lateral" in i for i in recs)  # 8 patients, one with 2 studies; 2 test
    assert result.dropped == {"lateral views": 2}
    p2 = recs["train/patient00002/study1/view1_frontal"]
    # MGCA policy: uncertain Atelectasis -> 1, uncertain Cardiomegaly -> 0
    assert p2.labels == ["Edema", "Atelectasis"] and p2.meta["uncertain"] == ["Cardiomegaly", "Atelectasis"]
    assert p2.texts == {"abnormality": "Abnormal", "category": "Edema, Atelectasis"}
    assert p2.patient_id == "patient00002" and p2.view == "AP"
    assert recs["train/patient00003/study1/view1_frontal"].texts["abnormality"] == "Normal"
    # the official valid.csv is the test split; validation patients come from train, whole
    assert {r.split for i, r in recs.items() if i.startswith("valid/")} == {"test"}
    valid_patients = {r.patient_id for r in recs.values() if r.split == "valid"}
    assert len(valid_patients) == 2
    for r in recs.values():
        assert (r.split == "valid") == (r.patient_id in valid_patients)
    assert (result.manifest.parent / p2.image).is_file()


@pytest.mark.parametrize("policy, expected", [("positive", ["Cardiomegaly", "Edema", "Atelectasis"]),
                                              ("negative", ["Edema"])])
def test_chexpert_uncertain_policies(tmp_path, policy, expected):
    result = prepare("chexpert", make_chexpert(tmp_path), tmp_path / "c.jsonl", uncertain=policy)
    assert by_id(result.manifest)["train/patient00002/study1/view1_frontal"].labels == expected


def test_chexpert_same_seed_same_bytes_other_seed_other_split(tmp_path):
    root = make_chexpert(tmp_path, n_patients=30)
    paths = [prepare("chexpert", root, tmp_path / d / "c.jsonl", seed=s, valid_fraction=0.2).manifest
             for d, s in (("a", 1), ("b", 1), ("c", 2))]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_chexpert_bad_input_named_or_counted(tmp_path):
    root = make_chexpert(tmp_path)
    replace_in(root / "train.csv", "view1_frontal.jpg,Female,68,Frontal", "view1_frontal.jpg,Female,68,Oblique")
    replace_in(root / "valid.csv", "-small/valid/patient64542/study1/view1_frontal.jpg,Female,68,Frontal,AP,,,,,,,1.0",
               "-small/valid/patient64542/study1/view1_frontal.jpg,Female,68,Frontal,AP,,,,,,,7")
    with pytest.raises(PrepareError, match=r"train.csv:2: column 'Frontal/Lateral' value 'Oblique': unknown view"):
        prepare("chexpert", root, tmp_path / "c.jsonl")
    result = prepare("chexpert", root, tmp_path / "c.jsonl", on_error="skip")
    assert result.skipped == {"unknown view": 1, "invalid label value": 1}
    assert "valid.csv:3: column 'Consolidation' value '7'" in str(result)


def test_chexpert_missing_column_is_always_an_error(tmp_path):
    root = make_chexpert(tmp_path)
    write_csv(root / "train.csv", CHEXPERT_HEADER.replace("Frontal/Lateral,", ""),
              [chexpert_row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")])
    for on_error in ("raise", "skip"):  # every row would lack it: skipping would empty the split silently
        with pytest.raises(PrepareError, match=r"train.csv:1: column 'Frontal/Lateral': missing column"):
            prepare("chexpert", root, tmp_path / "c.jsonl", on_error=on_error)


def test_missing_image_named_or_counted(tmp_path):
    root = make_chexpert(tmp_path)
    (root / "train/patient00004/study1/view1_frontal.jpg").unlink()
    with pytest.raises(PrepareError, match="patient00004/study1/view1_frontal.jpg.*image file not found"):
        prepare("chexpert", root, tmp_path / "c.jsonl")
    assert prepare("chexpert", root, tmp_path / "c.jsonl", on_error="skip").skipped == {"image file not found": 1}


# --- ChestX-ray14 ------------------------------------------------------------------------------

def test_chestxray14_labels_lists_boxes(tmp_path):
    root = make_chestxray14(tmp_path / "nih")
    result = prepare("chestxray14", root, tmp_path / "cxr14.jsonl", valid_fraction=0.25)
    recs = by_id(result.manifest)
    assert set(recs) == {f"0000000{i}_000" for i in range(1, 7)} | {"00000001_001"}
    assert result.dropped == {"images in neither train_val_list.txt nor test_list.txt": 1}
    assert recs["00000003_000"].labels == ["Infiltration", "Pleural Thickening"]
    assert recs["00000003_000"].findings[0].model_dump(exclude_none=True) == {"name": "Infiltration",
                                                                             "box": (1.5, 2.25, 5.5, 5.25)}
    assert recs["00000006_000"].findings[0].box == (0, 0, 8, 16) and recs["00000006_000"].split == "test"
    assert recs["00000002_000"].labels == [] and recs["00000002_000"].texts["abnormality"] == "Normal"
    assert recs["00000001_000"].split == recs["00000001_001"].split  # patient 1, whole
    assert {r.split for r in recs.values()} == {"train", "valid", "test"}
    assert recs["00000002_000"].view == "AP" and recs["00000005_000"].patient_id == "5"


def test_chestxray14_unknown_label(tmp_path):
    root = make_chestxray14(tmp_path / "nih")
    replace_in(root / "Data_Entry_2017_v2020.csv", "Hernia", "Hernia|Tuberculosis")
    with pytest.raises(PrepareError, match=r"v2020.csv:6: column 'Finding Labels' value 'Hernia\|Tuberculosis'"):
        prepare("chestxray14", root, tmp_path / "c.jsonl")


# --- COVIDx ------------------------------------------------------------------------------------

def test_covidx_classes_and_patient_level_validation(tmp_path):
    root = make_covidx(tmp_path / "covidx")
    result = prepare("covidx", root, tmp_path / "covidx.jsonl", valid_fraction=0.4)
    recs = by_id(result.manifest)
    assert len(recs) == 8
    assert recs["train/COVID (1).png"].labels == ["COVID-19"] and recs["train/COVID (1).png"].meta == {
        "class": "COVID-19", "source": "sirm"}
    assert recs["train/c.jpg"].texts == {"abnormality": "Abnormal", "category": "Pneumonia"}
    assert recs["train/a.png"].labels == [] and recs["train/a.png"].meta["class"] == "normal"
    assert recs["train/a.png"].split == recs["train/b.png"].split  # patient 101
    assert recs["test/t1.png"].split == "test"
    assert len({r.patient_id for r in recs.values() if r.split == "valid"}) == 2  # 40% of 5 patients


def test_covidx_label_outside_the_three_classes(tmp_path):
    root = make_covidx(tmp_path / "covidx")
    replace_in(root / "test_COVIDx9A.txt", "t2.png normal", "t2.png positive")
    with pytest.raises(PrepareError, match=r"test_COVIDx9A.txt:2: column 'label' value 'positive'"):
        prepare("covidx", root, tmp_path / "c.jsonl")
    result = prepare("covidx", root, tmp_path / "c.jsonl", on_error="skip")
    assert result.skipped == {"invalid label value": 1} and result.records == 7
