"""What the synthetic domains share: seeding, patients and splits, drawing primitives, writing
PNGs and records, and the worker pool.

Determinism is the contract: a record depends only on (seed, index) and on its patient
(seed, patient), never on the worker that renders it or on the order of work, so any number of
workers writes byte-identical files. A domain module turns a ``Study`` (everything random about
one image, drawn up front) into pixels with a pure ``render(study, size)``; re-rendering a study
with one finding removed is how the tests check that a finding changes only its mask.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import multiprocessing
import struct
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from medgrain.console import STDERR
from medgrain.data.manifest import SPLITS, Finding, Record, write_manifest

DOMAINS = ("cxr", "fundus")
GRANULARITIES = ("abnormality", "category", "description")

# Second words of the seed sequences, so patient, visit and split streams never meet a record's
# stream [seed, index] (that one has two words, these three or two with a tag no index reaches).
PATIENT_STREAM = 0x70617469
VISITS_STREAM = 0x76697369
SPLIT_STREAM = 0x73706C74
TEXTURE_STREAM = 0x74657874
VISITS_PER_PATIENT = ((1, 2, 3), (0.5, 0.3, 0.2))
PNG_COMPRESS_LEVEL = 1  # zlib level: higher levels cost 1.5-3x the time for ~1-10% smaller files


# ----------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class FindingSpec:
    """One finding as drawn for a study: its name, where, how severe, and its geometry."""

    name: str
    location: str | None = None
    severity: str | None = None
    params: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """Everything random about one image, drawn before any pixel is rendered."""

    index: int
    patient: int
    visit: int
    view: str
    anatomy: Mapping  # the patient's: the same on every visit
    nuisance: Mapping  # this acquisition's: position, exposure, noise, ...
    findings: tuple[FindingSpec, ...]
    noise_seed: int
    text_seed: int

    @property
    def labels(self) -> list[str]:
        return [f.name for f in self.findings]

    def finding(self, name: str) -> FindingSpec | None:
        return next((f for f in self.findings if f.name == name), None)

    def without(self, name: str) -> Study:
        """The same acquisition with one finding removed (the ablation the tests render)."""
        return replace(self, findings=tuple(f for f in self.findings if f.name != name))


@dataclass
class Rendering:
    image: np.ndarray  # uint8, (H, W) grayscale or (H, W, 3) RGB
    masks: dict[str, np.ndarray]  # finding name -> bool (H, W)


def record_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def patient_rng(seed: int, patient: int) -> np.random.Generator:
    return np.random.default_rng([seed, PATIENT_STREAM, patient])


def draw_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**63))


def capitalize(text: str) -> str:
    """First letter upper-cased, the rest untouched (str.capitalize would lower-case "DME", "AP")."""
    return text[:1].upper() + text[1:]


def pick(rng: np.random.Generator, options: Sequence, p: Sequence[float] | None = None):
    """One element of a sequence (numpy's choice would turn strings and tuples into arrays)."""
    return options[int(rng.choice(len(options), p=p))]


def shift_grade(rng: np.random.Generator, grades: Sequence[str], grade: str, p_change: float = 0.35) -> str:
    """A grade one step up or down from the patient's baseline on some visits: disease evolves."""
    i = grades.index(grade)
    if rng.random() < p_change:
        i = min(max(i + (1 if rng.random() < 0.5 else -1), 0), len(grades) - 1)
    return grades[i]


# ----------------------------------------------------------------------------- patients and splits


def assign_visits(n: int, seed: int) -> list[tuple[int, int]]:
    """(patient, visit) of each record index: patients have 1-3 consecutive studies."""
    rng = np.random.default_rng([seed, VISITS_STREAM])
    counts = rng.choice(VISITS_PER_PATIENT[0], size=n, p=VISITS_PER_PATIENT[1])
    out: list[tuple[int, int]] = []
    for patient, k in enumerate(counts):
        out.extend((patient, visit) for visit in range(int(k)))
        if len(out) >= n:
            break
    return out[:n]


def assign_splits(visits: Sequence[tuple[int, int]], fractions: Sequence[float], seed: int) -> list[str]:
    """Split of each record, by patient, so that no patient is in two splits.

    Patients are shuffled, then test and valid are filled up to their share of *records* (at least
    one patient each when there are 10 records or more) and the rest goes to the last split with a
    share; a patient is always left for each split still to fill.
    """
    n = len(visits)
    sizes = np.bincount([p for p, _ in visits])
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(len(sizes))
    wanted = [(name, frac) for name, frac in zip(SPLITS, fractions) if frac > 0]
    *filled, (last, _) = wanted[::-1]  # fill the small splits first; the last one takes the rest
    split_of = [last] * len(sizes)
    pos = 0
    for k, (name, frac) in enumerate(filled):
        target = max(round(n * frac), 1 if n >= 10 else 0)
        got = 0
        still_to_fill = len(filled) - k  # this split and those after it, counting `last`
        while got < target and pos < len(order) - still_to_fill:
            split_of[order[pos]] = name
            got += int(sizes[order[pos]])
            pos += 1
    return [split_of[p] for p, _ in visits]


# ----------------------------------------------------------------------------- drawing primitives


def ramp(margin: np.ndarray, edge: float) -> np.ndarray:
    """0 -> 1 across ``edge`` around margin 0: an anti-aliased inside test for a signed margin."""
    return np.clip(margin * (1.0 / edge) + 0.5, 0.0, 1.0)


def bump(x: np.ndarray) -> np.ndarray:
    """Compact support: 0 for x <= 0, smooth rise to 1 at x >= 1 (smoothstep)."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def mix(base: np.ndarray, value, weight: np.ndarray) -> np.ndarray:
    """Paint ``value`` over ``base`` with opacity ``weight``; outside the weight's support, unchanged."""
    return base + (value - base) * weight


@lru_cache(maxsize=16)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1], x to the right and y down (float32, read-only)."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    x, y = np.meshgrid(c, c)
    x.flags.writeable = y.flags.writeable = False
    return x, y


