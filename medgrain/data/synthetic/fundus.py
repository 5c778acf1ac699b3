"""Colour fundus photographs after MGLL's fundus setting: diabetic retinopathy by grade, diabetic
macular edema, age-related macular degeneration, glaucoma and pathologic myopia.

Coordinates: (u, v) with the field of view as the unit disc, v down; the macula near the centre and
the optic disc nasal to it (image right for a right eye, OD). Vessels are curves in polar
coordinates around the disc: the temporal arcades bend around the macula. Every lesion is a compact
stamp with its own colour, composited in anatomical order; illumination, white balance, gamma and
noise come last and point-wise, so a finding changes the pixels of its mask only.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from medgrain.data.synthetic import fundus_text
from medgrain.data.synthetic.common import (
    GRANULARITIES,
    FindingSpec,
    Frame,
    Rendering,
    Study,
    bump,
    draw_seed,
    draw_texture_key,
    mask_of,
    patient_rng,
    pick,
    ramp,
    record_rng,
    shift_grade,
    stamp_ellipse,
    texture,
    to_uint8,
    white_noise,
)

DOMAIN = "fundus"
FINDINGS = (
    "Age-related Macular Degeneration", "Diabetic Macular Edema", "Diabetic Retinopathy", "Glaucoma", "Pathologic Myopia",
)
__all__ = ["DOMAIN", "FINDINGS", "GRANULARITIES", "phrases", "sample_study", "render", "write_texts"]

DR_GRADES = ("mild non-proliferative", "moderate non-proliferative", "severe non-proliferative", "proliferative")
GRADES = ("mild", "moderate", "severe")
AMD_STAGES = ("early", "intermediate", "late")
GLAUCOMA_STAGES = ("early", "moderate", "advanced")
CUP_TO_DISC = {"early": (0.62, 0.68), "moderate": (0.7, 0.78), "advanced": (0.8, 0.9)}
SCENARIOS = (("healthy", 0.4), ("diabetic", 0.3), ("macular degeneration", 0.12), ("glaucoma", 0.1), ("myopia", 0.08))

# Colours (linear RGB in [0, 1]).
DISC = (0.98, 0.74, 0.5)
CUP = (1.0, 0.97, 0.9)
VEIN = (0.42, 0.06, 0.04)
ARTERY = (0.6, 0.12, 0.07)
BLOOD = (0.4, 0.03, 0.02)
EXUDATE = (1.0, 0.92, 0.42)
DRUSEN = (0.95, 0.82, 0.48)
ATROPHY = (0.96, 0.86, 0.68)
CHOROID_GAPS = (0.36, 0.12, 0.06)  # the dark spaces between choroidal vessels in a tessellated fundus


# ----------------------------------------------------------------------------- sampling


def _vessel_tree(rng) -> list[tuple]:
    """(kind, phi0, slope, curvature, start, end, width) per vessel, in polar coordinates around
    the disc with phi = 0 pointing at the fovea and phi < 0 superior. Arcades first, then branches
    that leave a parent at ``start`` and diverge from it."""
    tree = []
    for sign in (-1.0, 1.0):  # superior, inferior
        for kind, dphi, width in (("vein", 0.0, 0.021), ("artery", 0.14, 0.015)):
            phi0 = sign * (1.42 + dphi + rng.uniform(-0.08, 0.08))
            slope, curv = -sign * rng.uniform(2.1, 2.5), sign * rng.uniform(1.3, 1.7)
            tree.append((kind, phi0, slope, curv, 0.0, rng.uniform(1.0, 1.3), width))
            for towards_macula in (True, False):  # temporal branches
                start = rng.uniform(0.22, 0.55)
                phi_s = phi0 + slope * start + curv * start * start
                turn = -sign * rng.uniform(1.8, 3.0) if towards_macula else sign * rng.uniform(0.8, 1.6)
                tree.append((kind, phi_s - turn * start, turn, 0.0, start, start + rng.uniform(0.25, 0.45), width * 0.6))
            nasal0 = sign * (1.8 + dphi + rng.uniform(-0.1, 0.1))
            tree.append((kind, nasal0, sign * rng.uniform(0.5, 1.0), 0.0, 0.0, rng.uniform(0.6, 0.9), width * 0.8))
    return tree


def _anatomy(rng) -> dict:
    eye = "OD" if rng.random() < 0.5 else "OS"
    side = 1.0 if eye == "OD" else -1.0
    return {
        "eye": eye,
        "disc_u": side * rng.uniform(0.52, 0.58), "disc_v": rng.uniform(-0.06, 0.0),
        "disc_r": rng.uniform(0.1, 0.12), "disc_oval": rng.uniform(1.03, 1.12),
        "fovea_u": -side * rng.uniform(0.0, 0.04), "fovea_v": rng.uniform(0.0, 0.04),
        "cup_to_disc": rng.uniform(0.2, 0.42),
        "pigment": (rng.uniform(0.72, 0.88), rng.uniform(0.28, 0.4), rng.uniform(0.1, 0.18)),
        "choroid_texture": draw_texture_key(rng),
        "vessels": _vessel_tree(rng),
    }


def _plan(rng, scenario: str) -> list[dict]:
    """The findings a scenario brings, with their baseline grade and their chance on a visit."""

    def P(name, severity, chance=1.0):
        return {"name": name, "severity": severity, "chance": chance}

    if scenario == "diabetic":
        grade = pick(rng, DR_GRADES, (0.3, 0.35, 0.2, 0.15))
        dme_chance = (0.15, 0.35, 0.5, 0.5)[DR_GRADES.index(grade)]
        return [P("Diabetic Retinopathy", grade), P("Diabetic Macular Edema", pick(rng, GRADES, (0.4, 0.35, 0.25)), dme_chance)]
    if scenario == "macular degeneration":
        return [P("Age-related Macular Degeneration", pick(rng, AMD_STAGES, (0.4, 0.4, 0.2))),
                P("Glaucoma", pick(rng, GLAUCOMA_STAGES), 0.1)]
    if scenario == "glaucoma":
        return [P("Glaucoma", pick(rng, GLAUCOMA_STAGES, (0.4, 0.35, 0.25)))]
    if scenario == "myopia":
        return [P("Pathologic Myopia", pick(rng, GRADES, (0.5, 0.3, 0.2))), P("Glaucoma", pick(rng, GLAUCOMA_STAGES), 0.15)]
    return []


def _spot(rng, an, centre, r_min, r_max, avoid_macula=0.0):
    """A point within [r_min, r_max] of ``centre``, inside the field and off the disc."""
    for _ in range(64):
        ang, r = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(r_min**2, r_max**2))
        u, v = centre[0] + r * math.cos(ang), centre[1] + r * math.sin(ang)
        off_disc = math.hypot(u - an["disc_u"], v - an["disc_v"]) > an["disc_r"] * 1.6
        off_macula = math.hypot(u - an["fovea_u"], v - an["fovea_v"]) > avoid_macula
        if u * u + v * v < 0.88**2 and off_disc and off_macula:
            return float(u), float(v)
    return float(centre[0]), float(centre[1])


def _retinopathy(rng, an, grade: str) -> dict:
    """Lesions by grade: microaneurysms; haemorrhages (dot-blot, flame) from moderate; many in all
    quadrants when severe; neovascularisation when proliferative. Exudates stay outside the macula
    (exudates there are macular edema, a finding of its own)."""
    g = DR_GRADES.index(grade)
    fovea = (an["fovea_u"], an["fovea_v"])
    n_ma = int(rng.integers(*((4, 10), (10, 20), (18, 32), (18, 32))[g]))
    n_hem = int(rng.integers(*((0, 1), (4, 10), (14, 26), (14, 26))[g]))
    n_exu = int(rng.integers(*((0, 1), (2, 8), (4, 12), (4, 12))[g]))
    reach = 0.6 if g < 2 else 0.86
    lesions = []
    for _ in range(n_ma):
        u, v = _spot(rng, an, fovea, 0.05, reach)
        lesions.append(("blood", u, v, rng.uniform(0.006, 0.01), None, 0.0))
    for _ in range(n_hem):
        u, v = _spot(rng, an, fovea, 0.08, reach)
        if rng.random() < 0.4:  # flame: along the nerve fibres, i.e. radially from the disc
            ang = math.atan2(v - an["disc_v"], u - an["disc_u"])
            lesions.append(("blood", u, v, rng.uniform(0.025, 0.04), rng.uniform(0.008, 0.012), ang))
        else:
            lesions.append(("blood", u, v, rng.uniform(0.012, 0.026), None, 0.0))
    for _ in range(n_exu):
        cu, cv = _spot(rng, an, fovea, 0.32, reach, avoid_macula=0.32)
        for _ in range(int(rng.integers(1, 5))):
            u, v = _spot(rng, an, (cu, cv), 0.0, 0.04, avoid_macula=0.3)
            lesions.append(("exudate", u, v, rng.uniform(0.008, 0.016), None, 0.0))
    new_vessels, sites = [], []
    if grade == "proliferative":
        sites = pick(rng, (["at the disc"], ["elsewhere"], ["at the disc", "elsewhere"]))
        for site in sites:
            if site == "at the disc":
                c = (an["disc_u"] + rng.uniform(-0.05, 0.05), an["disc_v"] + rng.uniform(-0.05, 0.05))
            else:
                c = _spot(rng, an, fovea, 0.35, 0.75, avoid_macula=0.3)
            new_vessels.append((c[0], c[1], rng.uniform(0.06, 0.09), rng.uniform(0, 6.3), rng.uniform(0, 6.3)))
        if rng.random() < 0.5:  # preretinal (boat-shaped) haemorrhage
            u, v = _spot(rng, an, fovea, 0.35, 0.7, avoid_macula=0.3)
            lesions.append(("blood", u, v, rng.uniform(0.05, 0.07), rng.uniform(0.03, 0.04), rng.uniform(-0.3, 0.3)))
    location = "posterior pole" if g < 2 else "four quadrants"
    return {"lesions": lesions, "new_vessels": new_vessels, "new_vessels_at": sites, "location": location}


def _macular_edema(rng, an, grade: str) -> dict:
    """Hard exudates around the fovea: further out and fewer when mild, reaching the centre when severe."""
    r_min, r_max, count = {"mild": (0.12, 0.24, (4, 9)), "moderate": (0.06, 0.22, (9, 16)), "severe": (0.0, 0.18, (16, 28))}[grade]
    fovea = (an["fovea_u"], an["fovea_v"])
    lesions = []
    for _ in range(int(rng.integers(*count))):
        u, v = _spot(rng, an, fovea, r_min, r_max)
        lesions.append(("exudate", u, v, rng.uniform(0.008, 0.018), None, 0.0))
    return {"lesions": lesions}


def _degeneration(rng, an, stage: str) -> dict:
    """Drusen at the macula (few and small when early, many and larger when intermediate); late
    disease adds geographic atrophy, a pale sharply bordered patch at the fovea."""
    fovea = (an["fovea_u"], an["fovea_v"])
    count, (r0, r1) = {"early": ((5, 10), (0.008, 0.014)), "intermediate": ((12, 24), (0.014, 0.028)), "late": ((10, 20), (0.014, 0.028))}[stage]
    drusen = []
    for _ in range(int(rng.integers(*count))):
        u, v = _spot(rng, an, fovea, 0.0, 0.2)
        drusen.append(("drusen", u, v, rng.uniform(r0, r1), None, 0.0))
    params = {"lesions": drusen}
    if stage == "late":
        params["atrophy"] = (fovea[0] + rng.uniform(-0.03, 0.03), fovea[1] + rng.uniform(-0.03, 0.03), rng.uniform(0.06, 0.1), rng.uniform(0.05, 0.08))
    return params


def _myopia(rng, an, grade: str) -> dict:
    """Tessellation (choroidal vessels seen through a thin retina) and temporal peripapillary
    atrophy; moderate adds diffuse chorioretinal atrophy, severe patchy atrophy."""
    params = {"texture": draw_texture_key(rng), "crescent": rng.uniform(1.5, 2.1) + 0.3 * GRADES.index(grade)}
    if grade == "severe":
        fovea = (an["fovea_u"], an["fovea_v"])
        params["patches"] = [(*_spot(rng, an, fovea, 0.05, 0.3), rng.uniform(0.03, 0.06), rng.uniform(0.025, 0.045), rng.uniform(0, 3.1))
                             for _ in range(int(rng.integers(2, 5)))]
    return params


LOCATIONS = {"Diabetic Macular Edema": "macula", "Age-related Macular Degeneration": "macula",
             "Glaucoma": "optic disc", "Pathologic Myopia": "posterior pole"}
GRADE_SCALES = {"Diabetic Retinopathy": DR_GRADES, "Diabetic Macular Edema": GRADES,
                "Age-related Macular Degeneration": AMD_STAGES, "Glaucoma": GLAUCOMA_STAGES, "Pathologic Myopia": GRADES}


def sample_study(seed: int, index: int, patient: int, visit: int) -> Study:
    """Draw one study: the patient's eye, anatomy and disease (from ``(seed, patient)``), this
    visit's grades, lesions and acquisition (from ``(seed, index)``)."""
    prng = patient_rng(seed, patient)
    an = _anatomy(prng)
    an["scenario"] = pick(prng, [s for s, _ in SCENARIOS], [p for _, p in SCENARIOS])
    plan = _plan(prng, an["scenario"])
    rng = record_rng(seed, index)
    findings = []
    for p in plan:
        if rng.random() >= p["chance"]:
            continue
        name = p["name"]
        grade = shift_grade(rng, GRADE_SCALES[name], p["severity"], 0.3)
        if name == "Diabetic Retinopathy":
            params = _retinopathy(rng, an, grade)
            location = params.pop("location")
        else:
            location = LOCATIONS[name]
            if name == "Diabetic Macular Edema":
                params = _macular_edema(rng, an, grade)
            elif name == "Age-related Macular Degeneration":
                params = _degeneration(rng, an, grade)
            elif name == "Glaucoma":
                params = {"cup_to_disc": rng.uniform(*CUP_TO_DISC[grade])}
            else:
                params = _myopia(rng, an, grade)
        findings.append(FindingSpec(name, location, grade, params))
    findings.sort(key=lambda f: FINDINGS.index(f.name))
    nuisance = {
        "cx": rng.uniform(-0.03, 0.03), "cy": rng.uniform(-0.03, 0.03), "field": rng.uniform(0.9, 0.97),
        "angle": rng.uniform(-0.1, 0.1), "gain_r": rng.uniform(0.9, 1.1), "gain_g": rng.uniform(0.88, 1.12),
        "gain_b": rng.uniform(0.85, 1.15), "gamma": rng.uniform(0.85, 1.2), "noise": rng.uniform(0.003, 0.01),
        "tilt_u": rng.uniform(-0.15, 0.15), "tilt_v": rng.uniform(-0.15, 0.15),
    }
    return Study(index, patient, visit, an["eye"], an, nuisance, tuple(findings), draw_seed(rng), draw_seed(rng))


