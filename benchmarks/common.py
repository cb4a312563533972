"""Shared helpers for benchmark scripts: run a prune, evaluate, describe the machine, write tables.

Benchmarks call the same pipeline as the CLI (``run_prune`` / ``run_eval``), in-process, so the
numbers are what a user gets from the commands printed in each table.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
#: The project's reference model and text; a clone without ../shared uses the byte-identical
#: copies shipped in examples/ (tests/test_refmodel.py checks they are the same files).
_REFERENCE = SHARED if (SHARED / "refmodel").is_dir() else ROOT / "examples"
REFMODEL = _REFERENCE / "refmodel"
CALIB = _REFERENCE / "data" / "calib.txt"
EVAL = _REFERENCE / "data" / "eval.txt"
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks"
WORK = RESULTS / "work"


def prune_args(
    strategy: str,
    method: str,
    output: str | Path,
    *,
    model: str | Path = REFMODEL,
    sparsity: float | None = None,
    seqlen: int = 256,
    nsamples: int = 64,
    seed: int = 0,
    calib: str | Path = CALIB,
    **options: Any,
) -> list[str]:
    """Command-line arguments of one pruning job (method options become ``--flags``)."""
    args = [strategy, str(model), "-o", str(output), "--method", method]
    if sparsity is not None and strategy != "semi24":
        args += ["--sparsity", str(sparsity)]
    args += ["--calib", str(calib), "--seqlen", str(seqlen), "--nsamples", str(nsamples), "--seed", str(seed)]
    return args + option_flags(options)


def option_flags(options: dict[str, Any]) -> list[str]:
    """Options as ``--flags`` (``key_name=v`` → ``--key-name v``; booleans ``--flag`` / ``--no-flag``)."""
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def run_llmprune(argv: list[str], overwrite: bool = True) -> float:
    """Run ``llmprune argv --overwrite`` (``llmprune argv`` when not ``overwrite``: commands that
    write no folder) as its own process (so peak memory is its own); its wall time in seconds. A
    failure raises with the command and the end of its stderr."""
    import time

    cmd = [sys.executable, "-m", "llmprune", *argv, *(["--overwrite"] if overwrite else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def prune(strategy: str, method: str, output: Path, **kwargs: Any) -> dict[str, Any]:
    """Run one pruning job as a separate ``llmprune`` process; returns the report it wrote."""
    run_llmprune(prune_args(strategy, method, output, **kwargs))
    return json.loads((Path(output) / "llmprune_report.json").read_text())


def prune_command(
    strategy: str,
    method: str,
    sparsity: float | None = None,
    *,
    model: str | Path = REFMODEL,
    calib: str | Path = CALIB,
    seqlen: int = 256,
    nsamples: int = 64,
    **options: Any,
) -> str:
    """The equivalent shell command with repository-relative paths, for the tables."""
    return shlex.join(
        [
            "llmprune",
            *prune_args(
                strategy,
                method,
                "OUT",
                model=display_path(model),
                calib=display_path(calib),
                sparsity=sparsity,
                seqlen=seqlen,
                nsamples=nsamples,
                **options,
            ),
        ]
    )


def display_path(path: str | Path) -> str:
    """Paths under the shared folder as the README writes them (``../shared/...``)."""
    if not Path(path).is_absolute() and not Path(path).exists():
        return str(path)  # a placeholder (CALIB_FIT, OUT): the same whatever the working directory
    resolved = Path(path).resolve()
    for base, shown in ((SHARED, "../shared/"), (ROOT, "")):
        try:
            return shown + str(resolved.relative_to(base.resolve()))
        except ValueError:
            pass
    return str(path)


def evaluate(model: Path, data: Path = EVAL, seqlen: int = 256, speed: bool = False) -> dict[str, Any]:
    from llmprune.run.evaluation import EvalSettings, run_eval

    return run_eval(EvalSettings(model=str(model), data=str(data), seqlen=seqlen, speed=speed))


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def markdown_table(rows: Iterable[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """``columns``: (key, header, format spec) — e.g. ("perplexity", "ppl", ".2f")."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _, spec in columns:
            value = row.get(key)
            cells.append("-" if value is None else format(value, spec) if spec else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(
    name: str,
    title: str,
    rows: list[dict[str, Any]],
    columns: list[tuple[str, str, str]],
    intro: str = "",
    notes: str = "",
) -> Path:
    """Write ``benchmarks/results/<name>.json`` and ``docs/benchmarks/<name>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    DOCS.mkdir(parents=True, exist_ok=True)
    payload = {"name": name, "date": today(), "machine": machine(), "command": command_line(), "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = [
        f"# {title}",
        "",
        (
            f"Page written {payload['date']} from cached rows (measured earlier; each row's code version is in "
            "its key, and a row cached under another key is marked stale)."
            if "--cached-only" in payload["command"]
            else f"Measured {payload['date']} on {payload['machine']} (rows cached earlier are reused; see each row's key)."
        ),
        f"Reproduce with `{payload['command']}` (writes this page and `benchmarks/results/{name}.json`).",
        "",
    ]
    if intro:
        md += [intro, ""]
    md += [markdown_table(rows, columns), ""]
    if notes:
        md += [notes, ""]
    path = DOCS / f"{name}.md"
    path.write_text("\n".join(md))
    rebuild_index()
    return path


INDEX_ORDER = ("smollm2", "summary", "baselines", "minimax", "tyr", "proxsparse", "speed", "memory")


def rebuild_index() -> Path:
    """Regenerate ``docs/benchmarks.md`` from every page in ``docs/benchmarks/`` (one section each)."""
    pages = sorted(
        DOCS.glob("*.md"), key=lambda p: (INDEX_ORDER.index(p.stem) if p.stem in INDEX_ORDER else 99, p.stem)
    )
    out = [
        "# Benchmarks",
        "",
        "Every number below was written by a script in `benchmarks/`; each section names its command, "
        "date and machine. Per-benchmark pages and plots live in [benchmarks/](benchmarks/), raw JSON in "
        "`benchmarks/results/`. Benchmarks are not tests: nothing here is asserted in CI.",
        "",
    ]
    for page in pages:
        text = page.read_text().replace("](", "](benchmarks/").replace("](benchmarks/http", "](http")
        out += ["#" + line if line.startswith("#") else line for line in text.splitlines()]
        out.append("")
    index = ROOT / "docs" / "benchmarks.md"
    index.write_text("\n".join(out))
    return index


def code_version(strategy: str | None = None, method: str | None = None) -> str:
    """Content hash of the package's Python sources (uncommitted edits count): part of every row
    cache key, so a cached number is reused only with the code that measured it.

    The files of *other* methods are left out (for a dense or recovery row, of every method): the
    layering contract "Methods never import each other" (``pyproject.toml``, checked in CI) means
    an edit to Týr cannot change a Wanda row, so it does not make that row stale."""
    import hashlib

    skipped = set().union(*(method_files(s, m) for s, m in registered_methods() if (s, m) != (strategy, method)))
    skipped -= method_files(strategy, method) if strategy and method else set()
    digest = hashlib.sha256()
    for path in sorted((ROOT / "llmprune").rglob("*.py")):
        if path in skipped:
            continue
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def registered_methods() -> list[tuple[str, str]]:
    from llmprune.pruners.registry import STRATEGIES, methods

    return [(strategy, name) for strategy in STRATEGIES for name in methods(strategy)]


def method_files(strategy: str, method: str) -> set[Path]:
    """A method's own sources: its declaration (``pruners/<name>_options.py``) and its
    implementation's module, or the whole sub-package when the implementation lives in one
    (``pruners/tyr/``)."""
    from llmprune.pruners.registry import declared

    cls = declared(strategy, method)
    # paths under ROOT, not the imported modules' files: an editable install may point elsewhere
    files = {ROOT.joinpath(*cls.__module__.split(".")).with_suffix(".py")}
    module = ROOT.joinpath(*cls.implementation.split(":")[0].split("."))
    while module.parent.name != "pruners":  # inside a sub-package of pruners/: all of it is the method's
        module = module.parent
    return files | ({p.resolve() for p in module.rglob("*.py")} if module.is_dir() else {module.with_suffix(".py")})


def text_hash(path: str | Path) -> str:
    """Content hash of a text file (a row key's ``texts`` component)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# ----- row keys ---------------------------------------------------------------------------------
# One key for every cached benchmark row (benchmarks/run.py's summary rows, benchmarks/selection.py's
# select rows): a row is reused only when everything that reaches its run is what it was. A key is
# a dict of components, stored as sorted JSON:
#
# - ``command``: the command line (repository-relative paths, outputs as OUT);
# - ``defaults``: the defaults the command relies on: the method's ``Options`` defaults
#   (``llmprune.pruners.base.option_defaults``) and, when the row recovers, the recovery's;
# - ``texts``: content hashes of the text files it reads (calibration, evaluation);
# - ``split``: the held-out split's identity (selection rows only);
# - ``code``: ``code_version(strategy, method)``, the content hash of ``llmprune/`` without the
#   other methods' files (methods never import each other);
# - anything else the caller names (model, seqlen, the one-shot key a recovery continues).
#
# ``stale_reasons`` compares a cached key with the key a run would use now and names each
# component that changed, so a table built from cached rows can say why a row is out of date.


def run_defaults(strategy: str | None, method: str | None, recovery: str | None = None) -> dict[str, Any]:
    """The defaults a row's commands rely on: ``{"method": {...}}`` (the pruner's ``Options``) and,
    with ``recovery``, ``{"recover": {...}}`` (``RecoveryOptions`` and the default LoRA rate).
    ``recovery`` is ``"command"`` for ``llmprune recover`` (which takes ``--nsamples``, not
    ``--recover-nsamples``) or ``"flag"`` for a pruning command's ``--recover``."""
    from llmprune.pruners.base import get_pruner_class, option_defaults

    found: dict[str, dict[str, Any]] = {}
    if strategy and method:
        found["method"] = option_defaults(get_pruner_class(strategy, method))
    if recovery:
        from llmprune.train.recovery import DEFAULT_LR, RecoveryOptions

        found["recover"] = {
            k: f.get_default(call_default_factory=True) for k, f in RecoveryOptions.model_fields.items()
        }
        found["recover"]["default_lr"] = DEFAULT_LR["lora"]  # --lr not given
        if recovery == "command":
            found["recover"].pop("recover_nsamples")  # `recover` takes --nsamples instead
    for options in found.values():  # when to checkpoint never changes a result (resume is bitwise)
        options.pop("checkpoint_every", None)
    return json.loads(json.dumps(found, default=str))


def row_key(
    command: str,
    *,
    texts: dict[str, str],
    strategy: str | None = None,
    method: str | None = None,
    recovery: str | None = None,
    code: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The key of one cached row (see above); ``key_text`` turns it into the cache's string."""
    key: dict[str, Any] = {
        "command": command,
        "texts": dict(texts),
        "code": code or code_version(strategy, method),
        **extra,
    }
    defaults = run_defaults(strategy, method, recovery)
    if defaults:  # none for a dense evaluation
        key["defaults"] = defaults
    return key


def key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


#: The kind of each top-level key component, as ``stale_reasons`` names it.
KEY_KINDS = {"code": "code version", "defaults": "default", "texts": "text", "split": "split", "command": "command"}


def stale_reasons(
    cached: dict[str, Any], wanted: dict[str, Any], _path: str = "", _kind: str | None = None
) -> list[tuple[str, str]]:
    """Why a cached row's key is not the key wanted now: ``(kind, detail)`` per changed value,
    kind one of ``KEY_KINDS``' values (or the component's own name); ``[]`` when the keys are
    equal. A whole component the cached key lacks (a key written before it was part of the key)
    is ``"<kind> not recorded"``. A nested key (``NESTED_KEYS``: the one-shot key a recovery
    continues) is compared component by component."""
    reasons: list[tuple[str, str]] = []
    for name in sorted(set(cached) | set(wanted)):
        path = f"{_path}{name}"
        kind = _kind or KEY_KINDS.get(name, name)
        old, new = cached.get(name, _MISSING), wanted.get(name, _MISSING)
        if old == new:
            continue
        if _kind is None and old is _MISSING:
            reasons.append((f"{kind} not recorded", path))
        elif _kind is None and new is _MISSING:
            reasons.append((f"{kind} no longer in the key", path))
        elif isinstance(old, dict) and isinstance(new, dict):
            reasons += stale_reasons(old, new, path + ".", None if name in NESTED_KEYS else kind)
        else:
            shown = path.replace("defaults.", "", 1) if kind == "default" else path
            reasons.append((kind, f"{shown}: {_changed(old, new)}"))
    return reasons


#: Key components that are keys themselves (a recovery row's one-shot key).
NESTED_KEYS = ("oneshot",)
_MISSING = object()


def _changed(old: Any, new: Any) -> str:
    """``old → new``; of two long strings (commands) only the words that differ, in brackets."""
    if isinstance(old, str) and isinstance(new, str) and max(len(old), len(new)) > 60:
        a, b = old.split(), new.split()
        n = min(len(a), len(b))
        head = 0
        while head < n and a[head] == b[head]:
            head += 1
        tail = 0
        while tail < n - head and a[-1 - tail] == b[-1 - tail]:
            tail += 1
        return f"[{' '.join(a[head : len(a) - tail])}] → [{' '.join(b[head : len(b) - tail])}]"
    return f"{_short(old)} → {_short(new)}"


def _short(value: Any) -> str:
    if value is _MISSING:
        return "(none)"
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def nearest_stale(
    cached: dict[str, Any], wanted: dict[str, Any], same: tuple[str, ...] = ("command",)
) -> tuple[str, list[tuple[str, str]]] | None:
    """The cached key (of ``cached``'s key strings) measuring the same thing as ``wanted`` (equal
    at the dotted paths ``same``) that differs from it in the fewest components, with its
    reasons; None when no cached key measures the same thing."""
    best: tuple[str, list[tuple[str, str]]] | None = None
    for text in cached:
        key = json.loads(text)
        if all(_at(key, p) == _at(wanted, p) for p in same):
            reasons = stale_reasons(key, wanted)
            if best is None or len(reasons) < len(best[1]):
                best = (text, reasons)
    return best


def _at(key: Any, path: str) -> Any:
    for part in path.split("."):
        key = key.get(part, _MISSING) if isinstance(key, dict) else _MISSING
    return key


def format_reasons(reasons: list[tuple[str, str]]) -> str:
    return "; ".join(f"{kind} ({detail})" for kind, detail in reasons)


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])