@lru_cache(maxsize=32)
def texture_bank(size: int, scale: float, count: int = 4) -> np.ndarray:
    """Periodic band-limited noise fields (zero mean, unit std), ``scale`` = correlation length as a
    fraction of the image. Drawn once per process from a fixed seed; a study picks a field and a
    cyclic shift, so textures cost a roll instead of a blur per image."""
    rng = np.random.default_rng([TEXTURE_STREAM, size, round(scale * 10000)])
    white = rng.standard_normal((count, size, size))
    f = np.fft.fftfreq(size)
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    length = scale * size
    smooth = np.fft.ifft2(np.fft.fft2(white) * np.exp(-2 * math.pi**2 * length**2 * k2)).real
    smooth -= smooth.mean(axis=(1, 2), keepdims=True)
    smooth /= smooth.std(axis=(1, 2), keepdims=True)
    bank = smooth.astype(np.float32)
    bank.flags.writeable = False
    return bank


def white_noise(size: int, seed: int, channels: int = 1) -> np.ndarray:
    """Unit Gaussian pixel noise, (size, size) or (size, size, channels): the sum of two cyclically
    shifted fields of a per-process bank (drawing fresh Gaussians costs more than the rest of a
    chest film)."""
    rng = np.random.default_rng(seed)
    bank = _noise_bank(size, channels)
    a, b = rng.integers(8, size=2)
    shift_a = tuple(int(k) for k in rng.integers(size, size=2))
    shift_b = tuple(int(k) for k in rng.integers(size, size=2))
    first = np.roll(bank[a], shift_a, axis=(0, 1))
    first += np.roll(bank[b] if b != a else bank[(a + 1) % 8], shift_b, axis=(0, 1))
    first *= np.float32(math.sqrt(0.5))
    return first


@lru_cache(maxsize=8)
def _noise_bank(size: int, channels: int) -> np.ndarray:
    shape = (8, size, size) if channels == 1 else (8, size, size, channels)
    bank = np.random.default_rng([TEXTURE_STREAM, size, channels]).standard_normal(shape, dtype=np.float32)
    bank.flags.writeable = False
    return bank


def draw_texture_key(rng: np.random.Generator) -> tuple[int, float, float]:
    return int(rng.integers(4)), float(rng.random()), float(rng.random())


def texture(size: int, scale: float, key: tuple[int, float, float]) -> np.ndarray:
    k, oy, ox = key
    return np.roll(texture_bank(size, scale)[k], (int(oy * size), int(ox * size)), axis=(0, 1))


