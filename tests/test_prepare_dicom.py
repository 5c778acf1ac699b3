"""medgrain prepare on the DICOM sets: RSNA Pneumonia (boxes) and SIIM-ACR Pneumothorax (run-length masks)."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_prepare import SIIM_IDS, make_rsna, make_siim, replace_in, rle_encode, siim_masks
from PIL import Image

from medgrain.data.manifest import read_manifest
from medgrain.data.prepare import PrepareError, prepare
from medgrain.data.prepare.siim import rle_decode


def by_id(path):
    return {r.id: r for r in read_manifest(path).records}


# --- RSNA --------------------------------------------------------------------------------------

def test_rsna_one_record_per_patient_with_boxes(tmp_path):
    result = prepare("rsna-pneumonia", make_rsna(tmp_path / "rsna"), tmp_path / "out" / "rsna.jsonl")
    recs = by_id(result.manifest)
    assert sorted(recs) == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert recs["p1"].labels == ["Pneumonia"] and [f.box for f in recs["p1"].findings] == [(1, 2, 5, 7), (8, 8, 14, 15)]
    assert recs["p2"].findings[0].box == (0, 0, 16, 16)
    assert recs["p3"].labels == [] and recs["p3"].texts == {"category": "No Pneumonia"}
    assert recs["p3"].meta == {"photometric": "MONOCHROME1"} and recs["p2"].view == "AP"
    assert recs["p1"].image.endswith("stage_2_train_images/p1.dcm")
    assert result.splits == {"train": 4, "valid": 1, "test": 1}  # 70/15/15 of six patients, rounded


def test_rsna_unreadable_dicom(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    (root / "stage_2_train_images" / "p4.dcm").write_bytes(b"not a dicom at all")
    with pytest.raises(PrepareError, match=r"p4.dcm: unreadable DICOM"):
        prepare("rsna-pneumonia", root, tmp_path / "r.jsonl")
    result = prepare("rsna-pneumonia", root, tmp_path / "r.jsonl", on_error="skip")
    assert result.skipped == {"unreadable DICOM": 1} and result.records == 5
    assert "p4.dcm: unreadable DICOM" in str(result)


def test_rsna_bad_target_skips_the_whole_patient(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    replace_in(root / "stage_2_train_labels.csv", "p1,8,8,6,7,1", "p1,8,8,6,7,2")
    with pytest.raises(PrepareError, match=r"stage_2_train_labels.csv:3: column 'Target' value '2'"):
        prepare("rsna-pneumonia", root, tmp_path / "r.jsonl")
    result = prepare("rsna-pneumonia", root, tmp_path / "r.jsonl", on_error="skip")
    assert "p1" not in by_id(result.manifest) and result.skipped == {"invalid label value": 1}


def test_rsna_box_outside_the_image(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    replace_in(root / "stage_2_train_labels.csv", "p2,0,0,16,16,1", "p2,0,0,17,16,1")
    with pytest.raises(PrepareError, match="box leaves the 16x16 image"):
        prepare("rsna-pneumonia", root, tmp_path / "r.jsonl")


# --- SIIM run-length code ----------------------------------------------------------------------

def rle_decode_reference(rle: str, width: int, height: int) -> list[list[bool]]:
    """The published definition, pixel by pixel: pixel k is column k // height, row k % height."""
    mask = [[False] * width for _ in range(height)]
    numbers = [int(v) for v in rle.split()]
    position = 0
    for offset, length in zip(numbers[::2], numbers[1::2]):
        position += offset
        for k in range(position, position + length):
            mask[k % height][k // height] = True
        position += length
    return mask


def test_rle_decode_known_small_mask():
    # 4 wide, 3 high: pixels 1-2 are column 0, rows 1-2; then 3 skipped, pixel 6 is column 2, row 0
    expected = np.array([[0, 0, 1, 0],
                         [1, 0, 0, 0],
                         [1, 0, 0, 0]], dtype=bool)
    assert (rle_decode("1 2 3 1", width=4, height=3) == expected).all()


def test_rle_decode_matches_the_reference_loop():
    rng = np.random.default_rng(0)
    for width, height in ((16, 16), (7, 5), (5, 9)):
        mask = rng.random((height, width)) < 0.3
        rle = rle_encode(mask)
        decoded = rle_decode(rle, width, height)
        assert decoded.shape == (height, width)
        assert (decoded == np.array(rle_decode_reference(rle, width, height))).all()
        assert (decoded == mask).all()


def test_rle_decode_default_canvas_and_errors():
    assert rle_decode("1048575 1").shape == (1024, 1024) and rle_decode("1048575 1")[1023, 1023]
    for bad, message in (("1 2 3", "pairs"), ("1 x", "integers"), ("10 10", "beyond the 4x3")):
        with pytest.raises(ValueError, match=message):
            rle_decode(bad, width=4, height=3)


# --- SIIM --------------------------------------------------------------------------------------

def test_siim_masks_united_per_image_and_split_by_image(tmp_path):
    result = prepare("siim-pneumothorax", make_siim(tmp_path / "siim"), tmp_path / "out" / "siim.jsonl")
    recs = by_id(result.manifest)
    assert sorted(recs) == sorted(SIIM_IDS)
    assert result.dropped == {"DICOM files without a train-rle.csv row": 1}
    for image_id, components in siim_masks().items():
        rec = recs[image_id]
        assert rec.labels == ["Pneumothorax"] and len(rec.findings) == 1
        assert rec.findings[0].mask == f"siim_masks/{image_id}.png"
        mask = np.asarray(Image.open(result.manifest.parent / rec.findings[0].mask)) > 0
        assert mask.shape == (16, 16) and (mask == np.logical_or.reduce(components)).all()
    for negative in (SIIM_IDS[0], SIIM_IDS[1], SIIM_IDS[4]):  # " -1" and "-1" alike
        assert recs[negative].labels == [] and recs[negative].findings == []
        assert recs[negative].texts == {"category": "No Pneumothorax"}
    assert recs[SIIM_IDS[1]].meta == {"photometric": "MONOCHROME1"}
    assert recs[SIIM_IDS[2]].patient_id == "patient-2"
    assert recs[SIIM_IDS[2]].image.startswith("../siim/dicom-images-train/")
    assert sum(result.splits.values()) == 5 and result.splits["valid"] == result.splits["test"] == 1


def test_siim_bad_run_length_code(tmp_path):
    root = make_siim(tmp_path / "siim")
    text = (root / "train-rle.csv").read_text()
    (root / "train-rle.csv").write_text(text.replace(f"{SIIM_IDS[3]}, ", f"{SIIM_IDS[3]}, 9999 "))
    with pytest.raises(PrepareError, match=r"train-rle.csv:6: column 'EncodedPixels' .*pairs"):
        prepare("siim-pneumothorax", root, tmp_path / "s.jsonl")
    result = prepare("siim-pneumothorax", root, tmp_path / "s.jsonl", on_error="skip")
    assert result.skipped == {"invalid run-length code": 1} and SIIM_IDS[3] not in by_id(result.manifest)
