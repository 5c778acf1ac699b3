"""How a user's mistake reaches the console: the one map from error types to messages.

Errors raised for a user's data, config or files (a manifest line, an image, a checkpoint file) are
printed by the CLI as a short message naming the file, line or record, and field, with exit status 1;
``--debug`` or ``MEDGRAIN_DEBUG=1`` shows the traceback instead. Anything not in the map is a bug in
medgrain and keeps its traceback. A new error type joins with ``user_error``::

    @user_error
    class MyError(ValueError): ...

or, for a type medgrain does not own, ``user_error(TheirError, format=lambda e: ...)``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

UserErrorFormat = Callable[[BaseException], str]
_USER_ERRORS: dict[type[BaseException], UserErrorFormat] = {}


def user_error(kind: type[BaseException] | None = None, *, format: UserErrorFormat = str):
    """Register ``kind`` (and its subclasses) as a user's error, printed as ``format(error)``. Works as
    a plain call or as a class decorator."""
    def register(cls: type[BaseException]) -> type[BaseException]:
        _USER_ERRORS[cls] = format
        return cls

    return register if kind is None else register(kind)


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be loaded: truncated, not safetensors, or a
    ``train_state.pt`` holding something other than tensors (refused by ``weights_only=True``)."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot load {self.path}: {reason}")


user_error(CheckpointError)


def _load_failure(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) or "Weights only load failed" in text:
        return ("the file holds something other than tensors (objects that would run code when unpickled) "
                "and was not loaded; medgrain only reads files it wrote")
    if type(error).__name__ == "SafetensorError":
        return f"not a valid safetensors file ({text})"
    if isinstance(error, EOFError) or "PytorchStreamReader" in text or "central directory" in text:
        return "the file is truncated or not a PyTorch file (was a write interrupted?)"
    if isinstance(error, KeyError):
        return f"required entry {error.args[0]!r} is missing"
    return text.split("\n")[0]


@contextmanager
def loading(path: str | Path) -> Iterator[None]:
    """Turn whatever a weights or state loader raises (safetensors' header errors, ``torch.load``'s
    refusals and zip errors) into a ``CheckpointError`` that names ``path``."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(path, _load_failure(e)) from e


def _os_error(e: BaseException) -> str:
    # "[Errno 2] No such file or directory: 'x'" -> "No such file or directory: x"
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{e.strerror}: {e.filename}"
    return str(e)


_WORKER_TRACE = re.compile(r"Original Traceback \(most recent call last\):.*\n(?:[\w.]+: )?(?P<last>[^\n]+)\s*$", re.S)


def _runtime_error(e: BaseException) -> str:
    """A DataLoader worker's error comes back as a RuntimeError holding the worker's whole traceback
    (when its type cannot be rebuilt from a message): keep only the last line, the error itself."""
    m = _WORKER_TRACE.search(str(e))
    return m.group("last") if m else str(e)


# Builtin types that medgrain raises for users' mistakes, with a message of their own. They come last
# (see ``user_message``), so a registered subclass keeps its format.
_GENERIC: dict[type[BaseException], UserErrorFormat] = {
    OSError: _os_error,
    ValueError: str,
    RuntimeError: _runtime_error,
}


def user_message(error: BaseException) -> str | None:
    """The message to print for ``error``, or None when it is not a user's error (a bug: keep the
    traceback). The most specific registered type wins."""
    for table in (_USER_ERRORS, _GENERIC):
        for cls in type(error).__mro__:
            if cls in table:
                return table[cls](error)
    return None
