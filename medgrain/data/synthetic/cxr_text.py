"""Texts of a synthetic chest radiograph at MGLL's granularities, and its report.

The two coarse levels are canonical (one string per label set), because MGLL's soft targets group
samples by exact text equality. The description and the report are drawn with the study's own RNG
from synonyms, templates and orders, so that texts must be read, not matched as a template: every
positive finding is mentioned with its location and severity, and an absent finding only ever
appears negated.
"""

from __future__ import annotations

import numpy as np

from medgrain.data.synthetic.common import Study, capitalize, pick

NORMAL = "normal chest radiograph"
ABNORMAL = "abnormal chest radiograph"
NO_FINDING = "no acute cardiopulmonary abnormality"

# How each finding may be named in a text (lower case); the tests read these tables too.
SYNONYMS = {
    "Atelectasis": ("atelectasis",),
    "Cardiomegaly": ("cardiomegaly", "enlarged cardiac silhouette", "cardiac silhouette is", "heart is",
                     "enlargement of the cardiac silhouette", "cardiac enlargement"),
    "Consolidation": ("consolidation", "airspace opacity", "airspace disease"),
    "Edema": ("edema",),
    "Fracture": ("fracture",),
    "Mass": ("mass",),
    "Nodule": ("nodule", "nodular opacity"),
    "Pleural Effusion": ("pleural effusion", "effusion", "pleural fluid"),
    "Pneumothorax": ("pneumothorax",),
    "Support Devices": ("endotracheal tube", "et tube", "central venous catheter", "central line",
                        "nasogastric tube", "enteric tube", "ng tube", "lines or tubes"),
}
SEVERITY_WORDS = {"small": ("small", "subcentimeter")}  # (a nodule's); otherwise the severity itself or its -ly form
LOCATION_WORDS = {
    "bilateral": ("bilateral", "both lungs", "both sides"),
    "endotracheal tube": ("endotracheal tube", "et tube"),
    "central venous catheter": ("central venous catheter", "central line"),
    "nasogastric tube": ("nasogastric tube", "enteric tube", "ng tube"),
}
NEGATIONS = {
    "Atelectasis": ("No atelectasis.", "No focal atelectasis."),
    "Cardiomegaly": ("The heart size is normal.", "Normal heart size.", "The cardiac silhouette is normal in size.",
                     "Heart size is within normal limits."),
    "Consolidation": ("No focal consolidation.", "No focal airspace opacity.", "There is no consolidation."),
    "Edema": ("No pulmonary edema.", "No evidence of pulmonary edema.", "Pulmonary vascularity is normal."),
    "Fracture": ("No acute rib fracture.", "No displaced fracture.", "The osseous structures are intact."),
    "Mass": ("No mass.", "No suspicious mass."),
    "Nodule": ("No pulmonary nodules.", "No suspicious nodule."),
    "Pleural Effusion": ("No pleural effusion.", "No pleural effusions.", "There is no pleural effusion.",
                         "The costophrenic angles are sharp."),
    "Pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."),
    "Support Devices": ("No lines or tubes.",),
}
NEUTRAL = ("The mediastinal contours are unremarkable.", "The hila are unremarkable.",
           "Visualized upper abdomen is unremarkable.", "The trachea is midline.")
NORMAL_DESCRIPTIONS = (
    "The lungs are clear and the heart size is normal.",
    "Clear lungs without pleural effusion or pneumothorax; normal cardiac silhouette.",
    "No focal consolidation, pleural effusion or pneumothorax. Heart size is normal.",
    "Normal cardiomediastinal silhouette and clear lungs.",
    "Lungs are well expanded and clear. No pleural effusion.",
)
NORMAL_IMPRESSIONS = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                      "Normal chest radiograph.", "No radiographic evidence of acute disease.")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


def _ly(severity: str) -> str:
    return {"mild": "mildly", "moderate": "moderately", "severe": "severely"}[severity]


def _size(rng, severity: str) -> str:
    return pick(rng, SEVERITY_WORDS.get(severity, (severity,)))


