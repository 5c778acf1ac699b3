"""medgrain prepare for the fundus sets (MGLL-Fundus, RFMiD) and OpenI's reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_prepare import make_mgll_fundus, make_openi, make_rfmid, replace_in

from medgrain.data.manifest import read_manifest
from medgrain.data.prepare import PrepareError, prepare
from medgrain.data.prepare.openi import mesh_granularities


def by_id(path):
    return {r.id: r for r in read_manifest(path).records}


# --- MGLL-Fundus -------------------------------------------------------------------------------

def test_mgll_fundus_one_record_per_image(tmp_path):
    result = prepare("mgll-fundus", make_mgll_fundus(tmp_path / "mgll"), tmp_path / "mgll.jsonl")
    recs = by_id(result.manifest)
    assert sorted(recs) == ["images/idrid/IDRiD_001", "images/idrid/IDRiD_002", "images/odir/0_left",
                            "images/odir/0_right"]
    first = recs["images/idrid/IDRiD_001"]
    assert first.texts == {"abnormality": "Abnormal",
                           "category": "Mild Non-Proliferative Diabetic Retinopathy; Diabetic Macular Edema",
                           "description": "Only microaneurysms observed; Hard exudates near the macula"}
    assert first.labels == ["Mild Non-Proliferative Diabetic Retinopathy", "Diabetic Macular Edema"]
    assert first.domain == "fundus" and first.patient_id == "images/idrid/IDRiD_001.jpg"
    assert recs["images/idrid/IDRiD_002"].labels == [] and recs["images/idrid/IDRiD_002"].texts["category"] == "Healthy"
    assert recs["images/odir/0_left"].labels == ["Cataract"]  # Disease/Description on the record itself
    assert recs["images/odir/0_right"].split == "valid"  # "validation" in the file
    assert result.splits == {"train": 3, "valid": 1}


def test_mgll_fundus_flatten_keeps_an_image_in_one_split(tmp_path):
    root = make_mgll_fundus(tmp_path / "mgll", layout="jsonl")
    result = prepare("mgll-fundus", root, tmp_path / "mgll.jsonl", flatten=True, valid_fraction=0.5)
    recs = by_id(result.manifest)
    assert len(recs) == 5
    a, b = recs["images/idrid/IDRiD_001#0"], recs["images/idrid/IDRiD_001#1"]
    assert a.texts == {"abnormality": "Abnormal", "category": "Mild Non-Proliferative Diabetic Retinopathy",
                       "description": "Only microaneurysms observed"}
    assert b.labels == ["Diabetic Macular Edema"] and a.split == b.split and a.image == b.image
    assert sorted(result.splits.values()) == [2, 3]  # 2 of 4 images (patients) drawn as validation


def test_mgll_fundus_disease_outside_the_documented_form(tmp_path):
    root = make_mgll_fundus(tmp_path / "mgll", layout="jsonl")
    replace_in(root / "mgll_fundus_manifest.jsonl", '"Abnormal, Cataract"', '"Cataract"')
    with pytest.raises(PrepareError, match=r"mgll_fundus_manifest.jsonl:3: column 'Disease' value 'Cataract'"):
        prepare("mgll-fundus", root, tmp_path / "m.jsonl")
    result = prepare("mgll-fundus", root, tmp_path / "m.jsonl", on_error="skip")
    assert result.skipped == {"invalid label value": 1} and result.records == 3


def test_mgll_fundus_splits_under_splits_key_and_missing_image(tmp_path):
    root = make_mgll_fundus(tmp_path / "mgll")
    data = json.loads((root / "mgll_fundus_manifest.json").read_text())
    (root / "mgll_fundus_manifest.json").write_text(json.dumps({"splits": {"train": data["train"], "test": data["validation"]}}))
    (root / "images/odir/0_left.jpg").unlink()
    with pytest.raises(PrepareError, match=r"mgll_fundus_manifest.json:train\[2\]: value .*0_left.jpg'"):
        prepare("mgll-fundus", root, tmp_path / "m.jsonl")
    result = prepare("mgll-fundus", root, tmp_path / "m.jsonl", on_error="skip")
    assert result.splits == {"train": 2, "test": 1}


# --- RFMiD -------------------------------------------------------------------------------------

def test_rfmid_official_splits_multi_label(tmp_path):
    result = prepare("rfmid", make_rfmid(tmp_path / "rfmid"), tmp_path / "rfmid.jsonl")
    recs = by_id(result.manifest)
    assert result.splits == {"train": 3, "valid": 2, "test": 2}
    assert recs["train/1"].labels == ["DR", "MH"]
    assert recs["train/1"].texts == {"abnormality": "Abnormal", "category": "Diabetic Retinopathy, Media Haze"}
    assert recs["train/2"].labels == [] and recs["train/2"].texts == {"abnormality": "Normal", "category": "Normal"}
    assert recs["valid/2"].texts == {"abnormality": "Abnormal", "category": "Other Disease"}
    assert recs["test/2"].image.endswith("rfmid/Test/2.png") and recs["test/2"].patient_id == "test/2"


def test_rfmid_label_value_outside_0_1(tmp_path):
    root = make_rfmid(tmp_path / "rfmid")
    replace_in(root / "Validation_Labels.csv", "1,1,0,1", "1,1,0,5")
    with pytest.raises(PrepareError, match=r"Validation_Labels.csv:2: column 'ARMD' value '5'"):
        prepare("rfmid", root, tmp_path / "r.jsonl")


# --- OpenI -------------------------------------------------------------------------------------

def test_mesh_granularities():
    g = mesh_granularities("Opacity/lung/base/left/mild")
    assert g == {"finding": "Opacity", "location": ["lung", "base", "left"], "degree": ["mild"],
                 "all": ["Opacity", "lung", "base", "left", "mild"]}


def test_openi_text_only(tmp_path):
    result = prepare("openi", make_openi(tmp_path / "openi"), tmp_path / "openi.jsonl", text_only=True)
    recs = by_id(result.manifest)
    assert sorted(recs) == ["CXR1", "CXR2", "CXR3"] and all(r.image is None for r in recs.values())
    assert result.dropped == {"reports with neither FINDINGS nor IMPRESSION": 1}
    two = recs["CXR2"]
    assert two.report == "Mild left base opacity. Cardiomegaly. Left basilar opacity."
    assert two.labels == ["Opacity", "Cardiomegaly"]
    assert two.texts == {"finding": "Opacity; Cardiomegaly",
                         "finding_location": "Opacity, lung, base, left; Cardiomegaly",
                         "label": "Opacity, lung, base, left, mild; Cardiomegaly, borderline"}
    assert two.findings[0].location == "lung, base, left" and two.findings[0].severity == "mild"
    assert recs["CXR1"].labels == [] and recs["CXR1"].texts["finding"] == "Normal"
    assert recs["CXR3"].report == "Calcified granuloma in the right upper lobe."


def test_openi_with_images(tmp_path):
    root = make_openi(tmp_path / "openi")
    (root / "NLMCXR_png" / "CXR1_1_IM-0001-4001.png").unlink()
    with pytest.raises(PrepareError, match="1.xml: column 'parentImage' value 'CXR1_1_IM-0001-4001'"):
        prepare("openi", root, tmp_path / "o.jsonl", images=root / "NLMCXR_png")
    result = prepare("openi", root, tmp_path / "o.jsonl", images=root / "NLMCXR_png", on_error="skip")
    recs = by_id(result.manifest)
    assert sorted(recs) == ["CXR1_1_IM-0001-3001", "CXR2_1_IM-0652-1001"]
    assert recs["CXR2_1_IM-0652-1001"].patient_id == "CXR2" and recs["CXR2_1_IM-0652-1001"].image.endswith(".png")
    assert result.dropped == {"reports with neither FINDINGS nor IMPRESSION": 1, "reports without images": 1}
    assert result.skipped == {"image file not found": 1}


def test_openi_report_without_sections(tmp_path):
    root = make_openi(tmp_path / "openi")
    (root / "ecgen-radiology" / "5.xml").write_text('<eCitation><uId id="CXR5"/><MeSH><major>normal</major></MeSH></eCitation>')
    with pytest.raises(PrepareError, match="5.xml: column 'AbstractText': report has no sections"):
        prepare("openi", root, tmp_path / "o.jsonl", text_only=True)
    assert prepare("openi", root, tmp_path / "o.jsonl", text_only=True,
                   on_error="skip").skipped == {"report has no sections": 1}


def test_openi_needs_images_or_text_only(tmp_path):
    with pytest.raises(ValueError, match="text_only"):
        prepare("openi", make_openi(tmp_path / "openi"), tmp_path / "o.jsonl")


@pytest.mark.slow
def test_openi_from_torchxrayvision_archive_in_place(tmp_path):
    pytest.importorskip("importlib.metadata").distribution("torchxrayvision")
    result = prepare("openi", None, tmp_path / "openi.jsonl", from_torchxrayvision=True, text_only=True)
    # 3,955 reports in the archive; 28 have neither FINDINGS nor IMPRESSION
    assert result.records == 3927 and result.dropped == {"reports with neither FINDINGS nor IMPRESSION": 28}
    assert not result.skipped and result.normal > 1000
    assert result.splits == {"train": 3141, "valid": 393, "test": 393}
    assert not list(tmp_path.glob("*.xml")) and not list(tmp_path.glob("*.tgz"))  # nothing copied out


def test_mgll_fundus_without_a_description_leaves_it_absent(tmp_path):
    """A record with no Description has no description text (absent, issue 12), not a placeholder;
    an empty Description is still a bad annotation."""
    root = make_mgll_fundus(tmp_path / "mgll", layout="jsonl")
    replace_in(root / "mgll_fundus_manifest.jsonl", '"Description": "Opacification of crystalline lens observed"',
               '"Description": null')
    recs = by_id(prepare("mgll-fundus", root, tmp_path / "m.jsonl").manifest)
    assert recs["images/odir/0_left"].texts == {"abnormality": "Abnormal", "category": "Cataract"}
    replace_in(root / "mgll_fundus_manifest.jsonl", '"Description": null', '"Description": " "')
    with pytest.raises(PrepareError, match="Description that is null or not empty"):
        prepare("mgll-fundus", root, tmp_path / "m.jsonl")


def test_padchest_localization_absent_without_a_localized_label():
    from medgrain.data.prepare.common import Row
    from medgrain.data.prepare.padchest import padchest_texts

    def row(labels, localizations, by_sentence):
        return Row(Path("labels.csv"), 2, {"Labels": labels, "Localizations": localizations,
                                      "LabelsLocalizationsBySentence": by_sentence})

    _, texts, _ = padchest_texts(row("['pleural effusion']", "[]", "[]"))
    assert texts == {"abnormality": "Abnormal", "category": "pleural effusion"}
    _, texts, _ = padchest_texts(row("['pleural effusion']", "['left']", "[]"))
    assert texts["localization"] == "pleural effusion; left"
    _, texts, _ = padchest_texts(row("['nodule']", "[]", "[['nodule', 'right upper lobe']]"))
    assert texts["localization"] == "nodule right upper lobe"
