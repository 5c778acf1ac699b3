"""Texts of a synthetic fundus photograph at MGLL's fundus granularities (normal/abnormal, disease
category with its grade, clinical explanation), and a short report.

As for the chest films: canonical coarse levels (MGLL groups by exact text), varied fine levels that
name every finding with its location and grade and negate only what is absent.
"""

from __future__ import annotations

import numpy as np

from medgrain.data.synthetic.common import Study, capitalize, pick

NORMAL = "normal fundus"
ABNORMAL = "abnormal fundus"
NO_FINDING = "no retinal disease"

SYNONYMS = {
    "Age-related Macular Degeneration": ("age-related macular degeneration", "amd", "drusen"),
    "Diabetic Macular Edema": ("macular edema", "dme"),
    "Diabetic Retinopathy": ("diabetic retinopathy", "npdr", "pdr", "retinopathy"),
    "Glaucoma": ("glaucoma", "glaucomatous"),
    "Pathologic Myopia": ("pathologic myopia", "myopic", "myopia", "tessellat"),
}
SEVERITY_WORDS = {
    "mild non-proliferative": ("mild non-proliferative", "mild npdr"),
    "moderate non-proliferative": ("moderate non-proliferative", "moderate npdr"),
    "severe non-proliferative": ("severe non-proliferative", "severe npdr"),
    "proliferative": ("proliferative", "pdr"),
}
LOCATION_WORDS = {
    "macula": ("macula", "macular", "fovea", "foveal"),
    "optic disc": ("optic disc", "disc", "optic nerve head"),
    "four quadrants": ("four quadrants", "all quadrants"),
}
NEGATIONS = {
    "Age-related Macular Degeneration": ("No drusen.", "No signs of age-related macular degeneration."),
    "Diabetic Macular Edema": ("No macular edema.", "The macula is flat without exudates."),
    "Diabetic Retinopathy": ("No diabetic retinopathy.", "No microaneurysms or haemorrhages.",
                             "No signs of diabetic retinopathy."),
    "Glaucoma": ("No glaucomatous cupping.", "Healthy neuroretinal rim without glaucomatous cupping."),
    "Pathologic Myopia": ("No myopic changes.", "No tessellation or peripapillary atrophy."),
}
NORMAL_DESCRIPTIONS = (
    "Clear optic disc boundaries, normal fundus colour, no apparent retinopathy.",
    "Healthy optic disc and macula with normal vessels; no haemorrhages or exudates.",
    "The optic disc, vessels and macula appear normal.",
    "Normal fundus: sharp disc margins, normal cup, unremarkable macula.",
)
CONSISTENT = ("consistent with", "in keeping with", "compatible with", "indicating")


def _category(f) -> str:
    if f.name in ("Diabetic Retinopathy", "Diabetic Macular Edema", "Age-related Macular Degeneration"):
        return f"{f.severity} {f.name.lower()}"
    return f.name.lower()


def category(study: Study) -> str:
    return ", ".join(sorted(_category(f) for f in study.findings)) if study.findings else NO_FINDING


def _haem(rng) -> str:
    return pick(rng, ("haemorrhages", "hemorrhages"))


def _retinopathy(rng, f) -> str:
    grade, where = f.severity, pick(rng, ("in the posterior pole", "around the posterior pole"))
    if f.location == "four quadrants":
        where = pick(rng, ("in all four quadrants", "in four quadrants"))
    if grade == "proliferative":
        name = pick(rng, ("proliferative diabetic retinopathy", "PDR"))
        sites = " and ".join(f.params["new_vessels_at"])
        signs = [f"neovascularisation {sites}", f"intraretinal {_haem(rng)} {where}", "microaneurysms"]
    else:
        name = pick(rng, (f"{grade} diabetic retinopathy", f"{grade.split()[0]} NPDR"))
        if grade.startswith("mild"):
            signs = [f"scattered microaneurysms {where}"]
        elif grade.startswith("moderate"):
            signs = [f"microaneurysms {where}", f"dot-blot {_haem(rng)}", pick(rng, ("a few hard exudates", "some lipid exudates"))]
        else:
            signs = [f"numerous intraretinal {_haem(rng)} {where}", "microaneurysms", pick(rng, ("hard exudates", "lipid exudates"))]
    signs = [signs[i] for i in rng.permutation(len(signs))]
    listed = ", ".join(signs[:-1]) + " and " + signs[-1] if len(signs) > 1 else signs[0]
    return pick(rng, (
        f"{capitalize(listed)}, {pick(rng, CONSISTENT)} {name}.",
        f"{capitalize(name)}: {listed}.",
        f"There are {listed}, {pick(rng, CONSISTENT)} {name}.",
    ))


