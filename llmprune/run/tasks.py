"""Task accuracy through lm-evaluation-harness (``lm_eval``, the optional ``tasks`` extra).

``llmprune eval --tasks`` runs lm_eval in-process on the model ``eval`` already loaded (so the
device, dtype and llmprune's own auto classes for heterogeneous widths all apply), for harness task
names (``arc_easy``, ``hellaswag``, ...) and/or local task YAML files or folders. Hub tasks need
their dataset on the hub (or in the local datasets cache); a local YAML with ``dataset_path: json``
and ``dataset_kwargs: {data_files: ...}`` works offline.

Compatibility: lm-eval before 0.4.10 imports a class that transformers 5 removed, hence the
``lm-eval>=0.4.10`` floor in ``pyproject.toml``. lm_eval's ``HFLM`` imports ``accelerate`` at import
time while lm-eval lists it only under its ``hf`` extra (which also pulls ``peft``), so the ``tasks``
extra names ``accelerate`` directly instead of ``lm-eval[hf]``.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from llmprune.errors import DataError, MissingDependencyError, UsageError

INSTALL_HINT = "--tasks needs lm-evaluation-harness: pip install 'llmprune[tasks]'"
LIST_HINT = "list the harness's tasks with `lm-eval ls tasks`, or give the path of a task YAML file or folder"
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class TaskPlan:
    """What ``--tasks`` resolved to: specs to hand to lm_eval and the TaskManager that knows them."""

    requested: list[str]
    specs: list[str] = field(default_factory=list)  # harness names and absolute YAML paths
    include_paths: list[str] = field(default_factory=list)  # local task folders
    manager: Any = None


def require_lm_eval() -> None:
    """Raise the one-line install hint unless lm_eval (and what its HF model needs) imports."""
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (needs accelerate)
    except ImportError as err:
        raise MissingDependencyError(INSTALL_HINT) from err


def lm_eval_version() -> str:
    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:  # pragma: no cover - imported but not installed as a dist
        import lm_eval

        return str(getattr(lm_eval, "__version__", "unknown"))


def split_tasks(tasks: str) -> list[str]:
    items = [t.strip() for t in tasks.split(",") if t.strip()]
    if not items:
        raise UsageError("--tasks is empty; give task names or task YAML paths, separated by commas")
    return items


def _quiet() -> None:
    """lm_eval and datasets log a lot at INFO/WARNING; keep the terminal to llmprune's summary."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    try:
        from datasets.utils import logging as ds_logging

        ds_logging.set_verbosity_error()
        ds_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - datasets is an lm_eval dependency
        pass


def prepare_tasks(tasks: str) -> TaskPlan:
    """Check lm_eval is installed and every task exists, before any model is loaded."""
    require_lm_eval()
    _quiet()
    from lm_eval.tasks import TaskManager

    plan = TaskPlan(requested=split_tasks(tasks))
    names: list[str] = []
    for item in plan.requested:
        path = Path(item).expanduser()
        if path.is_dir():
            found = TaskManager(include_path=str(path.resolve()), include_defaults=False).all_subtasks
            if not found:
                raise UsageError(f"--tasks {item}: no task YAML (with a 'task:' key) in this folder")
            plan.include_paths.append(str(path.resolve()))
            plan.specs.extend(found)
        elif path.is_file():
            if path.suffix not in YAML_SUFFIXES:
                raise UsageError(f"--tasks {item}: a task file must be a .yaml/.yml lm_eval task config")
            plan.specs.append(str(path.resolve()))
        elif path.suffix in YAML_SUFFIXES or "/" in item or "\\" in item:
            raise UsageError(f"--tasks {item}: task file or folder not found")
        else:
            names.append(item)
            plan.specs.append(item)
    plan.manager = TaskManager(include_path=plan.include_paths or None, include_defaults=bool(names))
    known = set(plan.manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, plan.manager.all_tasks, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(f"unknown task {name!r}{hint}; {LIST_HINT}")
    return plan


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _metrics(entry: dict[str, Any]) -> dict[str, float | None]:
    """``{"acc,none": .5, "acc_stderr,none": .1}`` → ``{"acc": .5, "acc_stderr": .1}`` (filters kept
    in the name when not ``none``); non-numeric stderr ("N/A") becomes None."""
    out: dict[str, float | None] = {}
    for key, value in entry.items():
        if "," not in key:
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric},{filt}"
        if metric.endswith("_stderr"):
            out[name] = _number(value)
        elif _number(value) is not None:
            out[name] = _number(value)
    return out


def run_tasks(
    model: Any, tokenizer: Any, plan: TaskPlan, *, num_fewshot: int, limit: int | None, batch_size: int
) -> dict[str, Any]:
    """Evaluate ``model`` on the planned tasks; the JSON-ready ``tasks`` section of the eval report."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    _quiet()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        out = simple_evaluate(
            model=lm,
            tasks=plan.specs,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=plan.manager,
            log_samples=False,
        )
    except (ConnectionError, FileNotFoundError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot load task data ({first}); without network only local task files work") from err
    except Exception as err:
        if type(err).__name__ in ("DatasetNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"):
            raise DataError(f"cannot load task data: {err}") from err
        raise
    if out is None:  # pragma: no cover - only non-zero ranks in multi-process runs
        return {}
    results: dict[str, Any] = {}
    n_samples = out.get("n-samples", {})
    n_shot = out.get("n-shot", {})
    versions = out.get("versions", {})
    for name, entry in {**out.get("results", {}), **out.get("groups", {})}.items():
        row: dict[str, Any] = _metrics(entry)
        if name in n_samples:
            row["n_samples"] = int(n_samples[name].get("effective", 0))
            row["n_available"] = int(n_samples[name].get("original", 0))
        else:
            row["group"] = True
        if name in n_shot:
            row["num_fewshot"] = n_shot[name]
        if name in versions:
            row["version"] = versions[name]
        results[name] = row
    return {
        "settings": {
            "tasks": plan.requested,
            "resolved": plan.specs,
            "num_fewshot": num_fewshot,
            "limit": limit,
            "batch_size": batch_size,
            "lm_eval_version": lm_eval_version(),
        },
        "results": results,
    }
