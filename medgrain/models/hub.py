"""Where pretrained weights come from: a local path, or a hub name that may not be reachable.

medgrain is offline by default; a hub name that cannot be fetched must say what to pass instead,
not surface a connection error from three libraries down.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz")


class PretrainedUnavailableError(OSError):
    """Weights, a config or a tokenizer named by a hub id could not be fetched (offline, or unknown)."""


def _download_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub's offline/not-cached errors and requests' connection errors are OSErrors;
    # newer huggingface_hub versions talk through httpx, whose errors are not.
    errors: list[type[BaseException]] = [OSError]
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


def looks_like_path(value: str) -> bool:
    """A value meant as a file or folder rather than a hub name or tag."""
    return (
        os.path.exists(value)
        or value.startswith((".", "~", os.sep))
        or value.endswith(WEIGHT_SUFFIXES)
        or value.rstrip("/").count("/") > 1  # "org/name" is a hub id, "a/b/c" a path
    )


def local_file(value: str, what: str) -> str:
    """Resolve a local weights file, with an error that names it."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: weights file not found: {path}")
    return str(path)


def unavailable(what: str, name: str, instead: str, cause: BaseException) -> PretrainedUnavailableError:
    return PretrainedUnavailableError(
        f"could not fetch {what} {name!r} from the hub ({type(cause).__name__}: {cause}). "
        f"medgrain works offline: {instead}"
    )


@contextmanager
def fetching(what: str, name: str, instead: str) -> Iterator[None]:
    """Turn a failed download of ``name`` into a PretrainedUnavailableError that says what to pass instead."""
    try:
        yield
    except PretrainedUnavailableError:
        raise
    except _download_errors() as e:
        raise unavailable(what, name, instead, e) from e
