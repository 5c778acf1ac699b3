"""Issue 10's acceptance check for evaluation tasks: a task registered here, in the test module, appears in
`medgrain evaluate` (its name among the choices, its options as flags), runs in `evaluate all`, and gets
its table and ROC curves in the report, with no other edit. Also: every registered task is reachable from
the command line with every option of its class."""

import json

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

from medgrain import cli
from medgrain.evaluation import (
    EVAL_TASKS,
    PerImageScores,
    TaskResult,
    evaluate_all,
    register_task,
    task_specs,
)


class ToyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shift: float = Field(0.0, description="added to every score")


def _toy(ctx, options: ToyOptions) -> TaskResult:
    """Scores each image of the split by its image embedding's first coordinate (plus ``shift``)."""
    from medgrain.evaluation.features import extract_features

    test = extract_features(ctx.encoder, ctx.manifest, ctx.split, "embedding", cache_dir=ctx.cache_dir)
    scores = np.repeat(test.features[:, :1], len(ctx.manifest.finding_names), axis=1) + options.shift
    result = TaskResult(options.model_dump(), {"macro": {"mean_score": float(scores.mean()), "images": len(scores)}})
    result.scores = PerImageScores(test.ids, ctx.manifest.finding_names, scores, test.labels, "first coordinate")
    return result


@pytest.fixture
def toy():
    register_task("toy", options=ToyOptions, context=("cache_dir",), help="a toy task", scores=True)(_toy)
    yield "toy"
    EVAL_TASKS.unregister("toy")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from medgrain.data.synthetic import generate

    return generate("cxr", tmp_path_factory.mktemp("toy") / "data", n=30, seed=2, size=32, workers=1)


def _subparser(task: str):
    parser = cli.build_evaluate_parser()
    (sub,) = [a for a in parser._actions if a.dest == "task"]
    return sub.choices[task]


def _flags(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("task", [spec.name for spec in task_specs()])
def test_every_registered_task_is_reachable_from_the_command_line(task):
    spec = next(s for s in task_specs() if s.name == task)
    flags = _flags(_subparser(task))
    for field in spec.options.model_fields:
        assert f"--{field.replace('_', '-')}" in flags, (task, field)
    for field in spec.context:
        assert f"--{field.replace('_', '-')}" in flags, (task, field)
    assert spec.tables({}) is not None and spec.title


def test_toy_task_in_the_cli_the_suite_and_the_report(toy, manifest, tmp_path, capsys):
    from medgrain.report import build_report

    assert "--shift" in _flags(_subparser("toy")) and "--seeds" not in _flags(_subparser("toy"))
    assert "--shift" in _flags(_subparser("all"))
    out = tmp_path / "toy.json"
    args = ["evaluate", "toy", "--checkpoint", "random", "--data", str(manifest), "--cache-dir", str(tmp_path / "c")]
    assert cli.main([*args, "--shift", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["task"] == "toy" and record["options"]["shift"] == 2.0
    assert record["metrics"]["macro"]["mean_score"] > 1  # embeddings are unit vectors: the shift dominates
    assert len(record["scores"]["ids"]) == record["splits"]["test"]
    assert "mean_score" in capsys.readouterr().out  # the default console table
    assert cli.main([*args, "--seeds", "1"]) == 1  # a user error (status 1): an option the toy's registration does not take
    assert "--seeds" in capsys.readouterr().err

    run = tmp_path / "random"
    suite = evaluate_all("random", manifest, run / "eval" / "all.json", tasks=["toy"], shift=1.0,
                         cache_dir=tmp_path / "c")
    assert suite["metrics"]["toy"]["options"]["shift"] == 1.0 and "scores" in suite["metrics"]["toy"]
    html = build_report([run], tmp_path / "report.html", data_manifest=manifest, cache_dir=tmp_path / "c",
                        attention_records=0).read_text()
    assert 'id="table-toy"' in html and "mean_score" in html
    assert 'id="roc-toy"' in html


def test_bad_options_are_named_before_the_encoder_loads(manifest):
    from medgrain.evaluation import evaluate, zero_shot
    from medgrain.registry import UnknownEntryError

    with pytest.raises(ValueError, match="zero-shot: option 'c_grid' does not apply"):
        zero_shot("no-such-checkpoint", manifest, c_grid=(1.0,))
    with pytest.raises(ValueError, match=r"zero-shot: option\(s\) seeds do not apply to this task"):
        zero_shot("no-such-checkpoint", manifest, seeds=(1,))
    with pytest.raises(ValueError, match="zero-shot: mode must be one of 'auto', 'pairs' or 'softmax', got 'both'"):
        zero_shot("no-such-checkpoint", manifest, mode="both")
    with pytest.raises(ValueError, match="c_grid apply to none of the tasks"):
        evaluate_all("no-such-checkpoint", manifest, tasks=["retrieval"], c_grid=(1.0,))
    with pytest.raises(UnknownEntryError, match="unknown evaluation task 'nosuch'"):
        evaluate("nosuch", "no-such-checkpoint", manifest)
    with pytest.raises(FileNotFoundError, match="not a medgrain model directory"):
        zero_shot("no-such-checkpoint", manifest)


def test_registering_a_task_checks_its_declaration():
    with pytest.raises(ValueError, match="unknown context fields \\['epochs'\\]"):
        register_task("bad", options=ToyOptions, context=("epochs",))
    with pytest.raises(TypeError, match="pydantic model class"):
        register_task("bad", options=dict)
    assert "bad" not in EVAL_TASKS
