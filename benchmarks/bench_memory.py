"""Peak memory and time of a training step against the batch size, for the memory levers.

Run by hand (not a test):
    python benchmarks/bench_memory.py --preset tiny-vit --size 64 --batch-sizes 32 64 128 --chunks 4
    python benchmarks/bench_memory.py --preset minilm-vit-small --size 224 --device cuda --batch-sizes 256 512 1024

For each objective (clip, mgll), lever (none, grad_checkpointing, contrastive_chunks=K, both) and
batch size, one step (forward, backward, AdamW) is timed in a fresh process, so that every peak is its
own. On CUDA the peak is ``torch.cuda.max_memory_allocated`` minus what was allocated before the
step. On the CPU a thread samples the resident memory (``/proc/self/statm``) every 0.2 ms during the
measured steps, and the peak is its maximum minus the resident memory just before them; glibc is told
to return every allocation above 64 kB to the system when freed (``MALLOC_MMAP_THRESHOLD_``), so the
resident memory follows the live tensors. Either way the peak is what a step itself needs beyond the
model, its gradients and the optimizer state (activations, the loss, cached embeddings). The batch is
synthetic (random images, a few radiology phrases), so no data loading is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

LEVERS = ("none", "checkpointing", "chunks", "both")
TEXTS = ["no acute cardiopulmonary abnormality", "small left pleural effusion", "mild cardiomegaly",
         "right lower lobe consolidation concerning for pneumonia", "no finding", "atelectasis at the bases"]


def _batch(tokenizer, n: int, size: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(TEXTS), (2, n), generator=gen)
    texts = {g: tokenizer([TEXTS[i] for i in ids[k]]) for k, g in enumerate(("finding", "description"))}
    batch = {"ids": [str(i) for i in range(n)], "images": torch.randn(n, 3, size, size, generator=gen),
             "texts": texts, "text_ids": {"finding": ids[0], "description": ids[1]}}
    from medgrain.training.loop import to_device

    return to_device(batch, device)


PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_MB


class PeakRSS(threading.Thread):
    """The highest resident memory seen while running (sampled)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = _rss_mb(), True

    def run(self):
        while self.running:
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.0002)


def one(args) -> dict:
    """One configuration, in this process: returns peak memory (MB) and the median step time (ms)."""
    from medgrain.losses.objective import OBJECTIVES
    from medgrain.models.factory import create_model_and_tokenizer
    from medgrain.training.config import ObjectiveConfig, TrainSection
    from medgrain.training.grad_cache import cached_backward
    from medgrain.training.loop import prepare_model

    torch.manual_seed(0)
    device = torch.device(args.device)
    model, tokenizer = create_model_and_tokenizer(args.preset, image={"image_size": args.size})
    model = model.to(device).train()
    objective = OBJECTIVES.get(args.objective).from_config(ObjectiveConfig(name=args.objective),
                                                           ["finding", "description"], False, model.embed_dim)
    checkpointing = args.lever in ("checkpointing", "both")
    chunks = args.chunks if args.lever in ("chunks", "both") else 1
    prepare_model(model, objective, TrainSection(batch_size=args.batch_size, grad_checkpointing=checkpointing,
                                                 contrastive_chunks=chunks))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = _batch(tokenizer, args.batch_size, args.size, device)

    def step():
        if chunks > 1:
            cached_backward(objective, model, batch, chunks)
        else:
            objective(model, batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: gradients and AdamW's moments exist from here on, as in training
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mb()
        sampler = PeakRSS()
        sampler.start()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        sampler.running = False
        sampler.join()
        peak = sampler.peak
    return {"peak_mb": round(peak - base, 1), "step_ms": round(statistics.median(times), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-vit")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--objectives", nargs="+", default=["clip", "mgll"])
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this file")
    # internal: run one configuration in this process
    parser.add_argument("--objective", help=argparse.SUPPRESS)
    parser.add_argument("--lever", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.objective:
        print(json.dumps(one(args)))
        return
    rows = []
    print(f"{'objective':10} {'lever':14} {'batch':>6} {'peak MB':>9} {'step ms':>9}")
    for objective in args.objectives:
        for lever in args.levers:
            for batch_size in args.batch_sizes:
                cmd = [sys.executable, __file__, "--preset", args.preset, "--size", str(args.size), "--device",
                       args.device, "--chunks", str(args.chunks), "--steps", str(args.steps), "--objective",
                       objective, "--lever", lever, "--batch-size", str(batch_size)]
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    result = {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
                else:
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                row = {"objective": objective, "lever": lever, "batch": batch_size, **result}
                rows.append(row)
                print(f"{objective:10} {lever:14} {batch_size:>6} {row.get('peak_mb', '-'):>9} "
                      f"{row.get('step_ms', row.get('error', '')):>9}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
