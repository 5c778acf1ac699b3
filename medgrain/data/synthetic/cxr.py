"""Chest-radiograph-like studies: frontal views with CheXpert-named findings that change the pixels.

Coordinates: (u, v) in the patient's body frame, u = 0 on the midline, |u| ~ 0.95 at the chest
wall, v down from the apices (~ -0.8) to the domes (~ 0.5). The patient's right is the image's
left (u < 0), as on any frontal chest film. Everything is drawn as a density (bright = dense) on
vectorised grids; exposure, gamma and quantum noise come last, point-wise, so a finding's change
stays where its density changed: its mask.

Patients follow a clinical scenario (heart failure, pneumonia, intensive care, ...) that sets which
findings occur together; each of their 1-3 visits redraws acquisition and lets acute findings
progress or resolve.
"""

from __future__ import annotations

import numpy as np

from medgrain.data.synthetic import cxr_text
from medgrain.data.synthetic.common import (
    GRANULARITIES,
    FindingSpec,
    Frame,
    Rendering,
    Study,
    bezier,
    bump,
    draw_seed,
    draw_texture_key,
    mask_of,
    mix,
    patient_rng,
    pick,
    ramp,
    record_rng,
    shift_grade,
    stamp_ellipse,
    stamp_polyline,
    texture,
    to_uint8,
    white_noise,
)

DOMAIN = "cxr"
FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Fracture",
    "Mass", "Nodule", "Pleural Effusion", "Pneumothorax", "Support Devices",
)
__all__ = ["DOMAIN", "FINDINGS", "GRANULARITIES", "phrases", "sample_study", "render", "write_texts"]

GRADES = ("mild", "moderate", "severe")
SIZES = ("small", "moderate", "large")
DEVICES = ("endotracheal tube", "central venous catheter", "nasogastric tube")
EVOLVING = {"Cardiomegaly": GRADES, "Edema": GRADES, "Pleural Effusion": SIZES, "Atelectasis": GRADES[:2]}  # grade may change per visit
ACUTE = {"Atelectasis", "Consolidation", "Edema", "Pleural Effusion", "Pneumothorax", "Support Devices"}
HILUM = (0.21, -0.05)  # (|u|, v) of both hila: lung markings and perihilar edema radiate from here
CARINA_V = -0.3
RIB_CURVE = 0.75  # posterior ribs drop laterally
CM_PER_UNIT = 16.0  # a chest ~30 cm wide spans ~1.9 units

# Lobes on the frontal projection: side (-1 right, +1 left) and the (|u|, v) box their lesions sit in.
LOBES = {
    "right upper lobe": (-1, (0.22, 0.68), (-0.62, -0.25)),
    "right middle lobe": (-1, (0.2, 0.45), (-0.1, 0.22)),
    "right lower lobe": (-1, (0.38, 0.74), (0.05, 0.36)),
    "left upper lobe": (1, (0.3, 0.68), (-0.62, -0.15)),
    "left lower lobe": (1, (0.55, 0.78), (0.02, 0.34)),
}
SCENARIOS = (  # probabilities per patient; "healthy" plus resolved follow-ups give ~40% normal studies
    ("healthy", 0.37), ("heart failure", 0.14), ("pneumonia", 0.12), ("intensive care", 0.1),
    ("lung lesion", 0.1), ("trauma", 0.06), ("cardiomegaly", 0.06), ("atelectasis", 0.05),
)


# ----------------------------------------------------------------------------- sampling


def _anatomy(rng: np.random.Generator) -> dict:
    dome_right = rng.uniform(0.5, 0.58)
    return {
        "habitus": rng.uniform(0.93, 1.05),
        "lung_lateral": rng.uniform(0.8, 0.87),
        "lung_medial": rng.uniform(0.11, 0.14),
        "lung_apex": rng.uniform(-0.84, -0.77),
        "dome_right": dome_right,
        "dome_left": dome_right + rng.uniform(0.02, 0.07),
        "dome_height": rng.uniform(0.13, 0.19),
        "heart_u": rng.uniform(0.14, 0.18),
        "heart_v": rng.uniform(0.19, 0.25),
        "heart_hx": rng.uniform(0.33, 0.37),
        "heart_hy": rng.uniform(0.24, 0.28),
        "heart_tilt": rng.uniform(-0.22, -0.08),
        "rib_spacing": rng.uniform(0.13, 0.145),
        "rib_start": rng.uniform(-0.97, -0.9),
        "stomach_gas": rng.uniform(0.0, 0.09),
        "vessel_texture": draw_texture_key(rng),
    }


