"""Every entry of every registry is reachable: from the command line (its choices), the config (validation
accepts it) and, for objectives, the report. A toy objective registered here shows that adding one needs
no other edit: it is validated, offered by the CLI, shown in the report and trained."""

import json
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path

import pytest

from medgrain import cli
from medgrain.data.prepare import PREPARERS, options
from medgrain.export import EXPORT_FORMATS, export, format_names
from medgrain.losses.objective import OBJECTIVES, ClipObjective, ObjectiveOptions
from medgrain.models import get_model_config, list_models
from medgrain.registry import Entry, UnknownEntryError
from medgrain.report import build_report
from medgrain.report.plots import PALETTE, method_colours
from medgrain.training.config import ConfigError, load_config

PARSER = cli.build_parser()
REPO = Path(__file__).resolve().parents[1]


def _subparser(name: str):
    return next(a for a in PARSER._subparsers._group_actions[0].choices.items() if a[0] == name)[1]


def _config(**sections):
    return load_config({"data": {"manifest": "m.jsonl"}, "objective": {"name": "clip"}, **sections})


# ------------------------------------------------------------------------------------ objectives


def _report(tmp_path, method: str, auroc: float = 0.6) -> str:
    """The report of a stored result that names ``method`` next to clip and the random baseline."""
    results = {"baseline": "random", "methods": {
        "random": {"metrics": {"zero-shot": {"AUROC": 0.5}}},
        "clip": {"objective": "clip", "metrics": {"zero-shot": {"AUROC": 0.7}}},
        method: {"objective": method, "metrics": {"zero-shot": {"AUROC": auroc}}},
    }}
    return build_report([], tmp_path / "report.html", results=results).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_is_reachable(name, tmp_path):
    assert name in list(cli.OBJECTIVES)
    assert PARSER.parse_args(["pretrain", "--config", "tiny-clip", "--objective", name]).objective == name
    assert PARSER.parse_args(["demo", "--methods", name]).methods == [name]
    assert _config(objective={"name": name}).objective.name == name
    html = _report(tmp_path, name)
    assert f"<dt>{escape(name)}</dt><dd>{escape(OBJECTIVES.help(name))}</dd>" in html
    colour = method_colours(["random", *OBJECTIVES.names()])[name]
    assert f'<span class="swatch" style="background:{colour}"></span>{escape(name)}' in html
    if OBJECTIVES.get(name).aligns_tokens:
        assert escape(name) in html[html.index('id="attention"'):]


def test_objective_colours_are_distinct_and_stable():
    colours = method_colours(["random", "imagenet", *OBJECTIVES.names(), "someone-else"])
    assert len(set(colours.values())) == len(colours)
    assert [colours[n] for n in OBJECTIVES.names()] == list(PALETTE[:len(OBJECTIVES)])


def test_unknown_objective_is_refused_by_the_cli(capsys):
    with pytest.raises(SystemExit):
        PARSER.parse_args(["pretrain", "--config", "tiny-clip", "--objective", "mglll"])
    assert f"choose from {', '.join(repr(n) for n in OBJECTIVES)}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ dataset adapters


@pytest.mark.parametrize("name", PREPARERS.names())
def test_dataset_adapter_is_reachable(name, tmp_path):
    assert name in list(cli.DATASETS)
    args = PARSER.parse_args(["prepare", name, "--out", str(tmp_path / "m.jsonl")])
    assert args.dataset == name
    flags = {a.dest for a in _subparser("prepare")._actions}
    missing = sorted(set(options(name)) - flags)
    assert not missing, f"{name}'s options {missing} have no command-line flag"
    assert PREPARERS.help(name)


# ------------------------------------------------------------------------------------ model presets


@pytest.mark.parametrize("name", list_models())
def test_model_preset_is_reachable(name):
    assert name in list(cli.MODELS)
    assert PARSER.parse_args(["pretrain", "--config", "tiny-clip", "--model", name]).model == name
    assert _config(model={"preset": name}).model.preset == name
    assert get_model_config(name).embed_dim >= 1


def test_unknown_preset_is_named_by_the_config_and_the_cli(capsys):
    with pytest.raises(ConfigError, match="model.preset: unknown model preset 'tinyy'; known: tiny"):
        _config(model={"preset": "tinyy"})
    with pytest.raises(SystemExit):
        PARSER.parse_args(["pretrain", "--config", "tiny-clip", "--model", "x"])
    assert "invalid choice: 'x'" in capsys.readouterr().err
    # A model another library provides by reference is a name too (medgrain.models.factory.MODEL_SOURCES).
    assert _config(model={"preset": "open_clip:ViT-B-32"}).model.preset == "open_clip:ViT-B-32"
    assert PARSER.parse_args(["pretrain", "--config", "tiny-clip", "--model", "open_clip:ViT-B-32"]).model


def test_every_model_preset_is_documented():
    """docs/architecture.md's preset table describes every registered preset (towers, heads, use)."""
    table = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert [name for name in list_models() if f"| `{name}` |" not in table] == []


def test_list_models_filters_like_timm():
    assert list_models("mgca*") == ["mgca-resnet50-paper", "mgca-vit-paper"]
    assert list_models() == sorted(list_models())


