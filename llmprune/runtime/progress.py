"""Progress reporting: rich bars on a terminal, silent otherwise (logs stay readable in CI)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class TaskHandle:
    """Advance a bar with ``handle(i)`` (i = index just finished) or ``handle.advance()``;
    ``handle.info(loss=…)`` shows live fields after the bar."""

    def __init__(self, progress: Progress | None, task_id: Any) -> None:
        self._progress, self._id = progress, task_id

    def __call__(self, index: int | None = None) -> None:
        self.advance()

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._id, steps)

    def info(self, **fields: Any) -> None:
        if self._progress is not None:
            text = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            self._progress.update(self._id, info=text)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Reporter:
    """Creates bars inside an active ``live()`` block; a no-op outside it."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = console.is_terminal if enabled is None else enabled
        self._progress: Progress | None = None

    @contextmanager
    def live(self) -> Iterator[Reporter]:
        if not self.enabled:
            yield self
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        )
        with self._progress:
            yield self
        self._progress = None

    def task(self, description: str, total: int) -> TaskHandle:
        if self._progress is None:
            return TaskHandle(None, None)
        return TaskHandle(self._progress, self._progress.add_task(description, total=total, info=""))

    def log(self, message: str) -> None:
        console.print(message)


class QuietReporter(Reporter):
    """Ranks other than 0 draw no bars and log nothing (rank 0 speaks for the run)."""

    def __init__(self) -> None:
        super().__init__(enabled=False)

    def log(self, message: str) -> None:
        pass


def rank_reporter(reporter: Reporter | None, main: bool) -> Reporter:
    """The reporter a rank uses: the caller's or a terminal one on rank 0, a quiet one elsewhere."""
    if reporter is not None:
        return reporter
    return Reporter() if main else QuietReporter()