# ----------------------------------------------------------------------------- rendering


def _paint(img: np.ndarray, colour, weight: np.ndarray) -> None:
    """Paint ``colour`` over the (H, W, 3) image with opacity ``weight``, in place and only where the
    weight is non-zero (most layers cover a small part of the field)."""
    idx = np.flatnonzero(weight)
    if idx.size:
        pixels = img.reshape(-1, 3)
        picked = pixels[idx]
        picked += (np.asarray(colour, np.float32) - picked) * weight.reshape(-1)[idx, None]
        pixels[idx] = picked


def _draw_vessels(fr: Frame, rho, phi, an, veins, arteries):
    """Each vessel is phi = phi0 + slope*r + curv*r^2 around the disc; the distance to it is the
    angular offset times r, shortened where the curve runs across the radius."""
    side = 1.0 if an["eye"] == "OD" else -1.0
    for kind, phi0, slope, curv, start, end, width in an["vessels"]:
        rs = np.linspace(start, end, 9)
        angs = phi0 + slope * rs + curv * rs * rs
        pts = [(an["disc_u"] - side * r * math.cos(t), an["disc_v"] + r * math.sin(t)) for r, t in zip(rs, angs)]
        win = fr.window(pts, width)
        if win is None:
            continue
        r, ph = rho[win], phi[win]
        turning = slope + curv * r
        tilt = r * (turning + curv * r)  # r * dphi/dr: how far the vessel runs across the radius
        dist = r * np.abs(ph - phi0 - turning * r) / np.sqrt(1.0 + tilt * tilt)
        taper = 0.55 / (end - start)  # vessels narrow to 45% of their width at their end
        half = (0.5 * width * (1.0 + taper * start)) - (0.5 * width * taper) * r
        w = ramp(half - dist, fr.edge) * np.clip((end - r) * 20.0, 0.0, 1.0)
        if start > 0:  # a branch starts on its parent
            w *= ramp(r - start, fr.edge)
        canvas = veins if kind == "vein" else arteries
        np.maximum(canvas[win], w, out=canvas[win])


