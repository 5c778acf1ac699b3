"""Tiny copies of each public dataset's published layout, written into a temporary folder.

None of the datasets may be redistributed, so every file here is made up: the CSV headers, file
names, folder nesting and DICOM tags follow the releases; the rows, reports and pixels are invented.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

CHEXPERT_OBSERVATIONS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]


# --- files ---------------------------------------------------------------------------------------

def pixels(seed: int, size: int = 16) -> np.ndarray:
    """A distinct image per seed with structure at the scale the 256-bit perceptual hash reads (16x16),
    smooth below it, so its hash survives resizing (a 4x4 grid left the hash's frequencies empty)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (16, 16)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))


def write_image(path: Path, seed: int, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels(seed, size)).save(path)
    return path


def write_dicom(path: Path, patient_id: str, seed: int = 0, *, size: int = 16, view: str = "PA",
                photometric: str = "MONOCHROME2") -> Path:
    """A single-frame 8-bit radiograph as the Kaggle challenges ship them (CR, ViewPosition, PatientID)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    uid = f"1.2.826.0.1.3680043.8.498.{seed + 1}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, uid
    ds.PatientID, ds.Modality, ds.BodyPartExamined, ds.ViewPosition = patient_id, "CR", "CHEST", view
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels(seed, size).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_csv(path: Path, header: str, rows: list[list], gz: bool = False) -> Path:
    """``header`` is written verbatim (some published headers are not what csv.writer would write)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    text = header + "\n" + buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def rle_encode(mask: np.ndarray) -> str:
    """SIIM's relative run-length code of a (height, width) mask: pixels column by column, each offset
    counted from the end of the previous run."""
    flat = mask.T.ravel()
    runs, position, i = [], 0, 0
    while i < flat.size:
        if flat[i]:
            j = i
            while j < flat.size and flat[j]:
                j += 1
            runs += [i - position, j - i]
            position, i = j, j
        else:
            i += 1
    return " ".join(map(str, runs))


# --- MIMIC-CXR-JPG -------------------------------------------------------------------------------

MIMIC_METADATA = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
                  "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                  "PatientOrientationCodeSequence_CodeMeaning")
MIMIC_CHEXPERT = ("subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
                  "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
                  "Pneumothorax,Support Devices")

MIMIC_REPORTS = {
    "50000001": """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old woman with cough.

 COMPARISON:  None.

 FINDINGS:

 Lungs are clear.  No pleural effusion or pneumothorax.
 Heart size is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
""",
    "50000002": """                                 FINAL REPORT
 INDICATION:  Shortness of breath.

 FINDINGS AND IMPRESSION:  Mild pulmonary edema.  Possible small left effusion.
""",
    "50000003": """                                 FINAL REPORT
 HISTORY:  Follow-up.

 IMPRESSIONS:
 Stable cardiomegaly.
""",
    "50000004": """                                 FINAL REPORT
 INDICATION:  Line placement.

 COMPARISON:  ___.
""",
    "50000005": """ FINAL REPORT
 FINDINGS:  Heart and mediastinum are unremarkable.
""",
}


def mimic_label_row(subject: str, study: str, **values: str) -> list[str]:
    columns = MIMIC_CHEXPERT.split(",")[2:]
    return [subject, study, *(values.get(c.replace(" ", "_"), "") for c in columns)]


def make_mimic_cxr(root: Path, gz: bool = True) -> Path:
    """Four patients, five studies: PA/AP/lateral/blank views; every report heading variant; one study
    with neither FINDINGS nor IMPRESSION. Frontal images kept: d1, d3, d4, d5, d7."""
    images = [  # dicom_id, subject, study, view, split
        ("d1", "10000032", "50000001", "PA", "train"), ("d2", "10000032", "50000001", "LATERAL", "train"),
        ("d3", "10000032", "50000002", "AP", "train"),
        ("d4", "10000764", "50000003", "PA", "validate"), ("d5", "10000764", "50000003", "PA", "validate"),
        ("d6", "10000898", "50000004", "AP", "test"),
        ("d7", "10001122", "50000005", "PA", "test"), ("d8", "10001122", "50000005", "", "test"),
    ]
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv",
              MIMIC_METADATA, [[d, s, st, "CHEST (PA AND LAT)", v, 16, 16, 21800506, 213014.531, "CHEST (PA AND LAT)",
                                "postero-anterior", "Erect"] for d, s, st, v, _ in images], gz=gz)
    write_csv(root / "mimic-cxr-2.0.0-split.csv", "dicom_id,study_id,subject_id,split",
              [[d, st, s, sp] for d, s, st, _, sp in images], gz=gz)
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", MIMIC_CHEXPERT, [
        mimic_label_row("10000032", "50000001", No_Finding="1.0"),
        mimic_label_row("10000032", "50000002", Edema="1.0", Pleural_Effusion="-1.0", Pneumonia="0.0"),
        mimic_label_row("10000764", "50000003", Cardiomegaly="1.0"),
        mimic_label_row("10000898", "50000004", Support_Devices="1.0"),
        mimic_label_row("10001122", "50000005"),
    ], gz=gz)
    for i, (dicom, subject, study, _, _) in enumerate(images):
        study_dir = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        write_image(study_dir / f"{dicom}.jpg", seed=100 + i)
        study_dir.with_suffix(".txt").write_text(MIMIC_REPORTS[study], encoding="utf-8")
    return root