def _heart(an: dict, view: str, enlargement: float = 1.0) -> tuple[float, float, float, float]:
    """Centre and half-axes; an AP film magnifies the heart; cardiomegaly widens it to the left."""
    mag = 1.1 if view == "AP" else 1.0
    hx, hy = an["heart_hx"] * mag * enlargement, an["heart_hy"] * mag * (1 + 0.35 * (enlargement - 1))
    return an["heart_u"] + 0.55 * (hx - an["heart_hx"] * mag), an["heart_v"], hx, hy


def _lung_margins(a, v, an: dict, dome):
    """Signed distances (u, v units, > 0 inside) to the lateral wall, mediastinum, apex and dome."""
    lateral = an["lung_lateral"] - 0.9 * np.maximum(-0.25 - v, 0.0) ** 2 - a
    medial = a - (an["lung_medial"] + 0.06 * np.maximum(v + 0.2, 0.0))
    apex = v - (an["lung_apex"] + 0.9 * (a - 0.38) ** 2)
    base = dome - an["dome_height"] * (1.0 - ((a - 0.42) * 2.0) ** 2) - v
    return lateral, medial, apex, base


def _lobe_point(rng, an: dict, lobe: str, margin: float) -> tuple[float, float]:
    """A lesion centre in the lobe, inside the lung by ``margin`` and clear of the largest heart."""
    side, (a0, a1), (v0, v1) = LOBES[lobe]
    hu, hv, hx, hy = _heart(an, "AP", 1.5)
    for _ in range(64):
        a, v = rng.uniform(a0, a1), rng.uniform(v0, v1)
        dome = an["dome_right"] if side < 0 else an["dome_left"]
        inside = min(_lung_margins(a, v, an, dome)) > margin
        behind_heart = side > 0 and ((a - hu) / (hx + margin)) ** 2 + ((v - hv) / (hy + margin)) ** 2 < 1
        if inside and not behind_heart:
            break
    else:
        a, v = 0.5 * (a0 + a1), 0.5 * (v0 + v1)
    return float(side * a), float(v)


def _devices(rng) -> list[dict]:
    """The tubes and lines of an intensive-care patient: device, polyline, width and the detail a
    report gives (how far the endotracheal tube's tip is above the carina, the catheter's access)."""
    chosen = [d for d, p in zip(DEVICES, (0.7, 0.7, 0.5)) if rng.random() < p] or [DEVICES[int(rng.integers(3))]]
    out = []
    for d in chosen:
        j = rng.uniform(-0.015, 0.015)
        if d == "endotracheal tube":
            tip = rng.uniform(-0.58, -0.4)
            path, width, detail = bezier([(j, -1.4), (j, -0.9), (0.005, tip)]), 0.024, max(1, round((CARINA_V - tip) * CM_PER_UNIT))
        elif d == "central venous catheter":
            tip = rng.uniform(-0.24, -0.1)
            detail = pick(rng, ("internal jugular", "subclavian"))
            if detail == "internal jugular":
                path = bezier([(-0.24, -1.4), (-0.15, -0.85), (-0.08 + j, -0.55), (-0.07, tip)])
            else:
                path = bezier([(-0.8, -0.8), (-0.35, -0.78), (-0.1 + j, -0.6), (-0.07, tip)])
            width = 0.013
        else:
            path, width, detail = bezier([(0.03 + j, -1.4), (0.04, -0.3), (0.1, 0.35), (0.36, 0.64)]), 0.016, None
        out.append({"device": d, "path": path, "width": width, "detail": detail})
    return out


