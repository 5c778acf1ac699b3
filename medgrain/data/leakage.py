"""Images of one manifest that also appear in another, found by perceptual hash.

MGLL's pretraining pool gathers public sets that are also its downstream tests, so an encoder can have
seen a test image during pretraining. ``find_leaks(a, b)`` lists the images of B whose pHash lies
within ``threshold`` bits of an image of A; ``prepare(..., exclude=[...])`` drops them.

pHash (``imagehash``'s construction at hash size 16): grey levels resized to 64x64, 2-D DCT-II, the
16x16 lowest frequencies compared with their median, 256 bits. The common 64-bit pHash (8x8 of 32x32)
cannot tell chest radiographs apart: on synthetic chest X-rays distinct images came within 2 bits of
each other, as close as a re-encoded copy. With 256 bits, a JPEG (quality 70) copy resized to 3/4 moved
at most 4 bits at 224 px and 12 at 64 px, while distinct images stayed at least 36 (224 px) and 16
(64 px) bits apart; the default threshold is 12 bits. Review the list.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .manifest import Manifest, Record, read_manifest

DEFAULT_THRESHOLD = 12  # bits out of 256
HASH_SIDE, DCT_SIDE = 16, 64
HASH_BITS = HASH_SIDE * HASH_SIDE
WORDS = HASH_BITS // 64
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L") that imagehash uses


def _dct2(x: np.ndarray) -> np.ndarray:
    """Unnormalised 2-D DCT-II; scipy when present, else the same transform as a matrix product."""
    try:
        from scipy.fft import dctn
    except ImportError:
        n = x.shape[0]
        k, i = np.arange(n)[:, None], np.arange(n)[None, :]
        basis = 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))
        return basis @ x @ basis.T
    return dctn(x, type=2)


def phash(image: torch.Tensor) -> int:
    """256-bit perceptual hash of a (C, H, W) image, uint8 or float in [0, 1], as a Python int."""
    x = image.to(torch.float64)
    if image.dtype == torch.uint8:
        x = x / 255.0
    if x.shape[0] == 3:
        x = sum(w * c for w, c in zip(LUMA, x))[None]
    elif x.shape[0] != 1:
        raise ValueError(f"expected 1 or 3 channels, got an image of shape {tuple(image.shape)}")
    small = F.interpolate(x[None].float(), size=(DCT_SIDE, DCT_SIDE), mode="bilinear", antialias=True,
                          align_corners=False)[0, 0].double().numpy()
    low = _dct2(small)[:HASH_SIDE, :HASH_SIDE]
    bits = (low > np.median(low)).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def as_words(hashes: Sequence[int]) -> np.ndarray:
    """Hashes as (n, WORDS) uint64 words, most significant first."""
    mask = (1 << 64) - 1
    return np.array([[(h >> (64 * (WORDS - 1 - w))) & mask for w in range(WORDS)] for h in hashes],
                    dtype=np.uint64).reshape(len(hashes), WORDS)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances between every hash of ``b`` (rows) and of ``a`` (columns); hashes as (n, words) uint64
    (a 1-D array is read as one word per hash)."""
    a, b = (x[:, None] if x.ndim == 1 else x for x in (a, b))
    return _popcount(np.bitwise_xor(b[:, None, :], a[None, :, :])).sum(-1).astype(np.int64)


def hash_images(records: Sequence[Record], root: Path, workers: int | None = None,
                on_unreadable: Callable[[Record, str], None] | None = None) -> dict[str, int]:
    """pHash of every record that has an image (text-only records are left out).

    An unreadable image raises, or is handed to ``on_unreadable(record, reason)`` and left out.
    """
    from tqdm.auto import tqdm

    from .imageio import ImageReadError, read_image

    with_images = [r for r in records if r.image is not None]

    def one(rec: Record) -> tuple[Record, int | str]:
        path = Path(rec.image)
        try:
            return rec, phash(read_image(path if path.is_absolute() else root / path))
        except ImageReadError as e:
            return rec, e.reason

    hashes: dict[str, int] = {}
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for rec, h in tqdm(pool.map(one, with_images), total=len(with_images), desc="hashing images",
                           disable=None, leave=False):
            if isinstance(h, str):
                if on_unreadable is None:
                    raise ValueError(f"record '{rec.id}': cannot read image {rec.image}: {h}")
                on_unreadable(rec, h)
            else:
                hashes[rec.id] = h
    return hashes