def _stamp_lesions(canvases: dict, fr: Frame, lesions) -> None:
    for kind, u, v, rx, ry, ang in lesions:
        soft = 0.6 if kind == "drusen" else 0.0
        stamp_ellipse(canvases[kind], fr, (u, v), (rx, rx if ry is None else ry), ang, soft=soft)


def _new_vessels(canvas: np.ndarray, fr: Frame, params) -> None:
    """Fine tortuous vessels in a small disc-shaped net: ridges of a doubly-warped sine."""
    for cu, cv, r, p1, p2 in params:
        win = fr.window([(cu, cv)], r)
        if win is None:
            continue
        du, dv = fr.u[win] - cu, fr.v[win] - cv
        wave = 1.0 - np.abs(np.sin(du * 70.0 + 2.2 * np.sin(dv * 45.0 + p1) + p2))
        wave = wave**6 * bump((1.0 - np.sqrt(du * du + dv * dv) / r) * 4.0)
        np.maximum(canvas[win], wave, out=canvas[win])


def render(study: Study, size: int) -> Rendering:
    """Pixels (H, W, 3) and per-finding masks of a study: a pure function of (study, size).

    One function on purpose, over the 80-line guideline: it is a painter's script in which each layer is
    drawn over the previous one and shares its coordinate grids; split into functions, every step would
    take and return the same half-dozen arrays and the drawing order would be harder to follow."""
    an, nu = study.anatomy, study.nuisance
    fr = Frame(size, nu["cx"], nu["cy"], nu["field"], nu["angle"])
    u, v, e = fr.u, fr.v, fr.edge
    find = {f.name: f for f in study.findings}
    weights: dict[str, np.ndarray] = {}
    zeros = partial(np.zeros, u.shape, np.float32)

    # Retina: orange-red, darker towards the periphery, with a faint choroidal texture.
    r2 = u * u + v * v
    shade = (1.0 - 0.42 * r2) * (1.0 + 0.035 * texture(size, 0.01, an["choroid_texture"]))
    img = shade[..., None] * np.asarray(an["pigment"], np.float32)

    if f := find.get("Pathologic Myopia"):
        gaps, diffuse, white = _myopic_fundus(fr, an, f, size)
        _paint(img, CHOROID_GAPS, gaps)
        _paint(img, (0.9, 0.62, 0.36), diffuse)
        _paint(img, ATROPHY, white)
        weights[f.name] = np.maximum(np.maximum(gaps, diffuse), white)

    # Macula: darker, with a bright foveal reflex.
    dfu, dfv = u - an["fovea_u"], v - an["fovea_v"]
    df2 = dfu * dfu + dfv * dfv
    img *= (1.0 - 0.32 * np.exp(df2 * (-1.0 / (2 * 0.1**2))))[..., None]
    reflex = zeros()
    stamp_ellipse(reflex, fr, (an["fovea_u"], an["fovea_v"]), (0.012, 0.012), soft=0.8, strength=0.5)
    _paint(img, (0.95, 0.6, 0.35), reflex)

    canvases = {"blood": zeros(), "exudate": zeros(), "drusen": zeros()}
    if f := find.get("Age-related Macular Degeneration"):
        w = zeros()
        if "atrophy" in f.params:
            au, av, rx, ry = f.params["atrophy"]
            stamp_ellipse(w, fr, (au, av), (rx, ry))
            _paint(img, ATROPHY, 0.75 * w)
        own = {"drusen": zeros()}
        _stamp_lesions(own, fr, f.params["lesions"])
        canvases["drusen"] = np.maximum(canvases["drusen"], own["drusen"])
        weights[f.name] = np.maximum(w, own["drusen"])
    _paint(img, DRUSEN, 0.85 * canvases["drusen"])

    # Optic disc with its cup; glaucoma enlarges the cup.
    disc = zeros()
    oval = an["disc_oval"]
    stamp_ellipse(disc, fr, (an["disc_u"], an["disc_v"]), (an["disc_r"], an["disc_r"] * oval))
    _paint(img, DISC, disc)
    glaucoma = find.get("Glaucoma")
    ratio = glaucoma.params["cup_to_disc"] if glaucoma else an["cup_to_disc"]
    cup = zeros()
    side = 1.0 if an["eye"] == "OD" else -1.0
    cup_r = an["disc_r"] * ratio
    cup_u = an["disc_u"] - side * 0.1 * an["disc_r"] * (1.0 - ratio)  # cups sit temporally, and fill the disc as they grow
    stamp_ellipse(cup, fr, (cup_u, an["disc_v"]), (cup_r, cup_r * oval), soft=0.2)
    _paint(img, CUP, cup)
    if glaucoma:
        weights[glaucoma.name] = disc

    # Lesions of the retinopathies under the vessels, exudates on top.
    own_dr, own_dme = None, None
    if f := find.get("Diabetic Retinopathy"):
        own_dr = {"blood": zeros(), "exudate": zeros()}
        _stamp_lesions(own_dr, fr, f.params["lesions"])
        _new_vessels(own_dr["blood"], fr, f.params["new_vessels"])
    if f := find.get("Diabetic Macular Edema"):
        own_dme = {"exudate": zeros()}
        _stamp_lesions(own_dme, fr, f.params["lesions"])
    for own in (own_dr, own_dme):
        for kind, w in (own or {}).items():
            np.maximum(canvases[kind], w, out=canvases[kind])
    _paint(img, BLOOD, 0.9 * canvases["blood"])

    # Vessels: polar coordinates around the disc, phi = 0 towards the fovea, phi < 0 superior.
    du, dv = (u - an["disc_u"]) * -side, v - an["disc_v"]
    rho, phi = np.sqrt(du * du + dv * dv), np.arctan2(dv, du)
    veins, arteries = zeros(), zeros()
    _draw_vessels(fr, rho, phi, an, veins, arteries)
    _paint(img, ARTERY, 0.85 * arteries)
    _paint(img, VEIN, 0.85 * veins)
    _paint(img, EXUDATE, 0.95 * canvases["exudate"])
    if own_dr:
        weights["Diabetic Retinopathy"] = np.maximum(own_dr["blood"], own_dr["exudate"])
    if own_dme:
        weights["Diabetic Macular Edema"] = own_dme["exudate"]

    # Acquisition: uneven illumination, white balance, gamma, noise; black outside the field of view.
    fov = ramp(1.0 - np.sqrt(r2), e)
    light = (1.0 + nu["tilt_u"] * u + nu["tilt_v"] * v) * fov
    gains = np.asarray([nu["gain_r"], nu["gain_g"], nu["gain_b"]], np.float32)
    img = np.clip(img * light[..., None] * gains, 0.0, 1.0) ** nu["gamma"]
    img += white_noise(size, study.noise_seed, 3) * (nu["noise"] * (0.3 + 0.7 * fov))[..., None]
    masks = {name: mask_of(w * fov) for name, w in weights.items()}
    return Rendering(to_uint8(img), masks)


