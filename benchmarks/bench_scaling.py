"""Samples per second of pretraining with 1 process, 2 processes on one node, and 2 "nodes" of one
process each (two torchrun launches joined by a c10d rendezvous on localhost), the global batch fixed.

Run by hand (not a test):
    python benchmarks/bench_scaling.py --global-batch 32 --steps 6

Each run is ``medgrain pretrain`` on a synthetic dataset with the tiny preset (``--config tiny-mgll``);
the throughput is the median of the logged ``samples_per_s`` after the first step (which includes
start-up). On one CPU the processes compete for the same cores, so this measures the overhead of the
process group and gathering, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples_per_s(out: Path) -> float:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if r.get("split") == "train"][1:]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--objective", default="mgll")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    with tempfile.TemporaryDirectory(prefix="medgrain_scaling_") as tmp:
        from medgrain.data.synthetic import generate

        manifest = generate("cxr", Path(tmp) / "data", n=args.global_batch * (args.steps + 2), seed=0, size=64, workers=1)

        def pretrain(out: str, per_process: int) -> list[str]:
            return ["-m", "medgrain", "pretrain", "--config", "tiny-mgll", f"data.manifest={manifest}",
                    f"objective.name={args.objective}", "train.epochs=1", f"train.stop_after_steps={args.steps}",
                    "train.log_every=1", "train.progress=false", "train.tensorboard=false",
                    "train.eval_at_start=false", "data.valid_split=null", f"train.batch_size={per_process}",
                    f"train.output_dir={Path(tmp) / out}"]

        g = args.global_batch
        subprocess.run([sys.executable, *pretrain("one", g)], env=env, check=True, capture_output=True)
        torchrun = [sys.executable, "-m", "torch.distributed.run"]
        subprocess.run([*torchrun, "--standalone", "--nproc_per_node", "2", *pretrain("two", g // 2)],
                       env=env, check=True, capture_output=True)
        endpoint = f"localhost:{_free_port()}"
        nodes = [subprocess.Popen([*torchrun, "--nnodes", "2", "--node_rank", str(r), "--nproc_per_node", "1",
                                   "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, *pretrain("nodes", g // 2)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for r in range(2)]
        if any(p.wait() for p in nodes):
            raise SystemExit("the 2-node run failed")
        print(f"global batch {g}, objective {args.objective}, tiny preset at 64 px, {args.steps} steps")
        print(f"{'layout':28} {'samples/s':>10}")
        for name, out in (("1 process", "one"), ("2 processes, 1 node", "two"), ("2 nodes x 1 process", "nodes")):
            print(f"{name:28} {_samples_per_s(Path(tmp) / out):>10.1f}")


if __name__ == "__main__":
    main()