@dataclass
class Frame:
    """Maps a study's own coordinates (u, v) to the pixel grid: a similarity (centre, scale,
    rotation). ``u, v`` are full (H, W) arrays; ``window`` gives the pixel slice around a point so
    small lesions are drawn on a few pixels only."""

    size: int
    cx: float
    cy: float
    scale: float
    angle: float
    u: np.ndarray = field(init=False, repr=False)
    v: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        x, y = pixel_grid(self.size)
        c, s, k = math.cos(self.angle), math.sin(self.angle), 1.0 / self.scale
        dx, dy = x - self.cx, y - self.cy
        self.u = (dx * c + dy * s) * k
        self.v = (dy * c - dx * s) * k

    @property
    def px(self) -> float:
        """Pixels per unit of (u, v)."""
        return self.size * 0.5 * self.scale

    @property
    def edge(self) -> float:
        """One pixel in (u, v) units: the anti-aliasing width of every boundary."""
        return 1.0 / self.px

    def to_pixel(self, u: float, v: float) -> tuple[float, float]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = self.cx + self.scale * (u * c - v * s)
        y = self.cy + self.scale * (u * s + v * c)
        return (x + 1.0) * self.size * 0.5 - 0.5, (y + 1.0) * self.size * 0.5 - 0.5

    def window(self, points: Sequence[tuple[float, float]], radius: float) -> tuple[slice, slice] | None:
        """Pixel rows and columns covering ``points`` grown by ``radius`` (u, v units); None if off-image."""
        pix = [self.to_pixel(u, v) for u, v in points]
        r = radius * self.px + 2.0
        x0 = max(int(math.floor(min(p[0] for p in pix) - r)), 0)
        x1 = min(int(math.ceil(max(p[0] for p in pix) + r)) + 1, self.size)
        y0 = max(int(math.floor(min(p[1] for p in pix) - r)), 0)
        y1 = min(int(math.ceil(max(p[1] for p in pix) + r)) + 1, self.size)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)


def stamp_ellipse(
    canvas: np.ndarray, frame: Frame, centre: tuple[float, float], radii: tuple[float, float],
    angle: float = 0.0, soft: float = 0.0, strength: float = 1.0,
) -> None:
    """Max-composite an ellipse (u, v units) into ``canvas``; ``soft`` > 0 fades its edge over that
    fraction of the radius (drusen, haze) instead of one pixel. Radii are at least ~0.7 pixel so a
    lesion never vanishes at small image sizes."""
    floor_r = 0.7 / frame.px
    rx, ry = max(radii[0], floor_r), max(radii[1], floor_r)
    win = frame.window([centre], max(rx, ry))
    if win is None:
        return
    du, dv = frame.u[win] - centre[0], frame.v[win] - centre[1]
    c, s = math.cos(angle), math.sin(angle)
    q = np.sqrt(((du * c + dv * s) / rx) ** 2 + ((dv * c - du * s) / ry) ** 2)
    if soft > 0:
        w = bump((1.0 - q) / soft)
    else:
        w = ramp((1.0 - q) * min(rx, ry), frame.edge)
    if strength != 1.0:
        w *= strength
    np.maximum(canvas[win], w, out=canvas[win])


def stamp_polyline(
    canvas: np.ndarray, frame: Frame, points: Sequence[tuple[float, float]], width: float, strength: float = 1.0
) -> None:
    """Max-composite a polyline of the given full width (u, v units, at least one pixel)."""
    half = max(width, frame.edge) * 0.5
    for (u0, v0), (u1, v1) in zip(points[:-1], points[1:]):
        win = frame.window([(u0, v0), (u1, v1)], half)
        if win is None:
            continue
        du, dv = u1 - u0, v1 - v0
        pu, pv = frame.u[win] - u0, frame.v[win] - v0
        t = np.clip((pu * du + pv * dv) * (1.0 / max(du * du + dv * dv, 1e-12)), 0.0, 1.0)
        dist = np.sqrt((pu - t * du) ** 2 + (pv - t * dv) ** 2)
        w = ramp(half - dist, frame.edge) * strength
        np.maximum(canvas[win], w, out=canvas[win])


def bezier(points: Sequence[tuple[float, float]], steps: int = 12) -> list[tuple[float, float]]:
    """A smooth curve through control points (de Casteljau), as a polyline."""
    pts = np.asarray(points, dtype=float)
    out = []
    for t in np.linspace(0.0, 1.0, steps + 1):
        p = pts.copy()
        while len(p) > 1:
            p = (1 - t) * p[:-1] + t * p[1:]
        out.append((float(p[0, 0]), float(p[0, 1])))
    return out


def mask_of(weight: np.ndarray, relative: float = 0.05) -> np.ndarray:
    """Where a finding is felt: its weight above ``relative`` of its peak (scale-free, so a faint
    haze gets its whole extent). Never empty while the weight is not: at worst the peak pixel."""
    peak = float(weight.max())
    if peak <= 0:
        return np.zeros(weight.shape, bool)
    m = weight > relative * peak
    if not m.any():
        m[np.unravel_index(int(np.argmax(weight)), weight.shape)] = True
    return m


def to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- records and files


def slug(name: str) -> str:
    return "-".join(name.lower().replace("/", " ").split())


