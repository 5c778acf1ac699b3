"""Progress bars of long evaluation steps (feature extraction, fits): stage, count, elapsed, ETA, on
stderr, so a table piped from stdout stays clean."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def make_console(stderr: bool) -> Console:
    console = Console(stderr=stderr)
    # A log file or a pipe gets wide tables, not the 80 columns rich assumes without a terminal.
    return console if console.is_terminal else Console(stderr=stderr, width=160)


STDERR = make_console(stderr=True)


def progress(iterable: Iterable, description: str, total: int | None = None) -> Iterator:
    """A rich progress bar (stage, count, elapsed, ETA) over ``iterable``."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=STDERR) as bar:
        yield from bar.track(iterable, total=total, description=description)