# --- CheXpert ------------------------------------------------------------------------------------

CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_OBSERVATIONS)


def chexpert_row(path: str, view: str = "Frontal", ap_pa: str = "AP", **values: str) -> list[str]:
    return [path, "Female", "68", view, ap_pa if view == "Frontal" else "",
            *(values.get(c.replace(" ", "_"), "") for c in CHEXPERT_OBSERVATIONS)]


def make_chexpert(base: Path, n_patients: int = 8) -> Path:
    """CheXpert-v1.0-small with ``n_patients`` training patients (two studies for the first), one
    lateral image, and two test patients in valid.csv."""
    root = base / "CheXpert-v1.0-small"
    rows = []
    for p in range(1, n_patients + 1):
        folder = f"CheXpert-v1.0-small/train/patient{p:05d}"
        values = {"No_Finding": "1.0"} if p % 3 == 0 else {"Atelectasis": "-1.0", "Cardiomegaly": "-1.0", "Edema": "1.0"}
        rows.append(chexpert_row(f"{folder}/study1/view1_frontal.jpg", **values))
        if p == 1:
            rows.append(chexpert_row(f"{folder}/study1/view2_lateral.jpg", view="Lateral", Edema="1.0"))
            rows.append(chexpert_row(f"{folder}/study2/view1_frontal.jpg", ap_pa="PA", Pleural_Effusion="1.0",
                                     Support_Devices="0.0"))
    write_csv(root / "train.csv", CHEXPERT_HEADER, rows)
    valid = [chexpert_row("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", No_Finding="1.0",
                          Edema="0.0"),
             chexpert_row("CheXpert-v1.0-small/valid/patient64542/study1/view1_frontal.jpg", Consolidation="1.0"),
             chexpert_row("CheXpert-v1.0-small/valid/patient64542/study1/view2_lateral.jpg", view="Lateral")]
    write_csv(root / "valid.csv", CHEXPERT_HEADER, valid)
    for i, row in enumerate(rows + valid):
        write_image(base / row[0], seed=200 + i)
    return root


# --- RSNA Pneumonia ------------------------------------------------------------------------------

def make_rsna(root: Path) -> Path:
    """Six patients; p1 has two boxes, p2 one, the rest none; p3's DICOM is MONOCHROME1."""
    rows = [["p1", 1, 2, 4, 5, 1], ["p1", 8, 8, 6, 7, 1], ["p2", 0, 0, 16, 16, 1],
            ["p3", "", "", "", "", 0], ["p4", "", "", "", "", 0], ["p5", "", "", "", "", 0], ["p6", "", "", "", "", 0]]
    write_csv(root / "stage_2_train_labels.csv", "patientId,x,y,width,height,Target", rows)
    for i, pid in enumerate(["p1", "p2", "p3", "p4", "p5", "p6"]):
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", pid, seed=300 + i, view="AP" if i % 2 else "PA",
                    photometric="MONOCHROME1" if pid == "p3" else "MONOCHROME2")
    return root


# --- COVIDx --------------------------------------------------------------------------------------

def make_covidx(root: Path) -> Path:
    train = [("101", "a.png", "normal", "rsna"), ("101", "b.png", "normal", "rsna"), ("102", "c.jpg", "pneumonia", "rsna"),
             ("103", "COVID (1).png", "COVID-19", "sirm"), ("104", "d.png", "COVID-19", "cohen"),
             ("105", "e.png", "normal", "rsna")]
    test = [("201", "t1.png", "COVID-19", "ricord"), ("202", "t2.png", "normal", "rsna")]
    for name, lines in (("train", train), ("test", test)):
        (root / f"{name}_COVIDx9A.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}_COVIDx9A.txt").write_text("".join(" ".join(t) + "\n" for t in lines), encoding="utf-8")
        for i, (_, filename, _, _) in enumerate(lines):
            write_image(root / name / filename, seed=400 + i + (50 if name == "test" else 0))
    return root