def _planned(rng, an: dict, name: str, chance: float, location: str | None = None, severity: str | None = None) -> dict:
    """A finding the patient's scenario may show on a visit (with ``chance``), with its
    patient-level geometry: a nodule stays where it is from one visit to the next."""
    params: dict = {}
    if name in ("Nodule", "Mass", "Consolidation", "Atelectasis"):
        margin = {"Nodule": 0.05, "Mass": 0.1, "Consolidation": 0.08, "Atelectasis": 0.06}[name]
        params["centre"] = _lobe_point(rng, an, location, margin)
    if name == "Nodule":
        params["radius"] = (0.026 if severity == "small" else 0.048) * rng.uniform(0.85, 1.15)
    elif name == "Mass":
        params |= {"radius": rng.uniform(0.09, 0.13), "lobulation": (rng.uniform(0, 6.3), rng.uniform(0, 6.3))}
    elif name == "Consolidation":
        params |= {"radii": (rng.uniform(0.13, 0.2), rng.uniform(0.1, 0.15)), "bronchograms": bool(rng.random() < 0.5)}
    elif name == "Atelectasis":
        params |= {"length": rng.uniform(0.16, 0.26), "angle": rng.uniform(-0.3, 0.3)}
    elif name == "Fracture":
        params |= {"rib": int(rng.integers(3, 8)), "a": rng.uniform(0.55, 0.74)}
    elif name == "Support Devices":
        params["devices"] = _devices(rng)
        location = " and ".join(d["device"] for d in params["devices"])
    return {"name": name, "chance": chance, "location": location, "severity": severity, "params": params}


def _plan(rng, scenario: str, an: dict) -> list[dict]:
    """The findings a scenario brings, most characteristic first (they win when capping at 3)."""

    def finding(name, chance, location=None, severity=None):
        return _planned(rng, an, name, chance, location, severity)

    def grade(p=(0.4, 0.4, 0.2)):
        return pick(rng, GRADES, p)

    def size(p=(0.45, 0.4, 0.15)):
        return pick(rng, SIZES, p)

    def lobe():
        return pick(rng, tuple(LOBES), (0.15, 0.15, 0.3, 0.15, 0.25))

    def lower_lobe():
        return pick(rng, ("right lower lobe", "left lower lobe", "right middle lobe"), (0.45, 0.4, 0.15))

    side = pick(rng, ("left", "right"))
    if scenario == "heart failure":
        return [finding("Cardiomegaly", 1.0, severity=grade()),
                finding("Edema", 0.75, "bilateral", grade()),
                finding("Pleural Effusion", 0.6, pick(rng, ("bilateral", "right", "left"), (0.5, 0.3, 0.2)), size())]
    if scenario == "pneumonia":
        where = lobe()
        return [finding("Consolidation", 0.85, where),
                finding("Pleural Effusion", 0.3, where.split()[0], "small"),
                finding("Atelectasis", 0.15, lower_lobe(), "mild")]
    if scenario == "intensive care":
        extras = [finding("Consolidation", 0.5, lobe()),
                  finding("Atelectasis", 0.5, lower_lobe(), pick(rng, GRADES[:2])),
                  finding("Pleural Effusion", 0.4, pick(rng, ("bilateral", "right", "left")), size()),
                  finding("Edema", 0.3, "bilateral", grade()),
                  finding("Pneumothorax", 0.12, side, pick(rng, ("small", "large")))]
        return [finding("Support Devices", 1.0)] + [extras[i] for i in rng.permutation(5)[: int(rng.integers(1, 3))]]
    if scenario == "lung lesion":
        where = lobe()
        if rng.random() < 0.7:
            return [finding("Nodule", 1.0, where, pick(rng, ("small", "large")))]
        return [finding("Mass", 1.0, where),
                finding("Pleural Effusion", 0.2, where.split()[0], size()),
                finding("Atelectasis", 0.15, lower_lobe(), "mild")]
    if scenario == "trauma":
        return [finding("Fracture", 1.0, side, pick(rng, ("nondisplaced", "displaced"), (0.6, 0.4))),
                finding("Pneumothorax", 0.55, side, pick(rng, ("small", "large"), (0.7, 0.3))),
                finding("Atelectasis", 0.2, f"{side} lower lobe", "mild")]
    if scenario == "cardiomegaly":
        return [finding("Cardiomegaly", 1.0, severity=grade((0.6, 0.3, 0.1))),
                finding("Pleural Effusion", 0.2, side, "small")]
    if scenario == "atelectasis":
        return [finding("Atelectasis", 0.9, lower_lobe(), pick(rng, GRADES[:2])),
                finding("Pleural Effusion", 0.3, side, "small")]
    return []


