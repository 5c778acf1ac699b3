"""Time per training step, split into data, forward, loss, backward and optimizer, per objective.

Run by hand (not a test):
    python benchmarks/bench_train_step.py --preset tiny --size 64 --batch-sizes 32 64
    python benchmarks/bench_train_step.py --preset minilm-vit-small --size 224 --device cuda --batch-sizes 64 128

"data" is the collate of a batch (reading, augmenting, tokenising); "forward" the encoders; "loss" the
objective's loss functions on the encoder outputs (the objective is called twice: the first call runs
and caches the towers, the second times the loss alone); "backward" and "optimizer" what they say. On CUDA
every phase is closed with a synchronisation, so the split is honest but a little slower than a real
step. Results go to stdout as a table (and to --json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from medgrain.data import Collator, ImageTextDataset, pretrain_transform, read_manifest
from medgrain.data.synthetic import generate
from medgrain.losses.objective import OBJECTIVES, build_objective
from medgrain.models import create_model, get_tokenizer
from medgrain.training.config import ObjectiveConfig
from medgrain.training.loop import to_device


class Timer:
    def __init__(self, device: torch.device):
        self.device, self.t = device, time.perf_counter()

    def lap(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt


class SplitModel(torch.nn.Module):
    """Runs each tower call once per step, then lets the objective read cached outputs: the loss is timed
    apart. Other attributes (logit scale, config) are the model's."""

    TOWERS = ("encode_image", "encode_text", "image_tokens", "text_tokens")

    def __init__(self, model):
        super().__init__()
        self.model, self.cache = model, {}

    def __getattr__(self, name):
        if name in ("model", "cache") or name.startswith("_"):
            return super().__getattr__(name)
        attribute = getattr(self.model, name)
        if name not in self.TOWERS:
            return attribute

        def cached(x, **kwargs):
            key = (name, id(x), tuple(sorted(kwargs.items())))
            if key not in self.cache:
                self.cache[key] = attribute(x, **kwargs)
            return self.cache[key]

        return cached


def bench(objective_name: str, preset: str, size: int, batch_size: int, device: torch.device, steps: int,
          manifest, bf16: bool) -> dict:
    model = create_model(preset, image={"image_size": size}).to(device).train()
    granularities = manifest.granularities
    objective = build_objective(ObjectiveConfig(name=objective_name, mgca={"num_prototypes": 64}),
                                granularities, True, model.embed_dim).to(device)
    ds = ImageTextDataset(manifest, "train", transform=pretrain_transform(model.config.preprocess_config()),
                          granularities=granularities, with_report=objective.needs_report)
    collate = Collator(get_tokenizer(model.config), granularities, with_report=objective.needs_report)
    opt = torch.optim.AdamW(list(model.parameters()) + list(objective.parameters()), lr=1e-4)
    split = SplitModel(model)
    phases = {k: [] for k in ("data", "forward", "loss", "backward", "optimizer", "total")}
    for step in range(steps + 2):
        idx = [(step * batch_size + i) % len(ds) for i in range(batch_size)]
        timer = Timer(device)
        batch = collate([ds[i] for i in idx])
        batch = to_device(batch, device)
        t_data = timer.lap()
        split.cache = {}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            # Forward: the objective's first call runs every tower it needs (cached); its second call reads
            # the cache, so it times the loss alone, and forward is the first call less the second. Works for
            # every registered objective without knowing which towers it calls.
            objective(split, batch)
            t_first = timer.lap()
            out = objective(split, batch)
        t_loss = timer.lap()
        t_fwd = max(t_first - t_loss, 0.0)
        out["loss"].backward()
        t_bwd = timer.lap()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t_opt = timer.lap()
        if step >= 2:  # warm-up steps are left out
            times = (t_data, t_fwd, t_loss, t_bwd, t_opt, t_data + t_fwd + t_loss + t_bwd + t_opt)
            for name, seconds in zip(phases, times):
                phases[name].append(1000 * seconds)
    return {k: statistics.median(v) for k, v in phases.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--objectives", nargs="+", default=OBJECTIVES.names(), choices=OBJECTIVES.names())
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        manifest = read_manifest(generate("cxr", Path(tmp), n=args.n, seed=0, size=args.size, workers=2,
                                          progress=False))
        rows = []
        for bs in args.batch_sizes:
            for obj in args.objectives:
                r = bench(obj, args.preset, args.size, bs, device, args.steps, manifest, bf16)
                rows.append({"objective": obj, "batch_size": bs, **r})
                print(f"{obj:10s} bs {bs:4d}  " + "  ".join(f"{k} {v:8.1f} ms" for k, v in r.items()), flush=True)
    print(f"\npreset {args.preset}, {args.size}px, {device}{' bf16' if bf16 else ''}, torch {torch.__version__}")
    print("| objective | batch | data | forward | loss | backward | optimizer | total (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['objective']} | {r['batch_size']} | {r['data']:.1f} | {r['forward']:.1f} | {r['loss']:.1f} | "
              f"{r['backward']:.1f} | {r['optimizer']:.1f} | {r['total']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
