"""A full disk as one line: which disk (its mount point and free space) and which path."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raybench.errors import RaybenchError

__all__ = ["disk_full_message", "mount_point", "writing"]

_FULL = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding ``path`` (its nearest existing parent)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def disk_full_message(exc: OSError, path: Path | str | None) -> str | None:
    """One line for an ENOSPC/EDQUOT error while writing ``path``; None for other errors."""
    if exc.errno not in _FULL:
        return None
    target = Path(path or exc.filename or ".")
    disk = mount_point(target)
    try:
        free = f"{shutil.disk_usage(disk).free / 2**20:,.0f} MiB free now"
    except OSError:
        free = "free space unknown"
    return (f"{_FULL[exc.errno]} on the disk mounted at {disk} ({free}) while writing "
            f"{target}; free some space there or write elsewhere")


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into a :class:`RaybenchError` (one line)."""
    try:
        yield
    except OSError as exc:
        message = disk_full_message(exc, path)
        if message is None:
            raise
        raise RaybenchError(message) from None
