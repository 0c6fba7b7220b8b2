"""Atomic file writes: a file is either its old complete self or the new complete one.

Every output of knet (checkpoints, label maps, overlays, JSON, the native format) goes through
:func:`atomic_write`, so an interrupt (Ctrl-C, SIGKILL, a full disk) never leaves a half-written
file under the final name.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

from ..errors import KnetError

PathLike = Union[str, os.PathLike]


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in the folder of ``path``; when the block succeeds it is renamed
    onto ``path`` (same filesystem, so the rename is atomic), on any failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None], fsync: bool = False) -> None:
    """Open a temporary file for binary writing, let ``write(f)`` fill it, then rename it onto
    ``path``. ``fsync`` also flushes it to disk first (checkpoints). An OSError becomes a KnetError
    naming the file."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    except OSError as err:
        raise KnetError(f"{path}: cannot write ({err.strerror or err})") from None


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
