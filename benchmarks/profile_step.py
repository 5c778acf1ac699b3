"""Whole training steps (forward, loss, backward, AdamW) per objective, timed end to end, and a profile.

Run by hand (not a test):
    python benchmarks/profile_step.py --preset minilm-vit-small --size 224 --batch-size 64 --device cuda
    python benchmarks/profile_step.py --preset tiny --size 64 --batch-size 32 --steps 5

Unlike bench_train_step.py, nothing is synchronised inside a step, so the time is what the trainer
pays (launch overlap included). One batch is collated once and reused: data loading is left out. With
``--profile`` the last objective's steps are profiled with torch.profiler: the operators that take
the most device (or CPU) time, and how many times the host waited on the device (syncs stall the
launch queue; MGCA's losses are launch-bound on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from medgrain.data import Collator, ImageTextDataset, pretrain_transform, read_manifest
from medgrain.data.synthetic import generate
from medgrain.losses.objective import build_objective
from medgrain.models import create_model, get_tokenizer
from medgrain.training.config import ObjectiveConfig, OptimConfig
from medgrain.training.loop import to_device
from medgrain.training.optim import build_optimizer


def setup(objective_name: str, preset: str, size: int, batch_size: int, device: torch.device, manifest,
          num_prototypes: int):
    model = create_model(preset, image={"image_size": size}).to(device).train()
    objective = build_objective(ObjectiveConfig(name=objective_name, mgca={"num_prototypes": num_prototypes}),
                                manifest.granularities, True, model.embed_dim).to(device)
    ds = ImageTextDataset(manifest, "train", transform=pretrain_transform(model.config.preprocess_config()),
                          granularities=manifest.granularities, with_report=objective.needs_report)
    collate = Collator(get_tokenizer(model.config), manifest.granularities, with_report=objective.needs_report)
    batch = to_device(collate([ds[i % len(ds)] for i in range(batch_size)]), device)
    opt = build_optimizer({"model": model, "objective": objective}, OptimConfig(lr=1e-5))  # the trainer's

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = objective(model, batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out["loss"]

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, device: torch.device, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def profile(step, device: torch.device, steps: int = 3, rows: int = 25) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    averages = prof.key_averages()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines = [f"## {steps} steps, by {sort}", averages.table(sort_by=sort, row_limit=rows)]
    if device.type == "cuda":
        lines += ["## by CPU time (launch overhead)", averages.table(sort_by="cpu_time_total", row_limit=rows)]
        waits = {e.key: e.count for e in averages
                 if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::nonzero", "aten::item",
                              "aten::_local_scalar_dense", "cudaMemcpyAsync")}
        lines.append(f"## host waits over {steps} steps: {waits}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--objectives", nargs="+", default=["clip", "mgca"])
    ap.add_argument("--num-prototypes", type=int, default=500)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="profile the last objective")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = read_manifest(generate("cxr", Path(tmp), n=args.n, seed=0, size=args.size, workers=2,
                                          progress=False))
        steps = {name: setup(name, args.preset, args.size, args.batch_size, device, manifest, args.num_prototypes)
                 for name in args.objectives}
        # Rounds interleave the objectives so that clock drift and one-off start-up costs (the first
        # cuBLAS and attention-kernel choices) do not all land on whichever objective runs first.
        runs = {name: [] for name in args.objectives}
        for round_ in range(args.rounds):
            for name, step in steps.items():
                runs[name].append(time_steps(step, device, args.steps))
            print(f"round {round_}: " + "  ".join(f"{n} {v[-1]:.1f}" for n, v in runs.items()), flush=True)
        results = {name: statistics.median(v) for name, v in runs.items()}
        if args.profile:
            print(profile(steps[args.objectives[-1]], device))
    base = results.get("clip")
    print(f"\npreset {args.preset}, {args.size}px, batch {args.batch_size}, {device}, torch {torch.__version__}")
    print(f"median over {args.rounds} rounds of the median of {args.steps} steps (range over rounds)")
    print("| objective | ms/step | range | vs clip |")
    print("|---|---:|---:|---:|")
    for name, ms in results.items():
        vs = f"{100 * (ms / base - 1):+.0f}%" if base else "-"
        print(f"| {name} | {ms:.1f} | {min(runs[name]):.1f}–{max(runs[name]):.1f} | {vs} |")


if __name__ == "__main__":
    main()