def box_of(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """[x0, y0, x1, y1] in pixel-edge coordinates: the mask's pixels lie in [x0, x1) x [y0, y1)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def encode_png(array: np.ndarray) -> bytes:
    """An 8-bit grayscale (H, W) or RGB (H, W, 3) PNG: every row "Up"-filtered, one zlib stream at
    level 1, no ancillary chunks. Twice as fast as Pillow's encoder at the same size, and the bytes
    depend on the pixels and zlib alone (not on Pillow's version or a timestamp)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    h, w = array.shape[:2]
    rows = array.reshape(h, -1)
    raw = np.empty((h, rows.shape[1] + 1), np.uint8)
    raw[:, 0] = 2  # filter type Up: difference with the row above (mod 256)
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    colour = 0 if array.ndim == 2 else 2

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    idat = zlib.compress(raw.tobytes(), PNG_COMPRESS_LEVEL)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def save_png(path: Path, array: np.ndarray) -> None:
    Path(path).write_bytes(encode_png(array))


def _scalars(params: Mapping) -> dict:
    """The plain numbers and words of a mapping (texture keys and geometry stay out of the manifest)."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in params.items() if isinstance(v, (int, float, str))}


@dataclass(frozen=True)
class Task:
    """One record to make, as the parent decided it (so workers need no shared state)."""

    domain: str
    out: str
    seed: int
    size: int
    index: int
    patient: int
    visit: int
    split: str
    record_id: str
    patient_id: str


def make_record(task: Task) -> Record:
    """Draw, render and write one record (runs in a worker process)."""
    module = importlib.import_module(f"medgrain.data.synthetic.{task.domain}")
    study = module.sample_study(task.seed, task.index, task.patient, task.visit)
    rendering = module.render(study, task.size)
    out = Path(task.out)
    image = f"images/{task.record_id}.png"
    save_png(out / image, rendering.image)
    findings = []
    phrases = module.phrases(study)
    for f in study.findings:
        mask_path = f"masks/{task.record_id}_{slug(f.name)}.png"
        mask = rendering.masks[f.name]
        save_png(out / mask_path, mask.astype(np.uint8) * 255)
        findings.append(
            Finding(name=f.name, location=f.location, severity=f.severity, mask=mask_path, box=box_of(mask),
                    phrase=phrases[f.name])
        )
    texts, report = module.write_texts(study)
    meta = {"seed": task.seed, "index": task.index, "visit": task.visit, "size": task.size,
            "scenario": study.anatomy["scenario"], **_scalars(study.nuisance)}
    return Record(
        id=task.record_id, image=image, split=task.split, labels=study.labels, texts=texts, report=report,
        findings=findings, domain=task.domain, view=study.view, patient_id=task.patient_id, meta=meta,
    )


def _check_args(domain, n, seed, size, workers, split) -> tuple[float, float, float]:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; known domains: {', '.join(DOMAINS)}")
    for name, value, low in (("n", n, 1), ("size", size, 32), ("workers", workers, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    fractions = tuple(float(s) for s in split)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split must be three non-negative fractions (train, valid, test) summing to 1, got {split!r}")
    return fractions


def generate(
    domain: str,
    out: str | Path,
    n: int,
    seed: int = 0,
    size: int = 224,
    workers: int = 1,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    progress: bool | None = None,
) -> Path:
    """Write ``n`` synthetic studies of ``domain`` under ``out`` and return ``out/manifest.jsonl``.

    Images go to ``out/images/<id>.png``, one mask per finding to ``out/masks/<id>_<finding>.png``.
    The output is byte-identical for the same arguments whatever ``workers`` is. ``progress``:
    a rich progress bar; None shows it when stderr is a terminal.
    """
    fractions = _check_args(domain, n, seed, size, workers, split)
    n, seed, size, workers = int(n), int(seed), int(size), int(workers)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    visits = assign_visits(n, seed)
    splits = assign_splits(visits, fractions, seed)
    width = max(6, len(str(n - 1)))
    tasks = [
        Task(domain, str(out), seed, size, i, p, v, s, f"{domain}-{i:0{width}d}", f"{domain}-p{p:0{width}d}")
        for i, ((p, v), s) in enumerate(zip(visits, splits))
    ]
    show = sys.stderr.isatty() if progress is None else progress
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
    )
    records: list[Record] = []
    # The pool starts before the progress bar's refresh thread, so a forked worker holds no lock of
    # it. make_record is importable and its tasks picklable, so spawn works too; imap keeps the order.
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context().Pool(workers))
            made = pool.imap(make_record, tasks, chunksize=max(1, min(64, n // (workers * 8))))
        else:
            made = map(make_record, tasks)
        bar = stack.enter_context(Progress(*columns, disable=not show, console=STDERR))
        job = bar.add_task(f"synthetic {domain} {size}px", total=n, rate="")
        for record in made:
            records.append(record)
            speed = bar.tasks[0].speed
            bar.update(job, advance=1, rate=f"{speed:.1f} img/s" if speed else "")
    return write_manifest(records, out / "manifest.jsonl")
