"""Forward + backward time of ClipLoss vs MGLLLoss (G granularities), run by hand.

    .venv/bin/python benchmarks/bench_losses.py [--devices cpu cuda] [--sizes 32 128 512] [--dims 256 768]

Features are random, L2-normalised leaves with gradients; MGLL's labels are text ids with repeats
(about 4 samples per id), as a batch of templated disease prompts gives. One process, no gathering.
Prints a Markdown table of the median time per step over timed repeats after warm-up.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from medgrain.losses import ClipLoss, MGLLLoss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step, device: torch.device, warmup: int, min_repeats: int, min_seconds: float) -> float:
    """Median seconds of ``step()`` after ``warmup`` calls; at least ``min_repeats`` and ``min_seconds``."""
    for _ in range(warmup):
        step()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_case(device: torch.device, n: int, dim: int, granularities: int, args) -> tuple[float, float]:
    gen = torch.Generator(device="cpu").manual_seed(0)

    def leaf(*shape):
        x = F.normalize(torch.randn(*shape, generator=gen), dim=-1).to(device)
        return x.requires_grad_(True)

    image = leaf(n, dim)
    texts = [leaf(n, dim) for _ in range(granularities)]
    labels = [torch.randint(0, max(1, n // 4), (n,), generator=gen).to(device) for _ in range(granularities)]
    scale = torch.tensor(1 / 0.07, device=device, requires_grad=True)
    clip_loss, mgll_loss = ClipLoss(), MGLLLoss()

    def clip_step():
        clip_loss(image, texts[0], scale)["loss"].backward()

    def mgll_step():
        mgll_loss(image, texts, labels, scale)["loss"].backward()

    timing = (args.warmup, args.repeats, args.min_seconds)
    return time_step(clip_step, device, *timing), time_step(mgll_step, device, *timing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    parser.add_argument("--devices", nargs="+", default=default_devices)
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 128, 512], help="batch sizes N")
    parser.add_argument("--dims", nargs="+", type=int, default=[256, 768], help="embedding dims D")
    parser.add_argument("--granularities", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=0.5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads", end="")
    if torch.cuda.is_available():
        print(f", {torch.cuda.get_device_name()}", end="")
    print(f"; median forward+backward per step, MGLL with G={args.granularities}\n")
    print("| device | N | D | ClipLoss (ms) | MGLLLoss (ms) | MGLL / CLIP |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.devices:
        device = torch.device(name)
        for n in args.sizes:
            for dim in args.dims:
                clip_s, mgll_s = bench_case(device, n, dim, args.granularities, args)
                print(f"| {name} | {n} | {dim} | {clip_s * 1e3:.3f} | {mgll_s * 1e3:.3f} | {mgll_s / clip_s:.1f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
