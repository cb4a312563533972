"""An exclusive lock on one output: a file in the work folder holding the owner's pid and host.

Two runs with the same ``-o`` share the staging and work folders, so the second one is refused
in one line naming the first. A lock left by a run that died (SIGKILL, power loss) is stale when
its process is gone on this host — or runs a different program (its start time differs) — and is
taken over. A lock from another host cannot be checked from here; the message says how to clear it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from llmprune.errors import OutputExistsError

LOCK_FILE = "llmprune.lock"


def _start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (Linux), to tell a live owner from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner_record() -> dict[str, object]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid), "since": time.time()}


def is_stale(owner: dict[str, object]) -> bool:
    """True when ``owner`` (a lock's content) is certainly no longer running."""
    if owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return True
    start = owner.get("start")
    return start is not None and _start_time(pid) not in (None, start)


def _read(path: Path) -> dict[str, object] | None:
    """A lock's owner record; ``None`` when it is gone or unreadable (not written by llmprune)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class OutputLock:
    """Held from the start of a run until its work folder is removed or the run ends."""

    def __init__(self, work: Path, output: Path) -> None:
        self.path = work / LOCK_FILE
        self.output = output
        self.held = False

    def acquire(self) -> None:
        """Create the lock with its content in one step (link of a finished file), or refuse."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = self.path.with_name(f".{LOCK_FILE}.{os.getpid()}.{time.monotonic_ns()}")
        mine.write_text(json.dumps(_owner_record()))
        try:
            for _ in range(5):  # a stale lock is cleared and the creation retried
                try:
                    os.link(mine, self.path)  # fails if a lock exists: never two owners
                    self.held = True
                    return
                except FileExistsError:
                    owner = _read(self.path)
                    if owner is not None and not is_stale(owner):
                        raise OutputExistsError(self._busy_message(owner)) from None
                    self._clear_stale(owner)
            raise OutputExistsError(f"cannot lock output {self.output}: {self.path} keeps reappearing")
        finally:
            mine.unlink(missing_ok=True)

    def _clear_stale(self, seen: dict[str, object] | None) -> None:
        """Remove the stale lock we read, and only that one (another run may have just replaced it)."""
        grabbed = self.path.with_name(f".{LOCK_FILE}.stale.{os.getpid()}")
        try:
            os.rename(self.path, grabbed)
        except FileNotFoundError:
            return
        if _read(grabbed) == seen:
            grabbed.unlink(missing_ok=True)
            return
        try:  # a fresh lock of another run: put it back
            os.link(grabbed, self.path)
        except FileExistsError:
            pass
        grabbed.unlink(missing_ok=True)

    def _busy_message(self, owner: dict[str, object]) -> str:
        since = owner.get("since")
        when = (
            time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
        )
        return (
            f"output {self.output} is in use by another llmprune run (pid {owner.get('pid')} on "
            f"{owner.get('host')}{when}); wait for it, or delete {self.path} if that run is gone"
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
