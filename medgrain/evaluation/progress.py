"""Progress bars of long evaluation steps (feature extraction, fits): stage, count, elapsed, ETA, on
stderr, so a table piped from stdout stays clean."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from medgrain.console import STDERR


def progress(iterable: Iterable, description: str, total: int | None = None) -> Iterator:
    """A rich progress bar (stage, count, elapsed, ETA) over ``iterable``."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=STDERR) as bar:
        yield from bar.track(iterable, total=total, description=description)