# ------------------------------------------------------------------------------------ export formats


@pytest.mark.parametrize("name", format_names())
def test_export_format_is_reachable(name, tmp_path, monkeypatch):
    """`medgrain export --format NAME` reaches the exporter registered as NAME, with the checkpoint loaded
    and the output folder as given (the exporter itself is tested in tests/test_export_*.py)."""
    assert EXPORT_FORMATS.help(name)
    calls = []
    monkeypatch.setattr("medgrain.models.load_pretrained", lambda checkpoint: f"loaded {checkpoint}")
    exporter = lambda pretrained, source, out: calls.append((pretrained, out)) or out  # noqa: E731
    monkeypatch.setitem(EXPORT_FORMATS._entries, name, Entry(name, exporter))  # restored after the test
    assert cli.main(["export", "ckpt", "--format", name, "--out", str(tmp_path / "out")]) == 0
    assert calls == [("loaded ckpt", tmp_path / "out")]


def test_export_help_names_every_registered_format(capsys):
    """The help lists the formats by hand (building the parser must not import torch): it must not fall behind."""
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in format_names()), help_text


def test_unknown_export_format_lists_the_registered_ones(tmp_path):
    with pytest.raises(UnknownEntryError, match="unknown export format 'onnx'; known: " + ", ".join(format_names())):
        export(tmp_path, "onnx", tmp_path / "out")


# ------------------------------------------------------------------------------------ a new objective

TOY = "toy-finest-clip"


class FinestClipOptions(ObjectiveOptions):
    granularity: int = -1  # which granularity, by index, coarse to fine


class FinestClip(ClipObjective):
    """CLIP against one granularity's text (by default the finest), a toy objective for this test."""

    name = TOY

    @classmethod
    def from_config(cls, cfg, granularities: Sequence[str], has_report: bool, embed_dim: int) -> ClipObjective:
        return cls(granularities, granularities[getattr(cfg, TOY).granularity])


@pytest.fixture
def toy_objective():
    OBJECTIVES.add(TOY, FinestClip, options=FinestClipOptions, improves_on=("clip",))
    yield TOY
    OBJECTIVES.unregister(TOY)


def test_a_registered_objective_needs_no_other_edit(toy_objective, tmp_path):
    # Config: the name, and its own section with its options, are validated.
    cfg = _config(objective={"name": TOY, TOY: {"granularity": 0}})
    assert cfg.objective.name == TOY and getattr(cfg.objective, TOY).granularity == 0
    with pytest.raises(ConfigError, match=f"objective.{TOY}.granularityy: unknown key"):
        _config(objective={"name": TOY, TOY: {"granularityy": 0}})
    # Command line: offered, with its help listing it.
    assert PARSER.parse_args(["demo", "--methods", "clip", TOY]).methods == ["clip", TOY]
    assert TOY in _subparser("pretrain").format_help()
    # Report: its row, its colour, its description and the claim it makes (beating clip) in the summary.
    html = _report(tmp_path, TOY, auroc=0.6)
    assert f'<span class="swatch" style="background:{PALETTE[len(OBJECTIVES) - 1]}"></span>{TOY}' in html
    assert f"<dt>{TOY}</dt><dd>CLIP against one granularity" in html
    assert f"{TOY} does not beat clip" in html


def test_a_registered_objective_trains(toy_objective, tmp_path):
    from medgrain.data.synthetic import generate
    from medgrain.training.loop import train

    manifest = generate("cxr", tmp_path / "data", n=24, seed=3, size=32, workers=1)
    cfg = load_config({
        "data": {"manifest": str(manifest), "valid_split": None},
        "model": {"preset": "tiny", "overrides": {"image": {"image_size": 32}}},
        "objective": {"name": TOY},
        "train": {"output_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 8, "stop_after_steps": 2,
                  "log_every": 1, "progress": False, "tensorboard": False},
    })
    result = train(cfg)
    assert result.last_checkpoint is not None
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("split") == "train"]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["loss"]) for r in steps)
    run_yaml = (tmp_path / "run" / "run.yaml").read_text()
    assert f"name: {TOY}" in run_yaml and f"{TOY}:\n    granularity: -1" in run_yaml


def test_pretrain_shorthands_reach_the_config(monkeypatch, capsys):
    import medgrain.training.loop as loop

    seen = []
    monkeypatch.setattr(loop, "train", lambda cfg, resume=False: seen.append(cfg) or loop.TrainResult(
        output_dir=cfg.train.output_dir, last_checkpoint=cfg.train.output_dir, best_checkpoint=None, history=[],
        skipped_steps=0, skipped_records=0))
    assert cli.main(["pretrain", "--config", "tiny-clip", "--objective", "mgca", "--model", "tiny-mgca"]) == 0
    assert (seen[0].objective.name, seen[0].model.preset) == ("mgca", "tiny-mgca")
    # An explicit override still wins over the shorthand (it comes later).
    assert cli.main(["pretrain", "--config", "tiny-clip", "--objective", "mgca", "objective.name=mgll"]) == 0
    assert seen[1].objective.name == "mgll"