def _myopic_fundus(fr: Frame, an, f: FindingSpec, size: int) -> np.ndarray:
    """Weights (3, H, W) of the myopic changes: tessellation gaps, diffuse atrophy, white atrophy
    (peripapillary crescent and patches)."""
    u, v = fr.u, fr.v
    g = GRADES.index(f.severity)
    mid_u, mid_v = 0.5 * (an["disc_u"] + an["fovea_u"]), 0.5 * (an["disc_v"] + an["fovea_v"])
    pole = bump((0.8 - np.sqrt((u - mid_u) ** 2 + (v - mid_v) ** 2)) * 2.5)  # posterior pole, compact
    stripes = bump((np.abs(texture(size, 0.025, f.params["texture"])) - 0.3) * 2.5)
    out = np.zeros((3,) + u.shape, np.float32)
    out[0] = (0.45 + 0.15 * g) * stripes * pole
    if g >= 1:
        out[1] = 0.35 * bump((0.45 - np.sqrt((u - mid_u) ** 2 + (v - mid_v) ** 2)) * 3.0)
    side = 1.0 if an["eye"] == "OD" else -1.0
    du, dv = (u - an["disc_u"]) * -side, v - an["disc_v"]
    rho = np.sqrt(du * du + (dv / an["disc_oval"]) ** 2)
    crescent = ramp(an["disc_r"] * f.params["crescent"] - rho, fr.edge) * bump(du / (an["disc_r"] * 0.6) + 0.3)
    out[2] = crescent
    for cu, cv, rx, ry, ang in f.params.get("patches", ()):
        stamp_ellipse(out[2], fr, (cu, cv), (rx, ry), ang)
    return out


def write_texts(study: Study) -> tuple[dict[str, str], str]:
    """Texts at every granularity (coarse to fine) and the report; see ``fundus_text``."""
    return fundus_text.write(study)


def phrases(study: Study) -> dict[str, str]:
    """Each finding's sentence of the description (its grounding phrase); see ``fundus_text``."""
    return fundus_text.phrases(study)
