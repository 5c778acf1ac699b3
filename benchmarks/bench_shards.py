"""Records per second read from files vs from WebDataset shards, cold and warm page cache, run by hand.

    .venv/bin/python benchmarks/bench_shards.py [--n 600] [--size 224] [--repeats 3]

Generates a synthetic CXR manifest at ``--size`` px, packs it with ``write_shards``, then reads every
record of both (decode + the evaluation transform, as the trainer's workers do) in one process. "cold"
asks the kernel to drop each file's pages first (``posix_fadvise(DONTNEED)``; no root needed), "warm"
reads right after a full pass. Prints a Markdown table: median over ``--repeats`` passes.

On a local SSD the two are close (decode dominates); shards pay off where opening a file is expensive
(NFS, Lustre, object stores), which a single machine cannot show.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from medgrain.data import ImageTextDataset, PreprocessConfig
from medgrain.data.manifest import read_manifest
from medgrain.data.shards import read_shards, write_shards
from medgrain.data.synthetic import generate
from medgrain.data.transforms import eval_transform


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def rate(dataset: ImageTextDataset, files: list[Path], cold: bool) -> float:
    if cold:
        drop_cache(files)
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate("cxr", Path(tmp) / "files", n=a.n, seed=0, size=a.size, workers=2)
        write_shards(manifest, Path(tmp) / "shards", shard_size=200)
        transform = eval_transform(PreprocessConfig(image_size=a.size))
        plain = read_manifest(manifest)
        sources = {
            "files": (plain, [plain.resolve(r.image) for r in plain.records]),
            "shards": (read_shards(Path(tmp) / "shards"), sorted((Path(tmp) / "shards").glob("*.tar"))),
        }
        print(f"| source | cache | records/s (median of {a.repeats}) |\n|---|---|---:|")
        for name, (m, files) in sources.items():
            ds = ImageTextDataset(m, None, transform=transform)
            for cold in (True, False):
                rate(ds, files, cold=False)  # one pass first, so "warm" is warm
                r = statistics.median(rate(ds, files, cold) for _ in range(a.repeats))
                print(f"| {name} | {'cold' if cold else 'warm'} | {r:.0f} |")


if __name__ == "__main__":
    main()
