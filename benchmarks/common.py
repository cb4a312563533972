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


def run_llmprune(argv: list[str]) -> float:
    """Run ``llmprune argv --overwrite`` as its own process (so peak memory is its own); its wall
    time in seconds. A failure raises with the command and the end of its stderr."""
    import time

    cmd = [sys.executable, "-m", "llmprune", *argv, "--overwrite"]
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
        f"Measured {payload['date']} on {payload['machine']}.",
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


INDEX_ORDER = ("summary", "baselines", "minimax", "tyr", "proxsparse", "speed", "memory")


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


def code_version() -> str:
    """Content hash of the package's Python sources (uncommitted edits count): part of every row
    cache key, so a cached number is reused only with the code that measured it."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "llmprune").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])
