"""RFMiD (Retinal Fundus Multi-disease Image Dataset, RIADD challenge) -> manifest.

Layout: three label CSVs, ``*Training_Labels.csv``, ``*Validation_Labels.csv`` and ``*Test*_Labels.csv``
(e.g. ``RFMiD_Training_Labels.csv``, ``RFMiD_Testing_Labels.csv``) anywhere under ROOT, with
``ID,Disease_Risk,DR,ARMD,MH,...`` (0/1); images ``<ID>.png`` in a folder whose name contains
"train", "valid" or "test" (``Training/``, ``Validation/``, ``Test/``, or the original
``a. Training Set/`` ...).

Multi-label with the official splits. IDs restart at 1 in each split, so record ids are
``train/1``, ``valid/1``, ... RFMiD publishes no patient ids: each image is its own patient, so the two
eyes of one person may sit in different official splits (as in every published RFMiD result).
"""

from __future__ import annotations

import csv
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
    find_file,
    open_text,
    read_csv,
    require_dir,
)

# Column abbreviations (the labels) and the conditions they name (the category texts), from the
# dataset's paper (Pachade et al., Data 2021).
CONDITIONS = {
    "DR": "Diabetic Retinopathy", "ARMD": "Age-Related Macular Degeneration", "MH": "Media Haze", "DN": "Drusen",
    "MYA": "Myopia", "BRVO": "Branch Retinal Vein Occlusion", "TSLN": "Tessellation", "ERM": "Epiretinal Membrane",
    "LS": "Laser Scars", "MS": "Macular Scar", "CSR": "Central Serous Retinopathy", "ODC": "Optic Disc Cupping",
    "CRVO": "Central Retinal Vein Occlusion", "TV": "Tortuous Vessels", "AH": "Asteroid Hyalosis",
    "ODP": "Optic Disc Pallor", "ODE": "Optic Disc Edema", "ST": "Optociliary Shunt",
    "AION": "Anterior Ischemic Optic Neuropathy", "PT": "Parafoveal Telangiectasia", "RT": "Retinal Traction",
    "RS": "Retinitis", "CRS": "Chorioretinitis", "EDN": "Exudation", "RPEC": "Retinal Pigment Epithelium Changes",
    "MHL": "Macular Hole", "RP": "Retinitis Pigmentosa", "CWS": "Cotton Wool Spots", "CB": "Coloboma",
    "ODPM": "Optic Disc Pit Maculopathy", "PRH": "Preretinal Hemorrhage", "MNF": "Myelinated Nerve Fibers",
    "HR": "Hemorrhagic Retinopathy", "CRAO": "Central Retinal Artery Occlusion", "TD": "Tilted Disc",
    "CME": "Cystoid Macular Edema", "PTCR": "Post-Traumatic Choroidal Rupture", "CF": "Choroidal Folds",
    "VH": "Vitreous Hemorrhage", "MCA": "Macroaneurysm", "VS": "Vasculitis", "BRAO": "Branch Retinal Artery Occlusion",
    "PLQ": "Plaque", "HPED": "Hemorrhagic Pigment Epithelial Detachment", "CL": "Collateral",
}
SPLITS = (("train", "*Training_Labels.csv", "train"), ("valid", "*Validation_Labels.csv", "valid"),
          ("test", "*Test*_Labels.csv", "test"))
UNSPECIFIED = "Other Disease"  # Disease_Risk 1 with no condition column set


def _header(path: Path) -> list[str]:
    with open_text(path) as f:
        return [h.strip() for h in next(csv.reader(f), [])]


@PREPARERS.register("rfmid",
                    help="RFMiD (RIADD challenge): fundus photographs with multi-disease labels, official splits")
def prepare_rfmid(root: str | Path, out: str | Path, *, seed: int = 0, on_error: str = "raise",
                  exclude: Sequence[str | Path] = (), leak_threshold: int | None = None) -> PrepareResult:
    """RFMiD -> manifest. ``seed`` is accepted for a uniform signature; the official splits are kept."""
    root = require_dir(root, "rfmid")
    prep = Preparation("rfmid", out, on_error)
    pngs = sorted(root.rglob("*.png"))
    records: list[Record] = []
    for split, pattern, folder_word in SPLITS:
        path = find_file(root, [pattern, f"**/{pattern}"], f"RFMiD {split} labels")
        images = {p.stem: p for p in pngs if folder_word in p.parent.name.lower()}
        conditions = [c for c in _header(path) if c not in ("ID", "Disease_Risk")]
        for row in read_csv(path, ["ID", "Disease_Risk", *conditions]):
            try:
                values = {}
                for column in ("Disease_Risk", *conditions):
                    if row[column] not in ("0", "1"):
                        raise row.error(column, row[column], "expected 0 or 1", reason="invalid label value")
                    values[column] = row[column] == "1"
                labels = [c for c in conditions if values[c]]
                image_id = row["ID"]
                if image_id not in images:
                    raise PrepareError(path, row.line, "ID", image_id,
                                       f"no {image_id}.png in a folder named like '{folder_word}' under {root}",
                                       reason="image file not found")
                category = ", ".join(CONDITIONS.get(c, c) for c in labels) or (UNSPECIFIED if values["Disease_Risk"]
                                                                               else NORMAL)
                records.append(prep.record(
                    path, row.line, id=f"{split}/{image_id}", image=prep.relative(images[image_id]), split=split,
                    labels=labels, texts={"abnormality": ABNORMAL if values["Disease_Risk"] or labels else NORMAL,
                                          "category": category},
                    patient_id=f"{split}/{image_id}", domain="fundus"))
            except PrepareError as e:
                prep.skip(e)
    return prep.finish(records, exclude, leak_threshold)
