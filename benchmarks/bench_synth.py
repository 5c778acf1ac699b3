"""Throughput of the synthetic generators, PNG writing and manifest included.

    python benchmarks/bench_synth.py [--n 400] [--sizes 128 224] [--workers 1 2]

Prints images/s per domain, size and worker count (wall clock), and images per CPU-second (all
processes): on a machine shared with other work the wall-clock rate of 2 workers says little, while
2 x the CPU rate is what 2 idle cores give.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from medgrain.data.synthetic import DOMAINS, generate


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="images per measurement")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    args = ap.parse_args()
    print(f"{'domain':<8} {'size':>5} {'workers':>8} {'images/s':>9} {'img/cpu-s':>10} {'MB':>7}")
    for domain in args.domains:
        for size in args.sizes:
            generate(domain, tempfile.mkdtemp(), n=8, size=size, progress=False)  # warm the per-process caches
            for workers in args.workers:
                out = Path(tempfile.mkdtemp(prefix="bench_synth_"))
                try:
                    start, cpu = time.perf_counter(), _cpu_seconds()
                    generate(domain, out, n=args.n, seed=0, size=size, workers=workers, progress=False)
                    rate = args.n / (time.perf_counter() - start)
                    cpu_rate = args.n / (_cpu_seconds() - cpu)
                    mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
                    print(f"{domain:<8} {size:>5} {workers:>8} {rate:>9.1f} {cpu_rate:>10.1f} {mb:>7.1f}", flush=True)
                finally:
                    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":  # the worker pool spawns processes that import this module
    main()
