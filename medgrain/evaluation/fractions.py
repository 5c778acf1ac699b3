"""Label fractions (1%, 10%, 100% of a training split), drawn once per seed and kept in files.

MGCA's subsets were drawn with the global numpy RNG inside dataset constructors, so the subset a
run used depended on how often the dataset was rebuilt, and none was published (the released code,
github.com/HKU-MedAI/MGCA, for Wang et al., NeurIPS 2022, arXiv:2210.06044). Here each subset is drawn once from its own seeded generator, written as a
list of record ids next to the manifest (``<manifest dir>/fractions/<split>_<fraction>_seed<k>.txt``)
and read back by every later run and every method: linear probe, fine-tuning, segmentation and
detection of one manifest all train on the same records.

The draw: ``n = ceil(fraction * N)`` records, where for every finding (rarest first) one positive
and one negative record are taken first if the split has them and the draw lacks them, then the
rest is filled uniformly at random. A tiny fraction can therefore hold a few more than ``n``
records; without the rule a 1% draw of a rare finding often has no positive at all and its
AUROC is undefined.

A *published* fraction (BenchX's ``train_1.txt``, written by ``medgrain prepare --splits``) lives in
``<manifest dir>/fractions/<split>_<fraction>_published.txt`` and is used for every seed instead of a
draw: the point of a published subset is that every paper trains on the same records.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medgrain.data.manifest import Manifest
from medgrain.io import atomic_write

FRACTIONS = (0.01, 0.1, 1.0)


def fraction_name(fraction: float) -> str:
    """``0.01`` -> ``"1%"``: how a fraction is named in tables and result files."""
    return f"{fraction * 100:g}%"


def fraction_path(manifest: Manifest, split: str, fraction: float, seed: int,
                  directory: str | Path | None = None) -> Path:
    directory = Path(directory) if directory is not None else manifest.root / "fractions"
    return directory / f"{split}_{fraction:g}_seed{seed}.txt"


def published_fraction_path(manifest_path: str | Path, split: str, fraction: float) -> Path:
    return Path(manifest_path).parent / "fractions" / f"{split}_{fraction:g}_published.txt"


def write_published_fraction(manifest_path: str | Path, split: str, fraction: float, ids: list[str],
                             origin: str) -> Path:
    """Keep a published label fraction next to the manifest, for every later run and seed."""
    path = published_fraction_path(manifest_path, split, fraction)
    _write_ids(path, ids, f"{fraction_name(fraction)} of split '{split}' ({len(ids)} records), {origin}; "
                          "used for every seed")
    return path


def draw_fraction(ids: list[str], labels: np.ndarray, fraction: float, seed: int) -> list[str]:
    """Draw ``fraction`` of ``ids`` keeping a positive and a negative of every class where possible.

    ``labels`` is the (N, C) multi-hot matrix of the records. Returns ids in manifest order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a label fraction must be in (0, 1], got {fraction}")
    n_records = len(ids)
    if n_records == 0:
        raise ValueError("cannot draw a label fraction from an empty split")
    labels = np.asarray(labels, dtype=bool).reshape(n_records, -1)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(n_records, dtype=bool)
    for c in np.argsort(labels.sum(0), kind="stable"):  # rarest class first: its records are the scarcest
        for wanted in (True, False):
            candidates = np.flatnonzero(labels[:, c] == wanted)
            if len(candidates) and not chosen[candidates].any():
                chosen[rng.choice(candidates)] = True
    missing = max(math.ceil(fraction * n_records) - int(chosen.sum()), 0)
    chosen[rng.choice(np.flatnonzero(~chosen), size=missing, replace=False)] = True
    return [ids[i] for i in np.flatnonzero(chosen)]


def load_or_draw_fraction(manifest: Manifest, split: str, fraction: float, seed: int,
                          directory: str | Path | None = None) -> list[str]:
    """The record ids of a label fraction: read from its file, or drawn and written once.

    The whole split (fraction 1) is returned as is and gets no file."""
    records = manifest.split(split)
    if not records:
        raise ValueError(f"{manifest.path}: split '{split}' is empty; no label fraction can be drawn")
    ids = [r.id for r in records]
    if fraction == 1:
        return ids
    published = published_fraction_path(manifest.path, split, fraction)
    if published.is_file():
        return _read_ids(published, set(ids), split)
    path = fraction_path(manifest, split, fraction, seed, directory)
    if path.is_file():
        return _read_ids(path, set(ids), split)
    names = manifest.finding_names
    index = {name: i for i, name in enumerate(names)}
    labels = np.zeros((len(records), len(names)), dtype=bool)
    for row, record in enumerate(records):
        labels[row, [index[name] for name in record.labels]] = True
    drawn = draw_fraction(ids, labels, fraction, seed)
    _write_ids(path, drawn, f"{fraction_name(fraction)} of split '{split}' ({len(drawn)} of {len(ids)} "
                            f"records), seed {seed}, of {manifest.path.name}")
    return drawn


def _read_ids(path: Path, split_ids: set[str], split: str) -> list[str]:
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i and not i.startswith("#")]
    unknown = [i for i in ids if i not in split_ids]
    if unknown:
        raise ValueError(
            f"{path}: {len(unknown)} ids (first: {unknown[0]!r}) are not in split '{split}' of the manifest; "
            "the manifest changed since this fraction was drawn. Delete the file to draw it again "
            "(results drawn from the old file are not comparable with new ones)."
        )
    if not ids:
        raise ValueError(f"{path}: the fraction file lists no record ids; delete it to draw it again")
    return ids


def _write_ids(path: Path, ids: list[str], header: str) -> None:
    try:
        # A concurrent run reads either nothing or the complete list.
        atomic_write(path, f"# {header}\n" + "".join(f"{i}\n" for i in ids))
    except OSError as e:
        raise OSError(f"cannot write the label fraction {path} ({e}); the folder next to the manifest must be "
                      "writable, or pass fractions_dir (--fractions-dir) to keep the files elsewhere") from e


def fraction_plan(manifest: Manifest, fractions=FRACTIONS, seeds=(0, 1, 2), directory: str | Path | None = None,
                  full_once: bool = False, split: str = "train") -> list[tuple[float, int, list[str]]]:
    """``(fraction, seed, record ids)`` of every run. ``full_once``: the whole split is one run, not
    one per seed, for methods that are deterministic given their data (logistic regression)."""
    plan = []
    for fraction in fractions:
        for seed in seeds[:1] if fraction == 1 and full_once else seeds:
            plan.append((fraction, seed, load_or_draw_fraction(manifest, split, fraction, seed, directory)))
    return plan
