"""Files and folders that must never be half-written: manifests, results, caches, indexes, exported
embeddings, checkpoints.

``atomic_write`` writes a temporary file in the target's folder, flushes it to disk and renames it
over the target with ``os.replace`` (atomic within one file system, on POSIX and Windows). A reader,
a concurrent rank or a run killed mid-write therefore sees the old file or the new one, never a
mixture; the temporary file is removed when the write fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes | Callable[[Path], object], *,
                 encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``path`` whole or not at all; returns ``path``.

    ``data`` is the text, the bytes, or a callback that writes the file at the path it is given (for
    writers that take a file name: ``safetensors.save_file``, ``pyarrow.parquet.write_table``, or a
    streaming writer that validates as it goes and raises to abandon the file). The folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and call: concurrent ranks writing the same file each rename their own copy.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data.encode(encoding) if isinstance(data, str) else data)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync(path: Path) -> None:
    """Flush the file's bytes to disk before the rename makes it visible: without it, a power loss
    can leave the new name pointing at an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (POSIX); folders cannot be opened for syncing on Windows."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_directory(staging: str | Path, target: str | Path) -> Path:
    """Move a fully written ``staging`` folder to ``target``, replacing what is there.

    Folders cannot be renamed over one another atomically, so at every moment a whole one exists as
    ``target`` or ``target.old``: the previous one is deleted only once the new one is in place
    (readers such as ``find_resumable`` fall back to ``.old`` after a crash between the renames).
    """
    staging, target = Path(staging), Path(target)
    old = target.with_name(target.name + ".old")
    if target.exists():
        if old.exists():  # stale, and ``target`` is whole
            shutil.rmtree(old)
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)
    return target


def atomic_directory(target: str | Path, build: Callable[[Path], object]) -> Path:
    """Build the folder ``target`` whole or not at all: ``build`` fills ``target.staging`` (created by
    ``build``; one a killed run left behind is removed first), which then replaces ``target``
    (``replace_directory``). A ``build`` that raises leaves ``target`` as it was and no staging folder."""
    target = Path(target)
    staging = target.with_name(target.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return replace_directory(staging, target)