# --- SIIM-ACR Pneumothorax -----------------------------------------------------------------------

SIIM_IDS = [f"1.2.276.0.7230010.3.1.4.8323329.{n}.1517875162.{n}" for n in (1000, 1001, 1002, 1003, 1004)]


def siim_masks(size: int = 16) -> dict[str, list[np.ndarray]]:
    """Mask components per image: two for image 2 (one image, several CSV rows), one for image 3."""
    a, b, c = (np.zeros((size, size), bool) for _ in range(3))
    a[2:5, 3:7] = True
    b[9:12, 10:15] = True
    c[0:size, 0] = True
    c[5, 5:9] = True
    return {SIIM_IDS[2]: [a, b], SIIM_IDS[3]: [c]}


def make_siim(root: Path, size: int = 16) -> Path:
    masks = siim_masks(size)
    rows = [[SIIM_IDS[0], " -1"], [SIIM_IDS[1], "-1"]]
    rows += [[image_id, " " + rle_encode(m)] for image_id, ms in masks.items() for m in ms]
    rows += [[SIIM_IDS[4], " -1"]]
    write_csv(root / "train-rle.csv", "ImageId, EncodedPixels", rows)
    for i, image_id in enumerate(SIIM_IDS):
        study, series = f"1.2.276.0.7230010.3.1.2.{i}", f"1.2.276.0.7230010.3.1.3.{i}"
        write_dicom(root / "dicom-images-train" / study / series / f"{image_id}.dcm", f"patient-{i}", seed=500 + i,
                    size=size, photometric="MONOCHROME1" if i == 1 else "MONOCHROME2")
    write_dicom(root / "dicom-images-test" / "s" / "r" / "1.2.276.0.7230010.3.1.4.9.dcm", "test-patient", seed=599,
                size=size)
    return root


# --- NIH ChestX-ray14 ----------------------------------------------------------------------------

CXR14_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def make_chestxray14(root: Path) -> Path:
    entries = [
        ("00000001_000.png", "Cardiomegaly", 0, 1, "PA"), ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, "PA"),
        ("00000002_000.png", "No Finding", 0, 2, "AP"), ("00000003_000.png", "Infiltration|Pleural_Thickening", 0, 3, "PA"),
        ("00000004_000.png", "Hernia", 0, 4, "PA"), ("00000005_000.png", "No Finding", 0, 5, "PA"),
        ("00000006_000.png", "Effusion", 0, 6, "AP"), ("00000007_000.png", "Mass", 0, 7, "PA"),
    ]
    write_csv(root / "Data_Entry_2017_v2020.csv", CXR14_HEADER,
              [[name, labels, fu, pid, 57, "M", view, 2682, 2749, 0.143, 0.143] for name, labels, fu, pid, view in entries])
    (root / "train_val_list.txt").write_text("\n".join(e[0] for e in entries[:5]) + "\n", encoding="utf-8")
    (root / "test_list.txt").write_text("\n".join(e[0] for e in entries[5:7]) + "\n", encoding="utf-8")  # 7 in neither
    for i, (name, *_rest) in enumerate(entries):
        write_image(root / f"images_00{1 + i // 4}" / "images" / name, seed=600 + i)
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000003_000.png,Infiltrate,1.5,2.25,4.0,3.0\n"
        "00000006_000.png,Effusion,0,0,8,16\n", encoding="utf-8")
    return root


# --- MGLL-Fundus ---------------------------------------------------------------------------------

def make_mgll_fundus(root: Path, layout: str = "splits") -> Path:
    """The released manifest: ``layout="splits"`` an object with train/validation lists; ``"jsonl"``
    JSON lines without splits."""
    records = [
        {"image_path": "images/idrid/IDRiD_001.jpg", "annotations": [
            {"Disease": "Abnormal, Mild Non-Proliferative Diabetic Retinopathy", "Description": "Only microaneurysms observed"},
            {"Disease": "Abnormal, Diabetic Macular Edema", "Description": "Hard exudates near the macula"}]},
        {"image_path": "images/idrid/IDRiD_002.jpg", "annotations": [
            {"Disease": "Normal, Healthy", "Description": "Clear optic disk boundaries, Normal fundus color"}]},
        {"ImageID": "images/odir/0_left.jpg", "Disease": "Abnormal, Cataract",
         "Description": "Opacification of crystalline lens observed"},
        {"image_path": "images/odir/0_right.jpg", "annotations": [
            {"disease": "Normal, Healthy", "description": "No apparent retinopathy"}]},
    ]
    for i, rec in enumerate(records):
        write_image(root / (rec.get("image_path") or rec["ImageID"]), seed=700 + i)
    if layout == "splits":
        path = root / "mgll_fundus_manifest.json"
        path.write_text(json.dumps({"train": records[:3], "validation": records[3:]}), encoding="utf-8")
    else:
        path = root / "mgll_fundus_manifest.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return root


