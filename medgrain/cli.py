"""``medgrain`` command line: parse, call the library, print. Imports are lazy so ``--help`` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .registry import RegistryChoices


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

    shorthands = (("objective.name", a.objective), ("model.preset", a.model))
    chosen = [f"{key}={value}" for key, value in shorthands if value]
    cfg = load_config(a.config, chosen + a.overrides)
    result = train(cfg, resume=a.resume)
    print(f"last checkpoint: {result.last_checkpoint}")
    if result.best_checkpoint:
        print(f"best checkpoint: {result.best_checkpoint}")
    return 0


def _cmd_prepare(a: argparse.Namespace) -> int:
    from .data.prepare import prepare

    skip = ("dataset", "root", "out", "func", "command", "debug", "extra")
    result = prepare(a.dataset, a.root, a.out, **{k: v for k, v in vars(a).items() if k not in skip})
    print(result)
    return 0


def _add_prepare(sub) -> None:
    from argparse import SUPPRESS

    p = sub.add_parser("prepare", help="turn a public dataset, as distributed, into a manifest",
                       description="See docs/datasets.md for where to get each dataset and what comes out. "
                                   "Options a dataset does not take are refused.")
    p.add_argument("dataset", choices=DATASETS, metavar="DATASET", help="one of: %(choices)s")
    p.add_argument("--root", type=Path, default=None, help="the dataset's folder as downloaded")
    p.add_argument("--out", type=Path, required=True, help="manifest.jsonl to write")
    opt = dict(default=SUPPRESS)
    p.add_argument("--seed", type=int, **opt, help="seed of the patient-level split")
    p.add_argument("--splits", type=Path, **opt,
                   help="a published split instead of a drawn one: a folder of BenchX list files "
                        "(train.txt, train_1.txt, train_10.txt, val.txt, test.txt), a CSV with an id and a split "
                        "column (GLoRIA/MGCA), or one list file such as MRM's test_list.txt")
    p.add_argument("--on-error", choices=["raise", "skip"], **opt, help="skip (and count) bad records")
    p.add_argument("--exclude", nargs="+", type=Path, **opt,
                   help="drop images that also appear in these manifests (perceptual hash)")
    p.add_argument("--leak-threshold", type=int, **opt, help="hamming distance (bits) counted as the same image")
    p.add_argument("--uncertain", choices=["negative", "positive", "mgca"], **opt,
                   help="how CheXpert-labeler uncertain (-1) labels are read")
    p.add_argument("--reports", type=Path, **opt, help="MIMIC-CXR: folder of the free-text reports")
    p.add_argument("--valid-fraction", type=float, **opt)
    p.add_argument("--test-fraction", type=float, **opt)
    p.add_argument("--train-file", **opt, help="COVIDx: the train label file name")
    p.add_argument("--test-file", **opt, help="COVIDx: the test label file name")
    p.add_argument("--manifest", type=Path, **opt,
                   help="MGLL-Fundus: the released annotation file; chexpert-5x200 / mimic-5x200 / ms-cxr: the "
                        "prepared CheXpert or MIMIC-CXR manifest to build from")
    p.add_argument("--ids", type=Path, **opt, help="5x200: a published id list (GLoRIA's chexpert_5x200.csv)")
    p.add_argument("--pretrain", type=Path, **opt, help="5x200: a pretraining manifest of the same source, ...")
    p.add_argument("--pretrain-out", type=Path, **opt, help="... written here without the 5x200 patients")
    p.add_argument("--labels-csv", type=Path, **opt,
                   help="chexpert-test / padchest / vindr-cxr: the labels CSV, when it is not under --root")
    p.add_argument("--physician-only", action="store_true", **opt,
                   help="PadChest: the physician-labelled subset only")
    p.add_argument("--min-readers", type=int, **opt,
                   help="VinDr-CXR: readers who must mark a finding for it to be a label (1 any, 2 majority)")
    p.add_argument("--flatten", action="store_true", **opt, help="MGLL-Fundus: one record per annotation")
    p.add_argument("--from-torchxrayvision", action="store_true", **opt,
                   help="OpenI: read the reports bundled in the torchxrayvision wheel, in place")
    p.add_argument("--images", type=Path, **opt, help="OpenI: folder of the images, if you have them")
    p.add_argument("--text-only", action="store_true", **opt, help="OpenI: records without images")
    p.set_defaults(func=_cmd_prepare)


def _cmd_shard(a: argparse.Namespace) -> int:
    from .data.shards import read_shards, write_shards

    path = write_shards(a.manifest, a.out, shard_size=a.shard_size, resize=a.resize, on_error=a.on_error)
    sharded = read_shards(a.out)
    print(f"wrote {len(sharded.reader.shards)} shard(s) with {len(sharded)} records to {a.out} (manifest: {path})")
    return 0


def _cmd_reproduce(a: argparse.Namespace) -> int:
    from .evaluation.present import print_tables
    from .evaluation.reproduce import parse_data, reproduce, reproduce_tables

    summary = reproduce(a.table, a.checkpoint, parse_data(a.data), out=a.out, seeds=tuple(a.seeds),
                        bootstrap=a.bootstrap, device=a.device, workers=a.workers)
    print_tables(reproduce_tables(summary))
    if summary["note"]:
        print(f"note: {summary['note']}")
    return 0


def _cmd_compare(a: argparse.Namespace) -> int:
    from .evaluation.compare import compare_command

    if a.bootstrap < 1:
        raise ValueError(f"compare: --bootstrap must be at least 1, got {a.bootstrap}")
    compare_command(a.a, a.b, a.bootstrap, a.seed, a.out)
    return 0


def _cmd_leakage(a: argparse.Namespace) -> int:
    from .data.leakage import find_leaks, format_leaks

    leaks = find_leaks(a.a, a.b, threshold=a.threshold, workers=a.workers)
    print(format_leaks(leaks, str(a.a), str(a.b)))
    return 1 if (leaks and a.fail) else 0


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluation import evaluate, evaluate_all, task_spec
    from .evaluation.present import print_tables
    from .evaluation.suite import suite_tables

    args, extra = build_evaluate_parser().parse_known_args(a.extra)
    if extra:
        flags = [x for x in extra if x.startswith("-")] or extra
        raise ValueError(f"medgrain evaluate {args.task}: option(s) {', '.join(flags)} do not apply to this task "
                         f"(medgrain evaluate {args.task} --help lists its options)")
    if args.max_image_pixels is not None:
        # through the environment, so it reaches every task and DataLoader worker without an option each
        import os

        from .data.imageio import MAX_PIXELS_ENV

        os.environ[MAX_PIXELS_ENV] = str(args.max_image_pixels)
    values = {k: v for k, v in vars(args).items() if k not in ("task", "out", "max_image_pixels")}
    if args.task == "all":
        record = evaluate_all(out=args.out, **values)
        print_tables(suite_tables(record))
    else:
        record = evaluate(args.task, out=args.out, **values)
        print_tables(task_spec(args.task).console(record))
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def add_option_flags(parser: argparse.ArgumentParser, options, fields=None, seen: set | None = None) -> None:
    """One flag per field of a pydantic options class (``--name-with-dashes``; its description as help, its
    type as argparse's type, choices or nargs). Absent flags are left out of the namespace, so the class's
    own defaults apply."""
    import types
    import typing

    seen = set() if seen is None else seen
    for name, field in options.model_fields.items():
        if (fields is not None and name not in fields) or name in seen:
            continue
        seen.add(name)
        kind = field.annotation
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: the flag takes an X
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        default = "" if field.default is None or field.is_required() else f" (default: {field.default})"
        kwargs: dict = {"help": f"{field.description or ''}{default}"}
        if not field.is_required():
            kwargs["default"] = argparse.SUPPRESS
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kwargs.update(choices=list(args), type=type(args[0]))
        elif origin in (tuple, list):
            kwargs.update(nargs="+", type=args[0])
        else:
            kwargs["type"] = kind if kind in (int, float, str, Path) else str
        parser.add_argument("--" + name.replace("_", "-"), required=field.is_required(), **kwargs)


def build_evaluate_parser() -> argparse.ArgumentParser:
    """``medgrain evaluate``'s full parser: one sub-command per registered task (and ``all``), each with the
    context's flags it uses and its options class's flags. Built when evaluate runs: it imports the tasks."""
    from .evaluation import EVAL_TASKS, ContextOptions, task_spec
    from .evaluation.context import OPTIONAL

    parser = argparse.ArgumentParser(prog="medgrain evaluate", description=EVALUATE_DESCRIPTION)
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    always = [f for f in ContextOptions.model_fields if f not in OPTIONAL]
    for name in EVAL_TASKS.names():
        spec = task_spec(name)
        p = sub.add_parser(name, help=spec.help, description=spec.help)
        add_option_flags(p, ContextOptions, [*always, *spec.context])
        p.add_argument("--out", type=Path, help="result JSON to write")
        add_option_flags(p, spec.options)
        _add_max_pixels(p)
    p = sub.add_parser("all", help="every task the data and the encoder allow, one JSON",
                       description="Runs every registered task the data and the encoder allow (the others are "
                                   "listed with the reason); epochs, patience, batch size and fractions follow the "
                                   "size of the data unless given. A task option goes to the tasks that take it.")
    add_option_flags(p, ContextOptions)
    p.add_argument("--out", type=Path, help="result JSON to write (rewritten after every task)")
    p.add_argument("--tasks", nargs="+", choices=EVAL_TASKS.names(), default=argparse.SUPPRESS,
                   help="the tasks to run (default: all)")
    seen: set = set()
    for name in EVAL_TASKS.names():
        add_option_flags(p, task_spec(name).options, seen=seen)
    _add_max_pixels(p)
    return parser


def _add_max_pixels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-image-pixels", type=int, metavar="N",
                   help="refuse images whose header claims more pixels, before decoding (default 89.5 Mpixel, PIL's)")


EVALUATE_DESCRIPTION = ("Each task writes JSON with its options, split sizes, metrics and per-image scores, and "
                        "prints a table. `medgrain evaluate TASK --help` lists a task's options. "
                        "See docs/evaluation.md.")

# The registries' names, read when an argument is checked or help is shown (building the parser imports
# nothing heavy): a new objective, dataset adapter or model preset appears here with no edit.
OBJECTIVES = RegistryChoices("medgrain.losses.objective", "OBJECTIVES")
DATASETS = RegistryChoices("medgrain.data.prepare", "PREPARERS")
MODELS = RegistryChoices("medgrain.models.factory", "MODEL_NAMES")


def _add_evaluate(sub) -> None:
    # The tasks and their flags come from the evaluation registry, which imports torch: the full parser is
    # built when `evaluate` runs (build_evaluate_parser), so `medgrain --help` stays instant.
    p = sub.add_parser("evaluate", add_help=False, usage="medgrain evaluate TASK --checkpoint C --data MANIFEST ...",
                       help="downstream evaluation of a checkpoint (or a random/imagenet baseline); "
                            "`medgrain evaluate --help` lists the tasks", description=EVALUATE_DESCRIPTION)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_attention(a: argparse.Namespace) -> int:
    from .models.attention_maps import attention_command

    out = attention_command(a.checkpoint, a.image, a.text, a.out, max_words=a.max_words, temperature=a.temperature)
    print(f"wrote {out}")
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from .report import report_command

    out = report_command(a.run_dirs, a.out, results=a.results, data=a.data, title=a.title, cache_dir=a.cache_dir)
    print(f"wrote {out}")
    return 0


def _cmd_ablate(a: argparse.Namespace) -> int:
    from .ablation import format_tables, run_ablation

    result = run_ablation(a.suite, a.data, a.out, seeds=tuple(a.seeds), budget=a.budget, device=a.device,
                          bootstrap=a.bootstrap, variants=tuple(a.variants) if a.variants else None,
                          finished_only=a.finished_only)
    print(format_tables(result))
    print(f"wrote {a.out / 'ablation.json'} and {a.out / 'table.md'} ({result['minutes']} min)")
    return 0


def _add_ablate(sub) -> None:
    from .ablation import ABLATIONS, BUDGETS

    p = sub.add_parser("ablate", help="the papers' ablations: every variant pretrained with the same budget and seeds, "
                                      "evaluated, and each claimed ordering tested",
                       description="Runs already finished in --out are reused, so an interrupted suite continues. "
                                   "See docs/results.md.")
    p.add_argument("suite", choices=ABLATIONS.names(), help="; ".join(f"{n}: {ABLATIONS.get(n).paper_metric}"
                                                                     for n in ABLATIONS.names()))
    p.add_argument("--data", type=Path, required=True, help="manifest.jsonl (e.g. from medgrain synth)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    p.add_argument("--variants", nargs="+", help="only these variants (names as in the table)")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples of the test images per interval")
    p.add_argument("--finished-only", action="store_true",
                   help="train nothing: tabulate the runs already finished in --out (a suite stopped early)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_cmd_ablate)


def _cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(a.domain, quick=a.quick, out=a.out, epochs=a.epochs, n=a.n, seed=a.seed, device=a.device,
             methods=tuple(a.methods) if a.methods else None)
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from .export import export

    print(f"wrote {export(a.checkpoint, a.format, a.out)}")
    return 0


def _cmd_encode(a: argparse.Namespace) -> int:
    from .export.encode import encode

    print(f"wrote {encode(a.checkpoint, a.data, a.out, split=a.split, batch_size=a.batch_size, workers=a.workers, device=a.device)}")
    return 0


def _add_encode(sub) -> None:
    p = sub.add_parser("encode", help="image and text embeddings of a manifest, as safetensors or Parquet",
                       description="Batched, with progress; resumable: a rerun skips the records already written "
                                   "(OUT.parts/ and OUT). Parquet needs pyarrow.")
    p.add_argument("checkpoint", help="a medgrain checkpoint, open_clip:local-dir:DIR or an hf export")
    p.add_argument("--data", required=True, type=Path, help="the manifest")
    p.add_argument("--out", required=True, type=Path, help="FILE.safetensors or FILE.parquet")
    p.add_argument("--split", choices=["train", "valid", "test"], help="one split (default: every record)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_cmd_encode)


def _add_export(sub) -> None:
    # --format is checked by medgrain.export's registry (importing the formats here would import torch)
    p = sub.add_parser("export", help="write a checkpoint for open_clip, Hugging Face transformers or LLaVA",
                       description="Formats: open_clip (an open_clip local-dir), hf (transformers folders and a "
                                   "model card), llava-vision (a vision tower for LlavaForConditionalGeneration). "
                                   "See docs/interop.md.")
    p.add_argument("checkpoint", help="a medgrain checkpoint folder or open_clip:local-dir:DIR")
    p.add_argument("--format", required=True, help="open_clip, hf or llava-vision")
    p.add_argument("--out", required=True, type=Path, help="a new (or empty) folder")
    p.set_defaults(func=_cmd_export)


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a dual encoder (CLIP, MGLL, MGCA, ...) from a YAML config",
                       description="Also runs under torchrun: torchrun --nproc_per_node N -m medgrain pretrain ...")
    p.add_argument("--config", required=True, help="YAML file, or the name of a shipped preset (medgrain/configs/)")
    p.add_argument("--objective", choices=OBJECTIVES, metavar="NAME",
                   help="the objective, instead of the config's objective.name: %(choices)s")
    p.add_argument("--model", choices=MODELS, metavar="PRESET",
                   help="the model preset, instead of the config's model.preset: %(choices)s")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=3e-4")
    p.set_defaults(func=_cmd_pretrain)


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic multi-granular medical dataset")
    p.add_argument("--domain", default="cxr", choices=["cxr", "fundus"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_cmd_synth)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="summarise a manifest")
    p.add_argument("path", type=Path)
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"])
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_info)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="pretrain every objective on synthetic data, evaluate, report",
                       description="Generates (or reuses) a synthetic dataset, pretrains every method (objective) "
                                   "with the same budget, evaluates each next to a random baseline, and writes "
                                   "OUT/results.json and OUT/report.html.")
    p.add_argument("--methods", nargs="+", choices=OBJECTIVES, metavar="NAME",
                   help="the objectives to compare (default: all of them): %(choices)s")
    p.add_argument("--domain", default="cxr", choices=["cxr", "fundus"])
    p.add_argument("--quick", action="store_true", help="a small budget (about 3 minutes on 2 CPU cores)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--epochs", type=int, help="pretraining epochs per method (a larger budget on a GPU)")
    p.add_argument("--n", type=int, help="number of synthetic studies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_cmd_demo)


def _add_attention(sub) -> None:
    p = sub.add_parser("attention", help="word-to-image attention maps of a checkpoint with token heads (MGCA)")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--text", required=True)
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--max-words", type=int, default=12)
    p.add_argument("--temperature", type=float, default=0.1, help="softmax temperature of word-to-patch attention")
    p.set_defaults(func=_cmd_attention)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="a self-contained HTML report of pretraining and evaluation runs")
    p.add_argument("run_dirs", nargs="*", type=Path, help="run folders (default: those listed in --results)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--results", type=Path, help="results.json of a demo")
    p.add_argument("--data", type=Path, help="manifest for the data sample and attention examples")
    p.add_argument("--title")
    p.add_argument("--cache-dir", type=Path)
    p.set_defaults(func=_cmd_report)


def _add_shard(sub) -> None:
    p = sub.add_parser("shard", help="pack a manifest into WebDataset tar shards (pretrain with data.shards=DIR)",
                       description="Writes DIR/shard-NNNNNN.tar, DIR/index.json (random access) and DIR/manifest.jsonl. "
                                   "The shards are plain WebDataset: open_clip's loader streams them too.")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", required=True, type=Path, help="an empty folder")
    p.add_argument("--resize", type=int, metavar="PX", help="re-encode images as PNG with the shorter side PX")
    p.add_argument("--shard-size", type=int, default=1000, help="records per shard")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"])
    p.set_defaults(func=_cmd_shard)


def _add_leakage(sub) -> None:
    p = sub.add_parser("leakage", help="images of manifest B that also appear in manifest A (perceptual hash)")
    p.add_argument("a", type=Path, help="e.g. the pretraining manifest")
    p.add_argument("b", type=Path, help="e.g. a downstream test manifest")
    p.add_argument("--threshold", type=int, default=12, help="hamming distance in bits (of 256) counted as a match")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--fail", action="store_true", help="exit with status 1 when any image leaks")
    p.set_defaults(func=_cmd_leakage)


def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="run a paper table's protocol and print the paper's numbers next to ours",
                       description="Tables: mgca-linear-probe, mgca-segmentation, mgca-detection, mgll-linear-probe, "
                                   "mgll-finetune (docs/evaluation.md, Reproducing the papers' tables). Each dataset "
                                   "runs with the paper's split rule, label fractions, solver, selection rule and "
                                   "metric; datasets without --data are listed with where to get them.")
    p.add_argument("table")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", nargs="*", default=[], metavar="NAME=MANIFEST",
                   help="e.g. chexpert=manifests/chexpert.jsonl rsna-pneumonia=manifests/rsna.jsonl")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run (and label draw) per seed")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals")
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the table, the missing datasets and every result as JSON")
    p.set_defaults(func=_cmd_reproduce)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="paired bootstrap difference of two evaluations on the same test set",
                       description="Per metric: A, B, A - B with its 95% interval and the p-value of no difference, "
                                   "from the per-image values both result files stored (zero-shot, linear-probe, "
                                   "finetune, grounding).")
    p.add_argument("a", type=Path, help="result JSON of `medgrain evaluate ... --out`")
    p.add_argument("b", type=Path, help="result JSON of the same task on the same data")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    p.add_argument("--out", type=Path, help="write the comparison JSON here")
    p.set_defaults(func=_cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="medgrain",
        description="Medical vision-language pretraining at several text granularities: MGLL, MGCA, CLIP.",
    )
    parser.add_argument("--version", action="version", version=f"medgrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_synth(sub)
    _add_info(sub)
    _add_pretrain(sub)
    _add_ablate(sub)
    _add_evaluate(sub)
    _add_prepare(sub)
    _add_export(sub)
    _add_encode(sub)
    _add_demo(sub)
    _add_attention(sub)
    _add_report(sub)
    _add_shard(sub)
    _add_leakage(sub)
    _add_reproduce(sub)
    _add_compare(sub)
    _add_debug(parser, sub)
    return parser


def _add_debug(parser: argparse.ArgumentParser, sub) -> None:
    """``--debug`` before or after the subcommand: show the traceback of a user's error."""
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or MEDGRAIN_DEBUG=1)")
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    import os

    from .errors import user_message

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "evaluate":  # evaluate parses its own (build_evaluate_parser)
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    from .console import install_console_logging

    install_console_logging()  # the library logs; the command line shows its messages on stderr
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # A user's mistake (medgrain.errors maps which) is one short message and status 1; a bug keeps
        # its traceback, as does every error under --debug or MEDGRAIN_DEBUG=1.
        message = user_message(e)
        if message is None or args.debug or os.environ.get("MEDGRAIN_DEBUG", "0") not in ("", "0"):
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
