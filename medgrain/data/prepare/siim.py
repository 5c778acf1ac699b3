"""SIIM-ACR Pneumothorax Segmentation (stage 1) -> manifest with one mask PNG per positive image.

Layout (the challenge release): ``ROOT/train-rle.csv`` with header ``ImageId, EncodedPixels`` (the second
name has a leading space), one row per mask component, ``-1`` (or `` -1``) for an image without
pneumothorax; DICOMs in nested folders ``ROOT/dicom-images-train/<study>/<series>/<ImageId>.dcm``.

The run-length code is pairs (offset, length); each offset counts from the end of the previous run,
the first from pixel 0; pixels are numbered column by column (the flat array is reshaped to
(width, height) and transposed). All rows of an image are united into one mask PNG in
``<manifest stem>_masks/`` next to the manifest, at the DICOM's own size.

Split 70/15/15 by image (MGCA split by CSV row, so one image's components could land in several
splits); an image's patient goes with it, grouping by the DICOM's PatientID where it repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..manifest import Record
from .common import (
    PREPARERS,
    Preparation,
    PrepareError,
    PrepareResult,
    Row,
    dataset_root,
    find_file,
    progress,
    read_csv,
    read_dicom_header,
    split_by_patient,
)

PNEUMOTHORAX = "Pneumothorax"
SIIM_SIDE = 1024  # every image of the challenge is 1024x1024


def rle_decode(rle: str, width: int = SIIM_SIDE, height: int = SIIM_SIDE) -> np.ndarray:
    """SIIM's relative run-length code as a bool mask of shape (height, width)."""
    try:
        numbers = [int(v) for v in rle.split()]
    except ValueError:
        raise ValueError("the code must be whitespace-separated integers") from None
    if not numbers or len(numbers) % 2:
        raise ValueError(f"the code must be pairs (offset, length); it has {len(numbers)} numbers")
    flat = np.zeros(width * height, dtype=bool)
    position = 0
    for offset, length in zip(numbers[::2], numbers[1::2]):
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset or length ({offset}, {length})")
        position += offset
        if position + length > flat.size:
            raise ValueError(f"a run ends at pixel {position + length}, beyond the {width}x{height} image")
        flat[position:position + length] = True
        position += length
    return flat.reshape(width, height).T


def _write_mask(mask: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)


@PREPARERS.register("siim-pneumothorax",
                    help="SIIM-ACR Pneumothorax: chest radiographs with pneumothorax masks")
def prepare_siim(root: str | Path, out: str | Path, *, valid_fraction: float = 0.15, test_fraction: float = 0.15,
                 seed: int = 0, on_error: str = "raise", exclude: Sequence[str | Path] = (),
                 leak_threshold: int | None = None) -> PrepareResult:
    root = dataset_root(root, "siim-pneumothorax", ["train-rle.csv", "*/train-rle.csv"])
    prep = Preparation("siim-pneumothorax", out, on_error)
    rle_csv = find_file(root, ["train-rle.csv", "*/train-rle.csv"], "SIIM train-rle.csv")
    rows_of: dict[str, list[Row]] = {}
    for row in read_csv(rle_csv, ["ImageId", "EncodedPixels"]):
        rows_of.setdefault(row["ImageId"], []).append(row)
    dicoms: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.dcm")):
        dicoms.setdefault(path.stem, []).append(path)
    prep.drop("DICOM files without a train-rle.csv row", len(set(dicoms) - set(rows_of)))

    masks_dir = prep.out.parent / f"{prep.out.stem}_masks"
    records: list[Record] = []
    for image_id, rows in progress(rows_of.items(), "decoding masks", total=len(rows_of)):
        first = rows[0]
        try:
            codes = [(row, row["EncodedPixels"]) for row in rows]
            positive = [(row, code) for row, code in codes if code != "-1"]
            if positive and len(positive) != len(codes):
                raise first.error("EncodedPixels", "-1", "the image has both a -1 row and mask rows",
                                  reason="inconsistent rows")
            found = dicoms.get(image_id, [])
            if len(found) != 1:
                raise first.error("ImageId", image_id, f"expected one {image_id}.dcm under {root}, found {len(found)}",
                                  reason="DICOM not found" if not found else "duplicate DICOM")
            header = read_dicom_header(found[0])
            mask = np.zeros((header.height, header.width), dtype=bool)
            for row, code in positive:
                try:
                    mask |= rle_decode(code, header.width, header.height)
                except ValueError as e:
                    raise row.error("EncodedPixels", code, str(e), reason="invalid run-length code") from None
            mask_path = masks_dir / f"{image_id}.png"
            findings = [{"name": PNEUMOTHORAX, "mask": prep.relative(mask_path)}] if positive else []
            records.append(prep.record(
                rle_csv, first.line, id=image_id, image=prep.relative(found[0]),
                labels=[PNEUMOTHORAX] if positive else [],
                texts={"category": PNEUMOTHORAX if positive else f"No {PNEUMOTHORAX}"}, findings=findings,
                patient_id=header.patient_id or image_id, domain="cxr", view=header.view,
                meta={"photometric": header.photometric}))
            if positive:
                _write_mask(mask, mask_path)
        except PrepareError as e:
            prep.skip(e)
    prep.notes.append(f"masks: {sum(bool(r.findings) for r in records)} PNGs in {masks_dir}")
    records = split_by_patient(records, seed, valid=valid_fraction, test=test_fraction)
    return prep.finish(records, exclude, leak_threshold)