# --- RFMiD ---------------------------------------------------------------------------------------

RFMID_CONDITIONS = ("DR,ARMD,MH,DN,MYA,BRVO,TSLN,ERM,LS,MS,CSR,ODC,CRVO,TV,AH,ODP,ODE,ST,AION,PT,RT,RS,CRS,EDN,RPEC,"
                    "MHL,RP,CWS,CB,ODPM,PRH,MNF,HR,CRAO,TD,CME,PTCR,CF,VH,MCA,VS,BRAO,PLQ,HPED,CL").split(",")


def rfmid_row(image_id: int, *positive: str, risk: int | None = None) -> list:
    risk = int(bool(positive)) if risk is None else risk
    return [image_id, risk, *(int(c in positive) for c in RFMID_CONDITIONS)]


def make_rfmid(root: Path) -> Path:
    header = "ID,Disease_Risk," + ",".join(RFMID_CONDITIONS)
    splits = {
        "Training": [rfmid_row(1, "DR", "MH"), rfmid_row(2), rfmid_row(3, "ODC")],
        "Validation": [rfmid_row(1, "ARMD"), rfmid_row(2, risk=1)],
        "Test": [rfmid_row(1), rfmid_row(2, "DR")],
    }
    for k, (name, rows) in enumerate(splits.items()):
        write_csv(root / f"{name}_Labels.csv", header, rows)
        for i, row in enumerate(rows):
            write_image(root / name / f"{row[0]}.png", seed=800 + 10 * k + i)
    return root


# --- OpenI ---------------------------------------------------------------------------------------

def openi_xml(n: int, findings: str, impression: str, majors: list[str], images: list[str]) -> str:
    abstract = "".join(f'<AbstractText Label="{label}">{text}</AbstractText>' for label, text in
                       (("COMPARISON", "None."), ("INDICATION", "Cough"), ("FINDINGS", findings),
                        ("IMPRESSION", impression)))
    mesh = "".join(f"<major>{m}</major>" for m in majors)
    parents = "".join(f'<parentImage id="{i}"><figureId>F1</figureId><caption>Xray Chest PA and Lateral</caption>'
                      f"<panel type=\"single\"><url>/hadoop/storage/radiology/extract/{i}.jpg</url></panel></parentImage>"
                      for i in images)
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><meta type="rr"/><uId id="CXR{n}"/>'
            f'<pmcId id="{n}"/><docSource>CXR</docSource><IUXRId id="{n}"/><licenseType>open-access</licenseType>'
            f"<MedlineCitation><Article><Abstract>{abstract}</Abstract></Article></MedlineCitation>"
            f"<MeSH>{mesh}</MeSH>{parents}</eCitation>")


def make_openi(root: Path) -> Path:
    """Four reports: normal; two-label abnormal; findings only; neither (dropped). Images for 1 and 2."""
    reports = root / "ecgen-radiology"
    reports.mkdir(parents=True, exist_ok=True)
    xml = {
        1: openi_xml(1, "The heart is normal in size.", "No acute disease.", ["normal"],
                     ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]),
        2: openi_xml(2, "Left basilar opacity.", "Mild left base opacity. Cardiomegaly.",
                     ["Opacity/lung/base/left/mild", "Cardiomegaly/borderline"], ["CXR2_1_IM-0652-1001"]),
        3: openi_xml(3, "Calcified granuloma in the right upper lobe.", "",
                     ["Calcified Granuloma/lung/upper lobe/right"], []),
        4: openi_xml(4, "", "", ["normal"], []),
    }
    for n, text in xml.items():
        (reports / f"{n}.xml").write_text(text, encoding="utf-8")
    images = root / "NLMCXR_png"
    for i, image_id in enumerate(["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_1_IM-0652-1001"]):
        write_image(images / f"{image_id}.png", seed=900 + i)
    return root