def sample_study(seed: int, index: int, patient: int, visit: int) -> Study:
    """Draw one study: the patient's anatomy and scenario (from ``(seed, patient)``) and this
    visit's acquisition, findings, severities and text seed (from ``(seed, index)``)."""
    prng = patient_rng(seed, patient)
    an = _anatomy(prng)
    scenario = an["scenario"] = pick(prng, [s for s, _ in SCENARIOS], [p for _, p in SCENARIOS])
    plan = _plan(prng, scenario, an)
    rng = record_rng(seed, index)
    chosen = []
    for p in plan:
        chance = p["chance"] * (0.7 if visit > 0 and p["name"] in ACUTE else 1.0)
        if rng.random() < chance:
            chosen.append(p)
    if plan and not chosen and visit == 0:
        chosen = plan[:1]
    findings = []
    for p in chosen[:3]:
        severity = p["severity"]
        if p["name"] in EVOLVING:
            severity = shift_grade(rng, EVOLVING[p["name"]], severity)
        params = dict(p["params"], texture=draw_texture_key(rng), fine=draw_texture_key(rng))
        findings.append(FindingSpec(p["name"], p["location"], severity, params))
    findings.sort(key=lambda f: FINDINGS.index(f.name))
    view = "AP" if rng.random() < (0.85 if scenario == "intensive care" else 0.25) else "PA"
    nuisance = {
        "cx": rng.uniform(-0.04, 0.04), "cy": rng.uniform(-0.02, 0.05), "scale": rng.uniform(0.86, 0.96),
        "angle": rng.uniform(-0.06, 0.06), "inspiration": rng.uniform(-0.04, 0.04),
        "gain": rng.uniform(0.88, 1.12), "offset": rng.uniform(-0.04, 0.04), "gamma": rng.uniform(0.8, 1.25),
        "noise": rng.uniform(0.008, 0.02) * (1.5 if view == "AP" else 1.0), "grain": draw_texture_key(rng),
    }
    return Study(index, patient, visit, view, an, nuisance, tuple(findings), draw_seed(rng), draw_seed(rng))


# ----------------------------------------------------------------------------- rendering


def _lung_weight(a, v, an, dome, edge):
    lateral, medial, apex, base = _lung_margins(a, v, an, dome)
    return ramp(lateral, edge) * ramp(medial, edge) * ramp(apex, edge) * ramp(base, edge)


def _side(u: np.ndarray, location: str) -> np.ndarray:
    if location == "bilateral":
        return np.ones(u.shape, np.float32)
    return (u < 0 if location.startswith("right") else u > 0).astype(np.float32)


def _ribs(a, v, an, edge):
    """Posterior ribs as one periodic field: phase counts ribs from the top, each rib a band that
    curves down laterally. Returns the field and the phase (the fracture needs both)."""
    sp = an["rib_spacing"]
    phase = (v - RIB_CURVE * (a - 0.1) ** 2 - an["rib_start"]) * (1.0 / sp)
    return _rib_profile(phase, sp, edge) * ramp(0.95 - a, edge) * ramp(a - 0.05, edge) * (phase > 0) * (phase < 10.45), phase


def _rib_profile(phase, sp, edge):
    f = phase - np.floor(phase)
    return ramp((0.42 - f) * sp, edge) * ramp(f * sp, edge)


