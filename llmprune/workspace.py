"""A run's claim on its output: checks, the exclusive lock, the work folder, and cleanup.

Opened before any long work and closed at the end. On failure the work folder is removed unless
it holds a checkpoint that ``--resume`` can use, and the error line says which; an offload folder
the run created is removed either way; an interruption becomes one line saying what to do next.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from llmprune.atomic import disk_full
from llmprune.errors import LlmpruneError, OutputExistsError, ResumeError
from llmprune.export import check_output, overlaps, work_dir
from llmprune.lock import LOCK_FILE, OutputLock
from llmprune.signals import Interrupted, as_stop, describe


def check_offload_dir(offload: Path | None, model: str, output: Path) -> Path | None:
    """Refuse an --offload-dir that is a file, or lies in the input model or the output folder.

    Returns the outermost folder the run will create for it (removed at exit), or None.
    """
    if offload is None:
        return None
    path = offload.expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"--offload-dir {offload} exists and is a file")
    source = Path(model).expanduser()
    if source.exists() and overlaps(path, source.resolve()):
        raise OutputExistsError(
            f"--offload-dir {offload} overlaps the input model folder {model}; choose another folder"
        )
    if overlaps(path, output.expanduser().resolve()):
        raise OutputExistsError(f"--offload-dir {offload} overlaps the output folder {output}; choose another folder")
    created = None
    while not path.exists():
        created, path = path, path.parent
    if not path.is_dir():
        raise OutputExistsError(f"--offload-dir {offload}: {path} is a file")
    return created


class Workspace:
    """Rank 0's hold on OUT for one run (see the module docstring)."""

    def __init__(self, settings: Any, pruner_cls: Any, reporter: Any) -> None:
        self.settings, self.pruner_cls, self.reporter = settings, pruner_cls, reporter
        self.work = work_dir(settings.output)
        self.lock = OutputLock(self.work, settings.output)
        self.created_offload: Path | None = None

    def open(self) -> Path:
        s = self.settings
        check_output(s.output, s.model, s.overwrite)
        self.created_offload = check_offload_dir(s.offload_dir, s.model, s.output)
        if s.resume and not self.pruner_cls.resumable:
            self.reporter.log(
                f"[yellow]note:[/] {s.strategy} --method {s.method} is one-shot; --resume has nothing to resume"
            )
        if s.resume and self.pruner_cls.resumable and not self.work.exists():
            raise ResumeError(f"--resume: no checkpoint folder {self.work} from an earlier run of this output")
        self.lock.acquire()  # before touching anything another run may be using
        try:
            if not s.resume or not self.pruner_cls.resumable:
                for stale in self.work.iterdir():  # an earlier run's leftovers, never the lock
                    if stale.name != LOCK_FILE:
                        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        except BaseException:
            self.lock.release()
            raise
        return self.work

    def close(self) -> None:
        """After a successful export: nothing of the run is left beside OUT."""
        shutil.rmtree(self.work, ignore_errors=True)
        self.lock.held = False
        self._remove_offload()

    def fail(self, err: BaseException) -> BaseException:
        """Clean up after ``err`` and return the exception to raise in its place."""
        err = as_stop(err)  # a signal's KeyboardInterrupt may surface as another exception
        resumable = bool(self.pruner_cls.resumable and self.lock.held and self.pruner_cls.has_checkpoint(self.work))
        if resumable:
            self.lock.release()
        elif self.lock.held:
            shutil.rmtree(self.work, ignore_errors=True)
            self.lock.held = False
        self._remove_offload()
        kept = f"the checkpoint in {self.work} is kept: rerun the same command with --resume to continue"
        if isinstance(err, KeyboardInterrupt):
            what, code = describe(err)
            if resumable:
                return Interrupted(f"{what}; {kept}", code)
            if self.pruner_cls.resumable:
                return Interrupted(f"{what} before the first checkpoint; nothing to resume, rerun to start again", code)
            return Interrupted(
                f"{what}; nothing was written ({self.settings.method} is one-shot: rerun to start again)", code
            )
        if not isinstance(err, LlmpruneError) and disk_full(err):
            err = OutputExistsError(f"no space left on device: {err}".splitlines()[0])
        if isinstance(err, LlmpruneError) and resumable:
            err.args = (f"{err}; {kept} after fixing this",)
        return err

    def _remove_offload(self) -> None:
        if self.created_offload is not None:
            shutil.rmtree(self.created_offload, ignore_errors=True)
