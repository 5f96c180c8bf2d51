"""Checkpoint files: written atomically, with a content hash that loading checks, and the
previous checkpoint kept beside the new one.

``save(checkpoint, RUN/checkpoints/last.ckpt)`` writes the new file to a temporary name, records
its SHA-256 (and that of the file it replaces) in ``last.ckpt.sha256``, hard-links the old file
to ``last.prev.ckpt`` and renames the new one over ``last.ckpt``. Killed at any point, the folder
holds a ``last.ckpt`` whose hash is recorded (the old one or the new one) and the previous
checkpoint. :func:`verify` refuses a file whose content matches no recorded hash (truncated,
overwritten, corrupted on disk) and names the previous checkpoint to resume from instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from neurobridge.io import atomic_path

__all__ = ["DamagedCheckpointError", "hash_path", "previous_path", "save", "verify"]


class DamagedCheckpointError(RuntimeError):
    """A checkpoint whose content is not what was written."""


def hash_path(path: str | Path) -> Path:
    """``last.ckpt`` -> ``last.ckpt.sha256``: the hashes recorded for ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def previous_path(path: str | Path) -> Path:
    """``last.ckpt`` -> ``last.prev.ckpt``: the checkpoint ``path`` replaced."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded(path: Path) -> list[str] | None:
    """The hashes recorded for ``path`` (newest first); ``None`` when there is no record."""
    try:
        return list(json.loads(hash_path(path).read_text())["sha256"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return []  # an unreadable record matches nothing


def save(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write ``checkpoint`` to ``path`` (see the module docstring)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
        new = _sha256(tmp)
        old = _sha256(path) if path.is_file() else None
        # record both before the rename: whichever file last.ckpt is when a kill lands, its
        # hash is recorded
        with atomic_path(hash_path(path)) as record:
            record.write_text(json.dumps({"sha256": [h for h in (new, old) if h]}) + "\n")
        if old is not None:
            prev = previous_path(path)
            link = prev.with_name(prev.name + ".link")
            link.unlink(missing_ok=True)
            os.link(path, link)
            os.replace(link, prev)
            with atomic_path(hash_path(prev)) as record:
                record.write_text(json.dumps({"sha256": [old]}) + "\n")


def verify(path: str | Path) -> None:
    """Raise :class:`DamagedCheckpointError` when ``path``'s content matches no hash recorded
    for it (a checkpoint without a record, written before records existed, passes)."""
    path = Path(path)
    recorded = _recorded(path)
    if recorded is None or not path.is_file():
        return
    if _sha256(path) in recorded:
        return
    prev = previous_path(path)
    try:
        verify(prev)
        fallback = (f" The previous checkpoint {prev} is intact: resume from it "
                    f"(resume_from={prev}), repeating the steps since it was written."
                    if prev.is_file() else " No previous checkpoint is kept beside it.")
    except DamagedCheckpointError:
        fallback = f" The previous checkpoint {prev} is damaged too."
    raise DamagedCheckpointError(
        f"{path} is damaged: its content does not match the hash recorded when it was written "
        f"({hash_path(path)}); it was truncated or changed on disk.{fallback}"
    )
