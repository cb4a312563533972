"""SIGTERM handled like Ctrl-C, and the one line an interrupted run ends with.

Schedulers (SLURM, Kubernetes, systemd) send SIGTERM before killing a job. Python's default is to
die at once without a word; here it raises ``Terminated`` (a ``KeyboardInterrupt``) in the main
thread, so the run unwinds exactly as after Ctrl-C: checkpoints are written atomically, the last
one stays, and the error line says whether ``--resume`` can continue.

Both signals are also remembered: a ``KeyboardInterrupt`` raised while a library is inside its
own code can come out as a different exception (safetensors' ``get_tensor`` turns about half of
them into ``ValueError: could not determine the shape of object type 'UntypedStorage'``), so
after a signal any failure is read as that signal's stop (:func:`as_stop`).
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


#: Signals received inside the outermost :func:`sigterm_as_interrupt` block (cleared on entry).
_received: list[int] = []
_depth = 0


def _stop_for(signum: int) -> Interrupted:
    return Terminated() if signum == signal.SIGTERM else Interrupted()


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise _stop_for(signum)


def as_stop(err: BaseException) -> BaseException:
    """``err``, or the stop of the signal received before it (whatever a library made of it)."""
    if isinstance(err, KeyboardInterrupt) or not _received:
        return err
    return _stop_for(_received[-1])


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise ``Interrupted``/``Terminated`` and are remembered
    for :func:`as_stop`; the previous handlers are restored after."""
    global _depth
    try:
        previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (e.g. embedded use): leave signals alone
        yield
        return
    if _depth == 0:
        _received.clear()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)
