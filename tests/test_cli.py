import subprocess
import sys

import pytest

from medgrain import cli


def _evaluate_choices() -> list[str]:
    parser = cli.build_evaluate_parser()
    (sub,) = [a for a in parser._actions if a.dest == "task"]
    return list(sub.choices)


def test_cli_choices_match_the_registries():
    # Datasets, objectives and model presets: tests/test_registries.py, parametrised over their registries.
    from medgrain.evaluation import EVAL_TASKS

    assert _evaluate_choices() == [*EVAL_TASKS.names(), "all"]


def test_help_imports_nothing_heavy():
    code = ("import sys; from medgrain.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'timm', 'transformers', 'segmentation_models_pytorch') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_user_errors_are_printed_without_traceback(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "missing.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "manifest not found" in err and "Traceback" not in err


def test_bad_config_key_is_named(tmp_path, capsys):
    assert cli.main(["pretrain", "--config", "tiny-clip", "optim.lrr=1"]) == 1
    assert "optim.lrr" in capsys.readouterr().err


def test_evaluate_refuses_options_of_other_tasks(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "nosuchtask", "--checkpoint", "random", "--data", "x.jsonl"])
    rc = cli.main(["evaluate", "retrieval", "--checkpoint", "random", "--data", str(tmp_path / "m.jsonl"),
                   "--c-grid", "1.0"])
    assert rc == 1 and "--c-grid" in capsys.readouterr().err
