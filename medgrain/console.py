"""The console of the command line: where log records and progress bars go.

The library only logs (``logging.getLogger(__name__)``) and shows progress bars; it never prints.
The command line installs one handler for the ``medgrain`` loggers with ``install_console_logging``:
rich's ``RichHandler`` on a terminal, sharing ``STDERR`` with the progress bars so that a message
prints above a live bar instead of through it, and plain ``LEVEL name: message`` lines when stderr is
a file or a pipe (rich would wrap them at its assumed width, splitting a line a reader greps for).
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console

_HANDLER_FLAG = "_medgrain_console"


def make_console(stderr: bool) -> Console:
    console = Console(stderr=stderr)
    # A log file or a pipe gets wide tables, not the 80 columns rich assumes without a terminal.
    return console if console.is_terminal else Console(stderr=stderr, width=160)


STDERR = make_console(stderr=True)


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a record is written (a test's capture, a
    redirect made after start-up), not the stream it saw when installed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def install_console_logging(level: int = logging.INFO) -> logging.Handler:
    """Send the ``medgrain`` loggers' records of ``level`` and above to stderr; once per process
    (a second call returns the handler already installed)."""
    root = logging.getLogger("medgrain")
    for handler in root.handlers:
        if getattr(handler, _HANDLER_FLAG, False):
            return handler
    if STDERR.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=STDERR, show_path=False, markup=False)
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    setattr(handler, _HANDLER_FLAG, True)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
