"""One channel for messages: the library logs, the command line shows the log on stderr."""

import ast
import json
import logging
from pathlib import Path

import pytest

from medgrain.console import install_console_logging
from medgrain.training.logging import RunLogger

PACKAGE = Path(__file__).resolve().parents[1] / "medgrain"


@pytest.fixture
def console_handler():
    handler = install_console_logging()
    yield handler
    logging.getLogger("medgrain").removeHandler(handler)


def test_installed_once_and_library_warnings_reach_stderr(console_handler, tmp_path, capsys):
    assert install_console_logging() is console_handler
    assert sum(getattr(h, "_medgrain_console", False) for h in logging.getLogger("medgrain").handlers) == 1
    run = RunLogger(tmp_path, tensorboard=False, progress=False)
    run.warn("step 3: a micro-batch had no record left to train on")
    run.log({"split": "valid", "step": 4, "loss": 1.25})
    err = capsys.readouterr().err
    # stderr is not a terminal here: plain lines, never wrapped, so a reader can grep them
    assert "WARNING medgrain.training.logging: step 3: a micro-batch had no record left to train on\n" in err
    assert "INFO medgrain.training.logging: [valid] step 4 loss 1.2500\n" in err
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"split": "warning", "message": "step 3: a micro-batch had no record left to train on"} in rows


def test_the_handler_follows_a_replaced_stderr(console_handler, capsys):
    logging.getLogger("medgrain.demo").info("first")
    assert "first" in capsys.readouterr().err
    logging.getLogger("medgrain.demo").info("second")  # pytest gave this read a fresh capture
    assert "second" in capsys.readouterr().err


def _calls(tree: ast.AST, name: str) -> list[int]:
    """Lines calling the bare name (``print(...)``, ``Console(...)``) or ``module.Console(...)``;
    ``console.print(...)`` on a console made elsewhere is not a new channel."""
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and (getattr(node.func, "id", None) == name
                 or (name != "print" and getattr(node.func, "attr", None) == name))]


def test_library_code_neither_prints_nor_opens_its_own_console():
    """print() belongs to the command line (it presents results); a rich Console only to
    medgrain.console and to renderers that write into a string (data/info.py)."""
    allowed = {"print": {"cli.py"}, "Console": {"console.py", "data/info.py"}}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        relative = path.relative_to(PACKAGE).as_posix()
        for name, places in allowed.items():
            found += [f"{relative}:{line} {name}()" for line in _calls(tree, name) if relative not in places]
    assert found == []
