"""Writes that never leave a truncated file behind: write beside the target, then rename.

A kill (SIGKILL, OOM killer, node preemption) mid-write leaves the previous file intact, which is
what ``--resume`` relies on for checkpoints and what users rely on for reports.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from llmprune.errors import OutputExistsError

#: errno values of a full disk or an exhausted quota.
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(err: BaseException) -> bool:
    """True for "no space left" from Python (OSError) or from a native writer (safetensors' message)."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
        return True
    text = str(err)
    return "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file in the same folder and an atomic rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically, creating its folder; unwritable targets are a one-line error."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise OutputExistsError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def probe_writable(target: Path, what: str) -> None:
    """Fail unless a file can be created in the nearest existing folder above ``target``.

    A real probe: ``os.access`` says yes to root even on read-only filesystems.
    """
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputExistsError(f"cannot create {what}: {parent} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".llmprune-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputExistsError(f"cannot write to {parent} (for {what}): {err.strerror or err}") from err


def check_file_writable(path: Path, flag: str) -> None:
    """Fail before long work when ``path`` (a file to be written later) cannot be written."""
    if path.is_dir():
        raise OutputExistsError(f"{flag} {path} is a folder; give a file path")
    probe_writable(path, f"{flag} {path}")