def _fracture(ribs, phase, fr: Frame, an: dict, f: FindingSpec) -> np.ndarray:
    """Break rib ``rib`` at |u| = ``a``: a gap across it, and for a displaced fracture a step of
    the lateral fragment. Returns where the bone changed."""
    sp, r, a_f = an["rib_spacing"], f.params["rib"], f.params["a"]
    sign = -1.0 if f.location == "right" else 1.0
    v_f = an["rib_start"] + sp * (r + 0.21) + RIB_CURVE * (a_f - 0.1) ** 2
    win = fr.window([(sign * a_f, v_f)], 0.16)
    changed = np.zeros(ribs.shape, np.float32)
    if win is None:
        return changed > 0
    a, ph, intact = np.abs(fr.u[win]), phase[win], ribs[win]
    on_rib = (np.abs(ph - (r + 0.21)) < 0.5) & (fr.u[win] * sign > 0)
    shift = 0.16 if f.severity == "displaced" else 0.0
    lateral = on_rib & (a > a_f) & (a < a_f + 0.14)
    moved = np.where(lateral, _rib_profile(ph + shift, sp, fr.edge), intact)
    gap = ramp(max(0.009, 0.8 * fr.edge) - np.abs(a - a_f), fr.edge) * on_rib
    broken = moved * (1.0 - gap)
    changed[win] = np.abs(broken - intact)
    ribs[win] = broken
    return mask_of(changed, 0.1)


def _pneumothorax(a, v, u, an, dome, f: FindingSpec, edge):
    """Air between the chest wall and a lung collapsed towards the lower hilum: the region has no
    lung markings, and the collapsed lung's edge is the visceral pleural line."""
    collapse = 0.16 if f.severity == "small" else 0.32
    ca, cv = 0.2, 0.5  # the lung falls away from the apex and the lateral wall, not from the dome
    k = 1.0 / (1.0 - collapse)
    lung_side = _lung_weight(a, v, an, dome, edge) * _side(u, f.location)
    collapsed = _lung_weight(ca + (a - ca) * k, cv + (v - cv) * k, an, dome, edge * k)
    region = lung_side * (1.0 - collapsed)
    line = 4.0 * collapsed * (1.0 - collapsed) * lung_side
    return region, line


def _effusion(a, v, u, an, dome, f: FindingSpec):
    """Fluid filling the base up to a meniscus that climbs the lateral chest wall."""
    height, meniscus = {"small": (0.14, 0.1), "moderate": (0.32, 0.14), "large": (0.58, 0.18)}[f.severity]
    level = dome - height - meniscus * ((a - 0.15) * (1 / 0.7)) ** 2
    return bump((v - level) * (1 / 0.08)) * _side(u, f.location)


def _edema(a, v, rho2, an, dome, f: FindingSpec, edge):
    """Bat-wing perihilar haze (compact: cut where the Gaussian falls below 30%) and, from moderate
    on, Kerley B lines: short horizontal septal lines at the lateral bases."""
    amp, sigma, kerley = {"mild": (0.1, 0.24, 0.0), "moderate": (0.16, 0.29, 0.08), "severe": (0.25, 0.35, 0.11)}[f.severity]
    haze = amp * bump((np.exp(rho2 * (-0.5 / sigma**2)) - 0.3) * 2.0)
    if kerley:
        period = 0.045
        t = v * (1 / period)
        line = ramp(max(0.004, 0.5 * edge) - np.abs(t - np.round(t)) * period, edge)
        lateral, *_ = _lung_margins(a, v, an, dome)
        haze = haze + kerley * line * ramp(0.12 - lateral, edge) * bump(v * 8.0)
    return haze


def _consolidation(fr: Frame, theta, f: FindingSpec, size: int) -> np.ndarray:
    """A mottled airspace patch with an irregular border; optional air bronchograms (dark branching
    airways inside, radiating from the hilum)."""
    out = np.zeros(fr.u.shape, np.float32)
    (cu, cv), (rx, ry) = f.params["centre"], f.params["radii"]
    win = fr.window([(cu, cv)], 1.35 * max(rx, ry))
    if win is None:
        return out
    mottle = texture(size, 0.03, f.params["texture"])[win]
    fine = texture(size, 0.01, f.params["fine"])[win]
    q = ((fr.u[win] - cu) / rx) ** 2 + ((fr.v[win] - cv) / ry) ** 2
    w = bump((1.0 - q + 0.35 * mottle) * 2.5)
    dens = 0.24 * w * (0.85 + 0.15 * fine)
    if f.params["bronchograms"]:
        airway = 1.0 - np.abs(np.sin(theta[win] * 34.0 + 1.5 * mottle))
        airway = airway**8 * bump((w - 0.55) * 3.0)
        dens -= 0.1 * airway
    out[win] = dens
    return out