def _macular_edema(rng, f) -> str:
    s = f.severity
    where = {"mild": "near the macula", "moderate": "approaching the fovea", "severe": "involving the foveal centre"}[s]
    exu = pick(rng, ("hard exudates", "lipid exudates", "exudates"))
    return pick(rng, (
        f"{capitalize(exu)} {where}, {pick(rng, CONSISTENT)} {s} diabetic macular edema.",
        f"{capitalize(s)} diabetic macular edema with {exu} {where}.",
        f"There are {exu} {where}: {s} DME.",
    ))


def _degeneration(rng, f) -> str:
    s = f.severity
    drusen = {"early": "a few small drusen", "intermediate": "numerous intermediate to large drusen",
              "late": "confluent drusen with geographic atrophy"}[s]
    at = pick(rng, ("at the macula", "in the macular region", "around the fovea"))
    return pick(rng, (
        f"{capitalize(drusen)} {at}, {pick(rng, CONSISTENT)} {s} age-related macular degeneration.",
        f"{capitalize(s)} age-related macular degeneration: {drusen} {at}.",
        f"There are {drusen} {at} ({s} AMD).",
    ))


def _glaucoma(rng, f) -> str:
    s, cdr = f.severity, f.params["cup_to_disc"]
    disc = pick(rng, ("optic disc", "optic nerve head"))
    return pick(rng, (
        f"Enlarged cup-to-disc ratio of {cdr:.2f} at the {disc}, {pick(rng, CONSISTENT)} {s} glaucoma.",
        f"{capitalize(s)} glaucomatous cupping of the {disc} (cup-to-disc ratio {cdr:.2f}).",
        f"The {disc} shows a vertical cup-to-disc ratio of about {cdr:.2f}: {s} glaucoma.",
    ))


def _myopia(rng, f) -> str:
    s = f.severity
    signs = [pick(rng, ("tessellated fundus", "visible choroidal vessels (tessellation)")),
             "temporal peripapillary atrophy"]
    if s != "mild":
        signs.append("diffuse chorioretinal atrophy")
    if s == "severe":
        signs.append("patchy atrophy")
    listed = ", ".join(signs[:-1]) + " and " + signs[-1]
    return pick(rng, (
        f"{capitalize(listed)} at the posterior pole, {pick(rng, CONSISTENT)} {s} pathologic myopia.",
        f"{capitalize(s)} pathologic myopia: {listed} in the posterior pole.",
        f"Posterior pole with {listed}; {s} myopic maculopathy.",
    ))


SENTENCES = {
    "Age-related Macular Degeneration": _degeneration, "Diabetic Macular Edema": _macular_edema,
    "Diabetic Retinopathy": _retinopathy, "Glaucoma": _glaucoma, "Pathologic Myopia": _myopia,
}


def _positives(rng, study: Study) -> list[str]:
    return [SENTENCES[f.name](rng, f) for f in (study.findings[i] for i in rng.permutation(len(study.findings)))]


def phrases(study: Study) -> dict[str, str]:
    """Each finding's sentence of the description, its grounding phrase: the same draws as ``write``
    makes first, so the phrase is word for word the sentence in the description."""
    rng = np.random.default_rng(study.text_seed)
    order = rng.permutation(len(study.findings))
    return {study.findings[i].name: SENTENCES[study.findings[i].name](rng, study.findings[i]) for i in order}


def write(study: Study) -> tuple[dict[str, str], str]:
    rng = np.random.default_rng(study.text_seed)
    labels = study.labels
    description = " ".join(_positives(rng, study)) if labels else pick(rng, NORMAL_DESCRIPTIONS)
    texts = {"abnormality": ABNORMAL if labels else NORMAL, "category": category(study), "description": description}

    eye = "right eye" if study.view == "OD" else "left eye"
    header = pick(rng, (f"Colour fundus photograph of the {eye}, macula-centred.", f"Fundus photograph, {eye}.", ""))
    glaucoma = study.finding("Glaucoma")
    disc = "" if glaucoma else pick(rng, (
        f"The optic disc is pink with sharp margins and a cup-to-disc ratio of {study.anatomy['cup_to_disc']:.1f}.",
        "Healthy optic disc with a normal cup.",
    ))
    absent = [n for n in SENTENCES if n not in labels and rng.random() < 0.6]
    negatives = [pick(rng, NEGATIONS[n]) for n in absent]
    parts = [header, disc, *_positives(rng, study), *[negatives[i] for i in rng.permutation(len(negatives))]]
    findings = " ".join(p for p in parts if p)
    if labels:
        impression = "; ".join(_category(f) for f in study.findings)
        impression = capitalize(impression) + "."
    else:
        impression = pick(rng, ("Normal fundus.", "No retinal disease.", "Healthy fundus."))
    return texts, f"FINDINGS: {findings} IMPRESSION: {impression}"
