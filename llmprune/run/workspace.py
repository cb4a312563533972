"""A run's claim on its output: checks, the exclusive lock, the work folder, and cleanup.

Opened before any long work and closed at the end. On failure the work folder is removed unless
it holds a checkpoint that ``--resume`` can use, and the error line says which; an offload folder
the run created is removed either way; an interruption becomes one line saying what to do next.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmprune.errors import LlmpruneError, OutputExistsError, ResumeError
from llmprune.export.report import PruneReport
from llmprune.export.save import check_output, overlaps, work_dir
from llmprune.runtime import distributed
from llmprune.runtime.atomic import disk_full
from llmprune.runtime.lock import LOCK_FILE, OutputLock
from llmprune.runtime.memory import peak_memory
from llmprune.runtime.signals import Interrupted, as_stop, describe


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


def open_work_folder(settings: Any, claimant: Any, reporter: Any, claim: list[Workspace]) -> Path:
    """Rank 0 checks OUT, locks it and prepares the checkpoint folder (its ``Workspace`` goes into
    ``claim``); the other ranks keep their scratch files (e.g. Týr's supernet) in a private folder,
    removed at exit, also after an error (nothing to resume there)."""

    def open_on_main() -> Path:
        workspace = Workspace(settings, claimant, reporter)
        work = workspace.open()
        claim.append(workspace)
        return work

    work = distributed.on_main(open_on_main)
    if not distributed.is_main():
        if settings.offload_dir is not None:
            Path(settings.offload_dir).mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".llmprune-rank{distributed.rank()}-", dir=settings.offload_dir))
        atexit.register(shutil.rmtree, work, True)
    return work


def finish_run(
    fields: dict[str, Any], t_start: float, claim: list[Workspace], work: Path, save: Callable[[dict[str, Any]], object]
) -> PruneReport:
    """Complete the report (peak memory, total time); rank 0 writes the output through ``save`` and
    releases OUT, the other ranks drop their scratch folder; every rank waits for the export."""
    fields.update(peak_memory())
    fields["time_total_s"] = time.perf_counter() - t_start
    report = PruneReport.model_validate(fields)
    if distributed.is_main():
        written = report.as_json()
        save(written)
        for key in written.keys() - report.as_json().keys():  # what the export added (the deci layout)
            setattr(report, key, written[key])
        claim[0].close()
    else:
        shutil.rmtree(work, ignore_errors=True)
    distributed.barrier()
    return report
