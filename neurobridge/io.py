"""Atomic file writes: readers see the old file or the complete new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_json_atomic"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once, at import: setting the umask to read it is not thread-safe
_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    If the block raises (or the process is interrupted), the temporary file is removed and
    ``path`` keeps its previous content. The temporary file lives in the same folder, so the
    rename is atomic on POSIX file systems. The file gets the permissions of a plain ``open``
    (``0o666`` minus the umask), not the owner-only ones of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str | Path, payload: dict) -> None:
    """Write ``payload`` as indented, key-sorted JSON through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