def match_hashes(a: dict[str, int], b: dict[str, int], threshold: int) -> list[tuple[str, str, int]]:
    """(b_id, a_id, distance) for every pair within ``threshold`` bits, sorted by b_id then distance."""
    if not a or not b:
        return []
    a_ids, b_ids = list(a), list(b)
    a_arr = as_words([a[i] for i in a_ids])
    b_arr = as_words([b[i] for i in b_ids])
    leaks = []
    chunk = max(1, 2**22 // len(a_ids))  # bounds the XOR array to ~4M x WORDS words at a time
    for start in range(0, len(b_ids), chunk):
        dist = hamming(a_arr, b_arr[start:start + chunk])
        for row, col in zip(*np.nonzero(dist <= threshold)):
            leaks.append((b_ids[start + row], a_ids[col], int(dist[row, col])))
    return sorted(leaks, key=lambda t: (t[0], t[2], t[1]))


def _as_manifest(m: str | Path | Manifest) -> Manifest:
    return m if isinstance(m, Manifest) else read_manifest(m)


def find_leaks(a_manifest: str | Path | Manifest, b_manifest: str | Path | Manifest,
               threshold: int = DEFAULT_THRESHOLD, workers: int | None = None) -> list[tuple[str, str, int]]:
    """Images of B that also appear in A: ``(b_id, a_id, hamming distance)``, every pair within
    ``threshold`` bits (0 finds exact pixel copies up to resizing)."""
    a, b = _as_manifest(a_manifest), _as_manifest(b_manifest)
    return match_hashes(hash_images(a.records, a.root, workers), hash_images(b.records, b.root, workers), threshold)


def drop_leaks(records: list[Record], root: Path, exclude: Sequence[str | Path | Manifest],
               threshold: int = DEFAULT_THRESHOLD, workers: int | None = None,
               on_unreadable: Callable[[Record, str], None] | None = None,
               ) -> tuple[list[Record], list[tuple[str, str, int]]]:
    """Records whose image is not within ``threshold`` of any image of the ``exclude`` manifests, and
    the leaks found (record id, excluded manifest's record id, distance). Records whose image cannot be
    read go to ``on_unreadable`` and are left out."""
    ours = hash_images(records, root, workers, on_unreadable)
    excluded: dict[str, int] = {}
    for m in map(_as_manifest, exclude):
        excluded.update({f"{m.path}#{rid}": h for rid, h in hash_images(m.records, m.root, workers).items()})
    leaks = match_hashes(excluded, ours, threshold)
    leaked = {b_id for b_id, _, _ in leaks}
    kept = [r for r in records if r.id not in leaked and (r.image is None or r.id in ours)]
    return kept, leaks


def format_leaks(leaks: list[tuple[str, str, int]], a_name: str = "A", b_name: str = "B") -> str:
    """The leaks as a tab-separated table with a closing count, as ``medgrain leakage`` prints them."""
    lines = [f"{b_name} id\t{a_name} id\tdistance", *(f"{b}\t{a}\t{d}" for b, a, d in leaks)]
    images = len({b for b, _, _ in leaks})
    lines.append(f"{images} images of {b_name} also appear in {a_name} ({len(leaks)} pairs)")
    return "\n".join(lines)


def drop_patients(records: Sequence[Record], held_out: Sequence[str | Path | Manifest]) -> tuple[list[Record], set[str]]:
    """Records whose patient is in none of the ``held_out`` manifests, and the patients dropped.

    Two manifests built from the same source (a 5x200 test set drawn from CheXpert, and a pretraining
    manifest of CheXpert) share patient ids, so patients, not only identical images, are held out:
    another image of a test patient is as much a leak as the test image itself. A held-out record
    without ``patient_id`` is an error: it could not be held out."""
    patients: set[str] = set()
    for m in map(_as_manifest, held_out):
        missing = [r.id for r in m.records if not r.patient_id]
        if missing:
            raise ValueError(f"{m.path}: {len(missing)} records have no patient_id (first: {missing[0]!r}); "
                             "their patients cannot be held out")
        patients.update(r.patient_id for r in m.records)
    kept = [r for r in records if r.patient_id not in patients]
    return kept, {r.patient_id for r in records if r.patient_id in patients}