def _mass(fr: Frame, f: FindingSpec) -> np.ndarray:
    """A lobulated round opacity: radius modulated by two harmonics of the angle."""
    out = np.zeros(fr.u.shape, np.float32)
    (cu, cv), r0 = f.params["centre"], f.params["radius"]
    win = fr.window([(cu, cv)], 1.35 * r0)
    if win is None:
        return out
    du, dv = fr.u[win] - cu, fr.v[win] - cv
    ang = np.arctan2(dv, du)
    p1, p2 = f.params["lobulation"]
    radius = r0 * (1.0 + 0.16 * np.sin(3 * ang + p1) + 0.1 * np.sin(5 * ang + p2))
    out[win] = 0.34 * ramp(radius - np.sqrt(du * du + dv * dv), fr.edge)
    return out


def render(study: Study, size: int) -> Rendering:
    """Pixels and per-finding masks of a study: a pure function of (study, size).

    One function on purpose, over the 80-line guideline: it is a painter's script in which each layer is
    drawn over the previous one and shares its coordinate grids; split into functions, every step would
    take and return the same half-dozen arrays and the drawing order would be harder to follow."""
    an, nu = study.anatomy, study.nuisance
    fr = Frame(size, nu["cx"], nu["cy"], nu["scale"] * an["habitus"], nu["angle"])
    u, v, e = fr.u, fr.v, fr.edge
    a = np.abs(u)  # left and right structures are mirror images, drawn in one pass
    find = {f.name: f for f in study.findings}
    weights: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}

    # Soft tissue, thinner (darker) towards the axillae; air outside the body.
    body = ramp(0.97 + 0.03 * v - a, e)
    img = mix(np.float32(0.03), 0.5 - 0.12 * a * a, body)

    # Lungs: dark air with vessel markings radiating from the hila.
    inspiration = nu["inspiration"] + (0.05 if study.view == "AP" else 0.0)  # supine films: higher domes
    dome = np.where(u < 0, np.float32(an["dome_right"] - inspiration), np.float32(an["dome_left"] - inspiration))
    lung = _lung_weight(a, v, an, dome, e)
    da, dv = a - HILUM[0], v - HILUM[1]
    rho2 = da * da + dv * dv
    theta = np.arctan2(dv, da)
    vessel_tex = texture(size, 0.04, an["vessel_texture"])
    ridge = 1.0 - np.abs(np.sin(theta * 26.0 + 1.6 * vessel_tex))
    ridge *= ridge
    ridge *= ridge
    markings = (0.11 * ridge + 0.02 * texture(size, 0.008, nu["grain"])) / (1.0 + 6.0 * rho2)
    lung_val = 0.16 + 0.12 * np.exp(rho2 * (-1 / (2 * 0.08**2))) + markings
    if f := find.get("Pneumothorax"):
        region, line = _pneumothorax(a, v, u, an, dome, f, e)
        lung_val = lung_val - (markings + 0.05) * region + 0.25 * line
        weights[f.name] = np.maximum(region, line)
    img = mix(img, lung_val, lung)

    # Opacities inside the lungs add density there and nowhere else.
    opacity = np.zeros_like(img)
    if f := find.get("Nodule"):
        w = np.zeros_like(img)
        stamp_ellipse(w, fr, f.params["centre"], (f.params["radius"],) * 2, strength=0.3 if f.severity == "small" else 0.34)
        weights[f.name] = w
    if f := find.get("Mass"):
        weights[f.name] = _mass(fr, f)
    if f := find.get("Consolidation"):
        weights[f.name] = _consolidation(fr, theta, f, size)
    if f := find.get("Atelectasis"):
        w = np.zeros_like(img)
        thick = 0.024 if f.severity == "mild" else 0.042
        stamp_ellipse(w, fr, f.params["centre"], (f.params["length"], thick), f.params["angle"], strength=0.26)
        weights[f.name] = w
    if f := find.get("Edema"):
        weights[f.name] = _edema(a, v, rho2, an, dome, f, e)
    for name in ("Nodule", "Mass", "Consolidation", "Atelectasis", "Edema"):
        if name in weights:
            weights[name] = weights[name] * lung
            opacity += weights[name]
    img += opacity

    if f := find.get("Pleural Effusion"):
        fluid = _effusion(a, v, u, an, dome, f) * lung
        img = mix(img, 0.55, fluid)
        weights[f.name] = fluid

    # Mediastinum, trachea, aortic knob and heart.
    med_half = an["lung_medial"] + 0.05 * np.clip((v + 0.4) * 1.25, 0.0, 1.0)
    img = mix(img, 0.55, ramp(med_half - a, e))
    img -= 0.17 * ramp(0.035 - a, e) * ramp(CARINA_V - v, e)
    knob = np.zeros_like(img)
    stamp_ellipse(knob, fr, (0.12, -0.42), (0.075, 0.065))
    img = mix(img, 0.55, knob)
    hu, hv, hx, hy = _heart(an, study.view, _enlargement(find.get("Cardiomegaly")))
    heart = np.zeros_like(img)
    stamp_ellipse(heart, fr, (hu, hv), (hx, hy), an["heart_tilt"])
    img = mix(img, 0.57, heart)
    if f := find.get("Cardiomegaly"):
        weights[f.name] = heart
    if an["stomach_gas"] > 0.03:  # the gastric bubble under the left dome
        bubble = np.zeros_like(img)
        stamp_ellipse(bubble, fr, (0.42, an["dome_left"] - inspiration + 0.1), (an["stomach_gas"] * 1.4, an["stomach_gas"]))
        img = mix(img, 0.3, bubble)

    # Bones: spine, ribs (with the fracture), clavicles.
    ribs, phase = _ribs(a, v, an, e)
    ribs *= ramp(dome + 0.1 - v, 0.08)  # lower ribs fade into the abdomen's soft tissue
    if f := find.get("Fracture"):
        masks[f.name] = _fracture(ribs, phase, fr, an, f)
    clavicles = np.zeros_like(img)
    clav_v = -0.82 - (0.05 if study.view == "AP" else 0.0)
    for s in (-1.0, 1.0):
        stamp_polyline(clavicles, fr, [(s * 0.12, clav_v + 0.07), (s * 0.38, clav_v), (s * 0.7, clav_v - 0.08)], 0.045)
    spine = ramp(0.07 - a, e) * (0.04 + 0.015 * np.cos(v * 57.0))
    img += 0.065 * ribs + 0.1 * clavicles + spine

    if f := find.get("Support Devices"):
        tubes = np.zeros_like(img)
        for device in f.params["devices"]:
            stamp_polyline(tubes, fr, device["path"], device["width"])
        img = mix(img, 0.95, tubes)
        weights[f.name] = tubes

    # Acquisition: exposure, gamma and quantum noise, point-wise.
    img = np.clip(img * nu["gain"] + nu["offset"], 0.0, 1.0) ** nu["gamma"]
    img += nu["noise"] * white_noise(size, study.noise_seed)
    for name, w in weights.items():
        masks[name] = mask_of(w)
    return Rendering(to_uint8(img), masks)


def _enlargement(f: FindingSpec | None) -> float:
    return 1.0 if f is None else {"mild": 1.18, "moderate": 1.32, "severe": 1.46}[f.severity]


def write_texts(study: Study) -> tuple[dict[str, str], str]:
    """Texts at every granularity (coarse to fine) and the report; see ``cxr_text``."""
    return cxr_text.write(study)


def phrases(study: Study) -> dict[str, str]:
    """Each finding's sentence of the description (its grounding phrase); see ``cxr_text``."""
    return cxr_text.phrases(study)