def _effusion(rng, f) -> str:
    sev, side = f.severity, f.location
    if side == "bilateral":
        return pick(rng, (
            f"{capitalize(sev)} bilateral pleural effusions.",
            f"{capitalize(sev)} bilateral pleural effusions blunting the costophrenic angles.",
            f"There are {sev} bilateral pleural effusions.",
            f"{capitalize(sev)} pleural effusions on both sides.",
            f"{capitalize(sev)} amount of bilateral pleural fluid.",
        ))
    return pick(rng, (
        f"{capitalize(sev)} {side} pleural effusion.",
        f"{capitalize(sev)} {side} pleural effusion blunting the costophrenic angle.",
        f"There is a {sev} {side} pleural effusion.",
        f"{capitalize(sev)} amount of {side} pleural fluid.",
        f"{capitalize(side)} pleural effusion, {sev} in size.",
        f"A {sev} {side} effusion layers at the base with a meniscus.",
    ))


def _cardiomegaly(rng, f) -> str:
    s = f.severity
    return pick(rng, (
        f"{capitalize(_ly(s))} enlarged cardiac silhouette.",
        f"{capitalize(s)} cardiomegaly.",
        f"The heart is {_ly(s)} enlarged.",
        f"The cardiac silhouette is {_ly(s)} enlarged.",
        f"{capitalize(s)} enlargement of the cardiac silhouette.",
    ))


def _nodule(rng, f) -> str:
    s, lobe = _size(rng, f.severity), f.location
    return pick(rng, (
        f"{capitalize(s)} nodule in the {lobe}.",
        f"{capitalize(s)} pulmonary nodule projecting over the {lobe}.",
        f"There is a {s} nodular opacity in the {lobe}.",
        f"{capitalize(s)} {lobe} nodule.",
        f"A {s} rounded nodule is seen in the {lobe}.",
    ))


def _mass(rng, f) -> str:
    lobe = f.location
    return pick(rng, (
        f"{capitalize(lobe)} mass.",
        f"Irregular mass in the {lobe}.",
        f"There is a lobulated mass in the {lobe}, concerning for malignancy.",
        f"A {lobe} mass is present.",
        f"Masslike opacity in the {lobe}.",
    ))


def _consolidation(rng, f) -> str:
    lobe = f.location
    air = " with air bronchograms" if f.params.get("bronchograms") else ""
    return pick(rng, (
        f"Consolidation in the {lobe}{air}.",
        f"Patchy airspace opacity in the {lobe}{air}.",
        f"{capitalize(lobe)} consolidation{air}, compatible with pneumonia.",
        f"Focal airspace disease involving the {lobe}{air}.",
    ))


def _atelectasis(rng, f) -> str:
    s, lobe = f.severity, f.location
    return pick(rng, (
        f"{capitalize(s)} plate-like atelectasis in the {lobe}.",
        f"{capitalize(s)} linear atelectasis at the {lobe}.",
        f"There is {s} atelectasis of the {lobe}.",
        f"Band-like opacity in the {lobe}, likely {s} atelectasis.",
    ))


def _pneumothorax(rng, f) -> str:
    s, side = f.severity, f.location
    return pick(rng, (
        f"{capitalize(s)} {side} pneumothorax.",
        f"{capitalize(s)} {side} apical pneumothorax with a visible pleural line.",
        f"There is a {s} {side}-sided pneumothorax.",
        f"{capitalize(side)} pneumothorax, {s} in size.",
    ))


def _edema(rng, f) -> str:
    s = f.severity
    kerley = ", with Kerley B lines" if s != "mild" and rng.random() < 0.6 else ""
    return pick(rng, (
        f"{capitalize(s)} pulmonary edema with bilateral perihilar haziness{kerley}.",
        f"{capitalize(s)} interstitial edema in both lungs{kerley}.",
        f"Bilateral perihilar opacities consistent with {s} pulmonary edema.",
        f"There is {s} bilateral pulmonary edema{kerley}.",
    ))


