"""SIGTERM handled like Ctrl-C, and the one line an interrupted run ends with.

Schedulers (SLURM, Kubernetes, systemd) send SIGTERM before killing a job. Python's default is to
die at once without a word; here it raises ``Terminated`` (a ``KeyboardInterrupt``) in the main
thread, so the run unwinds exactly as after Ctrl-C: checkpoints are written atomically, the last
one stays, and the error line says whether ``--resume`` can continue.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """A stop requested by a signal, with the line to print and the exit code (128 + signal)."""

    def __init__(self, message: str = "interrupted", exit_code: int = 130) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class Terminated(Interrupted):
    """SIGTERM, raised where the main thread happens to be (like SIGINT's KeyboardInterrupt)."""

    def __init__(self) -> None:
        super().__init__("terminated (SIGTERM)", 128 + signal.SIGTERM)


def describe(err: KeyboardInterrupt) -> tuple[str, int]:
    """Opening words of the error line and the exit code for a SIGINT or SIGTERM."""
    if isinstance(err, Interrupted):
        return err.message, err.exit_code
    return "interrupted", 130


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises ``Terminated``; the previous handler is restored after."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (e.g. embedded use): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
