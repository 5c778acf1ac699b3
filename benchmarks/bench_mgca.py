"""MGCA loss timings, run by hand: ``python benchmarks/bench_mgca.py [--threads 2] [--repeats 20]``.

(a) ``merge_wordpieces`` against the per-token Python loop it replaces (MGCA's ``aggregate_tokens``
    walks every report token by token), at N=64 reports of L=112 pieces, D=384.
(b) ``MGCALoss`` forward+backward against ``instance_alignment_loss`` alone (what a CLIP-style
    objective costs), at N=64 with ViT-S/16-like tokens: M=196 patches, W=60 word slots (reports of
    20-60 words), d=128, K=500 prototypes.

On CPU, and on CUDA when available. Prints median milliseconds per call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from medgrain.losses.mgca import MGCALoss, instance_alignment_loss, token_weights_from_attention
from medgrain.models.wordpieces import merge_wordpieces


def _time(fn, device: torch.device, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _word_ids(n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """[CLS] piece... [SEP] then padding; words of 1-3 pieces; reports of 30 to L-2 pieces."""
    rows = []
    for _ in range(n):
        pieces = int(torch.randint(30, length - 1, (1,), generator=generator))
        row, word = [-1], 0
        while len(row) < pieces + 1:
            row += [word] * int(torch.randint(1, 4, (1,), generator=generator))
            word += 1
        row = row[: pieces + 1] + [-1]
        rows.append(row + [-1] * (length - len(row)))
    return torch.tensor(rows)


def merge_wordpieces_loop(hidden, attention, word_ids):
    """The per-token walk, for comparison (sum reduction)."""
    n, length, dim = hidden.shape
    num_words = int(word_ids.max()) + 1
    words = hidden.new_zeros(n, num_words, dim)
    word_attention = attention.new_zeros(n, num_words)
    ids = word_ids.tolist()
    for i in range(n):
        for t in range(length):
            w = ids[i][t]
            if w >= 0:
                words[i, w] += hidden[i, t]
                word_attention[i, w] += attention[i, t]
    return words, word_attention


def bench_merge(device: torch.device, repeats: int) -> list[tuple[str, float]]:
    g = torch.Generator().manual_seed(0)
    n, length, dim = 64, 112, 384
    hidden = torch.randn(n, length, dim, generator=g).to(device)
    attention = torch.rand(n, length, generator=g).to(device)
    word_ids = _word_ids(n, length, g).to(device)
    fast = merge_wordpieces(hidden, attention, word_ids)
    slow = merge_wordpieces_loop(hidden, attention, word_ids)
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-5, atol=1e-5)
    return [
        (
            "merge_wordpieces (index_add)",
            _time(lambda: merge_wordpieces(hidden, attention, word_ids), device, repeats),
        ),
        (
            "per-token Python loop",
            _time(
                lambda: merge_wordpieces_loop(hidden, attention, word_ids), device, max(3, repeats // 5), 1
            ),
        ),
    ]


def bench_loss(device: torch.device, repeats: int) -> list[tuple[str, float]]:
    g = torch.Generator().manual_seed(0)
    n, m, w, d, k = 64, 196, 60, 128, 500

    def leaf(*shape):
        return F.normalize(torch.randn(*shape, generator=g), dim=-1).to(device).requires_grad_(True)

    image, text, patches, words = leaf(n, d), leaf(n, d), leaf(n, m, d), leaf(n, w, d)
    word_mask = (torch.arange(w) < torch.randint(20, w + 1, (n, 1), generator=g)).to(device)
    patch_weights = token_weights_from_attention(
        torch.rand(n, m, generator=g).to(device), torch.ones(n, m, dtype=torch.bool, device=device)
    )
    word_weights = token_weights_from_attention(torch.rand(n, w, generator=g).to(device), word_mask)
    inputs = (image, text, patches, words, word_mask, patch_weights, word_weights)

    def step(fn):
        def run():
            fn().backward()
            for t in (image, text, patches, words):
                t.grad = None

        return run

    rows = [
        (
            "ITA alone (instance_alignment_loss)",
            _time(step(lambda: instance_alignment_loss(image, text)), device, repeats),
        )
    ]
    for learnable in (False, True):
        criterion = MGCALoss(num_prototypes=k, embed_dim=d, learnable_cross_attention=learnable).to(device)
        name = "MGCALoss (learnable attention)" if learnable else "MGCALoss (parameter-free attention)"
        rows.append((name, _time(step(lambda c=criterion: c(*inputs)["loss"]), device, repeats)))
    if device.type == "cuda":
        criterion = MGCALoss(num_prototypes=k, embed_dim=d).to(device)
        bf16 = tuple(t.bfloat16() if t.is_floating_point() else t for t in inputs)

        def autocast_loss():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return criterion(*bf16)["loss"]

        rows.append(("MGCALoss, bf16 inputs under autocast", _time(step(autocast_loss), device, repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    print(f"{'benchmark':<52} {'device':<8} {'ms/call':>10}")
    for device in devices:
        name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        for section, bench in (
            ("(a) N=64 L=112 D=384", bench_merge),
            ("(b) fwd+bwd N=64 M=196 W=60 d=128 K=500", bench_loss),
        ):
            print(f"{section}  [{name}]")
            for label, ms in bench(device, args.repeats):
                print(f"  {label:<50} {device.type:<8} {ms:>10.2f}")


if __name__ == "__main__":
    main()