def _device(rng, device: dict) -> str:
    kind, detail = device["device"], device["detail"]
    if kind == "endotracheal tube":
        return pick(rng, (
            f"Endotracheal tube terminates {detail} cm above the carina.",
            f"The endotracheal tube tip is {detail} cm above the carina.",
            "ET tube in standard position above the carina.",
        ))
    if kind == "central venous catheter":
        return pick(rng, (
            f"Right {detail} central venous catheter with tip in the superior vena cava.",
            f"Right {detail} central line terminates in the SVC.",
            "Central venous catheter tip projects over the superior vena cava.",
        ))
    return pick(rng, (
        "Nasogastric tube courses below the diaphragm into the stomach.",
        "Enteric tube tip in the stomach.",
        "NG tube extends below the left hemidiaphragm.",
    ))


def _devices(rng, f) -> str:
    sentences = [_device(rng, d) for d in f.params["devices"]]
    return " ".join(sentences[i] for i in rng.permutation(len(sentences)))


def _fracture(rng, f) -> str:
    s, side, nth = f.severity, f.location, ORDINALS[f.params["rib"]]
    return pick(rng, (
        f"{capitalize(s)} fracture of the {side} {nth} rib.",
        f"{capitalize(side)} {nth} rib fracture, {s}.",
        f"There is a {s} {side} rib fracture.",
        f"Acute {s} fracture of the lateral {side} {nth} rib.",
    ))


SENTENCES = {
    "Atelectasis": _atelectasis, "Cardiomegaly": _cardiomegaly, "Consolidation": _consolidation, "Edema": _edema,
    "Fracture": _fracture, "Mass": _mass, "Nodule": _nodule, "Pleural Effusion": _effusion,
    "Pneumothorax": _pneumothorax, "Support Devices": _devices,
}


def category(labels: list[str]) -> str:
    return ", ".join(sorted(name.lower() for name in labels)) if labels else NO_FINDING


def _positives(rng, study: Study) -> list[str]:
    return [SENTENCES[f.name](rng, f) for f in (study.findings[i] for i in rng.permutation(len(study.findings)))]


def _negatives(rng, study: Study) -> list[str]:
    absent = [n for n in SENTENCES if n not in study.labels]
    said = [pick(rng, NEGATIONS[n]) for n in absent if rng.random() < 0.45]
    if "Pleural Effusion" in absent and "Pneumothorax" in absent and rng.random() < 0.5:
        said = [s for s in said if "effusion" not in s and "pneumothorax" not in s]
        said.append(pick(rng, ("No pleural effusion or pneumothorax.", "No effusion or pneumothorax.")))
    said += [s for s in NEUTRAL if rng.random() < 0.25]
    return [said[i] for i in rng.permutation(len(said))]


def phrases(study: Study) -> dict[str, str]:
    """Each finding's sentence of the description, its grounding phrase: the same draws as ``write``
    makes first, so the phrase is word for word the sentence in the description."""
    rng = np.random.default_rng(study.text_seed)
    order = rng.permutation(len(study.findings))
    return {study.findings[i].name: SENTENCES[study.findings[i].name](rng, study.findings[i]) for i in order}


def write(study: Study) -> tuple[dict[str, str], str]:
    rng = np.random.default_rng(study.text_seed)
    labels = study.labels
    if labels:
        description = " ".join(_positives(rng, study))
    else:
        description = pick(rng, NORMAL_DESCRIPTIONS)
    texts = {"abnormality": ABNORMAL if labels else NORMAL, "category": category(labels), "description": description}

    if study.view == "AP":
        header = pick(rng, ("Portable AP view of the chest.", "Single portable frontal radiograph of the chest.", ""))
    else:
        header = pick(rng, ("PA and lateral views of the chest.", "Frontal view of the chest.", ""))
    comparison = pick(rng, ("Comparison is made with the prior study.", "Compared with the prior radiograph.")) if study.visit else ""
    body = _positives(rng, study) if labels else [pick(rng, ("The lungs are clear.", "Lungs are clear bilaterally."))]
    findings = " ".join(s for s in (header, comparison, *body, *_negatives(rng, study)) if s)
    if labels:
        points = _positives(rng, study)
        impression = " ".join(f"{i}. {p}" for i, p in enumerate(points, 1)) if rng.random() < 0.5 else " ".join(points)
    else:
        impression = pick(rng, NORMAL_IMPRESSIONS)
    return texts, f"FINDINGS: {findings} IMPRESSION: {impression}"
