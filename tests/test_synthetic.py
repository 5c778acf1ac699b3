"""The synthetic datasets: determinism, manifest and splits, findings that change their masks'
pixels (by ablation), texts that follow the labels, realistic label frequencies."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from medgrain.data.manifest import read_manifest
from medgrain.data.synthetic import (
    DOMAINS,
    FINDINGS,
    GRANULARITIES,
    cxr,
    cxr_text,
    fundus,
    fundus_text,
    generate,
)
from medgrain.data.synthetic.common import assign_splits, assign_visits

MODULES = {"cxr": (cxr, cxr_text), "fundus": (fundus, fundus_text)}
NEGATION_CUES = ("no ", "without", "normal", "not ", "healthy")


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=DOMAINS)
def generated(request, tmp_path_factory):
    """The same small dataset written with one worker and with two."""
    domain = request.param
    one = tmp_path_factory.mktemp(f"{domain}-w1")
    two = tmp_path_factory.mktemp(f"{domain}-w2")
    generate(domain, one, n=24, seed=3, size=64, workers=1, progress=False)
    generate(domain, two, n=24, seed=3, size=64, workers=2, progress=False)
    return domain, one, two


def test_same_seed_same_bytes_whatever_the_workers(generated):
    _, one, two = generated
    a, b = _files(one), _files(two)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_different_seed_different_data(generated, tmp_path):
    domain, one, _ = generated
    generate(domain, tmp_path, n=24, seed=4, size=64, progress=False)
    a, b = _files(one), _files(tmp_path)
    assert a["manifest.jsonl"] != b["manifest.jsonl"]
    assert a["images/" + domain + "-000000.png"] != b["images/" + domain + "-000000.png"]


def test_manifest_validates_and_files_match(generated):
    domain, root, _ = generated
    manifest = read_manifest(root / "manifest.jsonl")
    assert len(manifest) == 24 and not manifest.skipped
    assert manifest.granularities == list(GRANULARITIES)
    for r in manifest.records:
        assert r.domain == domain and r.patient_id and r.meta["seed"] == 3
        with Image.open(manifest.resolve(r.image)) as im:
            assert im.mode == ("L" if domain == "cxr" else "RGB") and im.size == (64, 64)
        assert [f.name for f in r.findings] == r.labels
        for f in r.findings:
            mask = np.asarray(Image.open(manifest.resolve(f.mask)))
            assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.any()
            ys, xs = np.nonzero(mask)
            assert f.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            # the grounding phrase is the finding's own sentence of the description, word for word
            assert f.phrase and f.phrase in r.texts["description"]
        assert len({f.phrase for f in r.findings}) == len(r.findings)


def test_splits_by_patient(generated):
    _, root, _ = generated
    records = read_manifest(root / "manifest.jsonl").records
    split_of = defaultdict(set)
    for r in records:
        split_of[r.patient_id].add(r.split)
    assert all(len(s) == 1 for s in split_of.values())
    assert {r.split for r in records} == {"train", "valid", "test"}
    assert all(1 <= k <= 3 for k in Counter(r.patient_id for r in records).values())


@pytest.mark.parametrize("n", [10, 11, 13, 17, 40, 1000])
def test_every_split_non_empty_from_ten_records(n):
    for seed in range(5):
        visits = assign_visits(n, seed)
        splits = assign_splits(visits, (0.8, 0.1, 0.1), seed)
        assert set(splits) == {"train", "valid", "test"}
        assert len({(p, s) for (p, _), s in zip(visits, splits)}) == len({p for p, _ in visits})
        if n >= 1000:
            assert 0.7 < splits.count("train") / n < 0.85


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="known domains: cxr, fundus"):
        generate("mri", tmp_path, n=4)
    with pytest.raises(ValueError, match="n must be"):
        generate("cxr", tmp_path, n=0)
    with pytest.raises(ValueError, match="size must be"):
        generate("cxr", tmp_path, n=4, size=16)
    with pytest.raises(ValueError, match="split"):
        generate("cxr", tmp_path, n=4, split=(0.8, 0.1, 0.2))


# ----------------------------------------------------------------------------- findings and pixels


def _study_with(module, name, start=0):
    for i in range(start, start + 3000):
        s = module.sample_study(0, i, i, 0)
        if s.finding(name):
            return s
    raise AssertionError(f"no study with {name}")


def _change(a, b):
    """Absolute change per pixel, averaged over colour channels."""
    d = np.abs(a.astype(np.float32) - b.astype(np.float32))
    return d if d.ndim == 2 else d.mean(axis=-1)


@pytest.mark.parametrize("domain,name", [(d, n) for d in DOMAINS for n in FINDINGS[d]])
def test_a_finding_changes_its_mask_and_little_else(domain, name):
    module, _ = MODULES[domain]
    for start in (0, 500):  # two patients per finding
        study = _study_with(module, name, start)
        full = module.render(study, 96)
        without = module.render(study.without(name), 96)
        mask = full.masks[name]
        change = _change(full.image, without.image)
        near = binary_dilation(mask, iterations=2)
        assert mask.any()
        assert change[near].sum() >= 0.9 * change.sum(), f"{name}: change outside its mask"
        assert change[mask].mean() > 3.0, f"{name}: too faint inside its mask"
        assert set(without.masks) == set(full.masks) - {name}


def _centroid(mask):
    ys, xs = np.nonzero(mask)
    return xs.mean() / mask.shape[1], ys.mean() / mask.shape[0]


def test_location_and_severity_change_the_pixels():
    study = _study_with(cxr, "Pleural Effusion")
    f = study.finding("Pleural Effusion")
    area = {}
    for side in ("right", "left"):
        for size in ("small", "moderate", "large"):
            s = replace(study, findings=(replace(f, location=side, severity=size),))
            mask = cxr.render(s, 96).masks["Pleural Effusion"]
            area[side, size] = mask.sum()
            x, _ = _centroid(mask)
            assert (x < 0.5) == (side == "right")  # the patient's right is the image's left
        assert area[side, "small"] < area[side, "moderate"] < area[side, "large"]
    study = _study_with(cxr, "Cardiomegaly")
    f = study.finding("Cardiomegaly")
    hearts = [cxr.render(replace(study, findings=(replace(f, severity=g),)), 96).masks["Cardiomegaly"].sum()
              for g in ("mild", "moderate", "severe")]
    assert hearts[0] < hearts[1] < hearts[2]
    study = _study_with(cxr, "Nodule")
    x, y = _centroid(cxr.render(study, 96).masks["Nodule"])
    lobe = study.finding("Nodule").location
    assert (x < 0.5) == lobe.startswith("right")
    if "upper" in lobe:
        assert y < 0.5
    study = _study_with(fundus, "Glaucoma")
    f = study.finding("Glaucoma")
    images = [fundus.render(replace(study, findings=(replace(f, params={"cup_to_disc": c}),)), 96).image for c in (0.6, 0.9)]
    assert images[1].astype(int).sum() > images[0].astype(int).sum()  # a wider pale cup


# ----------------------------------------------------------------------------- texts


def _studies(domain, n=300, seed=0):
    module, _ = MODULES[domain]
    return [module.sample_study(seed, i, p, v) for i, (p, v) in enumerate(assign_visits(n, seed))]


def _says(text, words):
    return any(w in text.lower() for w in words)


def _says_word(text, words):
    return any(re.search(r"\b" + re.escape(w), text, re.IGNORECASE) for w in words)


@pytest.mark.parametrize("domain", DOMAINS)
def test_texts_follow_the_labels(domain):
    module, text = MODULES[domain]
    for study in _studies(domain, 200):
        texts, report = module.write_texts(study)
        assert list(texts) == list(GRANULARITIES)
        assert (texts["abnormality"] == text.NORMAL) == (not study.labels)
        assert texts["abnormality"] in (text.NORMAL, text.ABNORMAL)
        if not study.labels:
            assert texts["category"] == text.NO_FINDING
        else:
            items = texts["category"].split(", ")
            assert items == sorted(items) and len(items) == len(study.labels)
            assert all(any(name.lower() in item for item in items) for name in study.labels)
        assert report.startswith("FINDINGS: ") and " IMPRESSION: " in report
        for f in study.findings:
            for where in (texts["description"], report):
                assert _says(where, text.SYNONYMS[f.name]), (f.name, where)
                if f.location:
                    for part in f.location.split(" and "):
                        assert _says(where, text.LOCATION_WORDS.get(part, (part,))), (f.location, where)
                if f.severity:
                    assert _says_word(where, text.SEVERITY_WORDS.get(f.severity, (f.severity,))), (f.severity, where)
        absent = [n for n in FINDINGS[domain] if n not in study.labels]
        for sentence in re.split(r"(?<=[.;:])\s+", texts["description"] + " " + report):
            for name in absent:
                if _says(sentence, text.SYNONYMS[name]):
                    assert _says(sentence, NEGATION_CUES), f"{name} asserted in {sentence!r}"


@pytest.mark.parametrize("domain", DOMAINS)
def test_coarse_texts_canonical_fine_texts_varied(domain):
    module, _ = MODULES[domain]
    by_labels = defaultdict(list)
    for study in _studies(domain, 300):
        # a fundus category names the grade too (MGLL's "moderate non-proliferative diabetic retinopathy")
        key = tuple(study.labels) if domain == "cxr" else tuple((f.name, f.severity) for f in study.findings)
        by_labels[key].append(module.write_texts(study))
    for labels, written in by_labels.items():
        assert len({t["category"] for t, _ in written}) == 1
        assert len({t["abnormality"] for t, _ in written}) == 1
        if len(written) >= 6:
            assert len({t["description"] for t, _ in written}) >= 3, labels
            assert len({r for _, r in written}) >= 0.8 * len(written), labels
    study = next(s for s in _studies(domain, 50) if s.labels)
    rewritten = {module.write_texts(replace(study, text_seed=k))[0]["description"] for k in range(12)}
    assert len(rewritten) >= 3


@pytest.mark.parametrize("domain", DOMAINS)
def test_label_frequencies(domain):
    studies = _studies(domain, 300, seed=1)
    normal = sum(not s.labels for s in studies) / len(studies)
    assert 0.3 <= normal <= 0.5
    assert all(1 <= len(s.labels) <= 3 for s in studies if s.labels)
    seen = Counter(name for s in studies for name in s.labels)
    assert set(seen) == set(FINDINGS[domain])
    if domain == "cxr":  # heart failure: edema travels with cardiomegaly
        both = sum({"Edema", "Cardiomegaly"} <= set(s.labels) for s in studies) / len(studies)
        assert both > 1.5 * (seen["Edema"] / len(studies)) * (seen["Cardiomegaly"] / len(studies))
