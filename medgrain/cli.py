"""``medgrain`` command line: parse, call the library, print. Imports are lazy so ``--help`` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_synth(a: argparse.Namespace) -> int:
    from .data.info import format_summary, summarize
    from .data.manifest import read_manifest
    from .data.synthetic import generate

    path = generate(a.domain, a.out, n=a.n, seed=a.seed, size=a.size, workers=a.workers)
    print(format_summary(summarize(read_manifest(path))))
    print(f"wrote {path}")
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from .data.info import format_summary, summarize
    from .data.manifest import read_manifest

    m = read_manifest(a.path, on_error=a.on_error)
    summary = summarize(m)
    print(json.dumps(summary, indent=2) if a.json else format_summary(summary))
    return 0


def _cmd_pretrain(a: argparse.Namespace) -> int:
    from .training.config import load_config
    from .training.loop import train

    cfg = load_config(a.config, a.overrides)
    result = train(cfg, resume=a.resume)
    print(f"last checkpoint: {result.last_checkpoint}")
    if result.best_checkpoint:
        print(f"best checkpoint: {result.best_checkpoint}")
    return 0


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a dual encoder (clip, mgll, mgca, mgca+mgll) from a YAML config",
                       description="Also runs under torchrun: torchrun --nproc_per_node N -m medgrain pretrain ...")
    p.add_argument("--config", required=True, help="YAML file, or the name of a preset in configs/")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=3e-4")
    p.set_defaults(func=_cmd_pretrain)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="medgrain", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"medgrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic multi-granular medical dataset")
    p.add_argument("--domain", default="cxr", choices=["cxr", "fundus"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("info", help="summarise a manifest")
    p.add_argument("path", type=Path)
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"])
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_info)

    _add_pretrain(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Errors the user can act on are printed plainly; set MEDGRAIN_DEBUG=1 for the traceback.
        import os

        if os.environ.get("MEDGRAIN_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
