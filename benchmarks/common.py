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
import sys
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFMODEL = SHARED / "refmodel"
CALIB = SHARED / "data" / "calib.txt"
EVAL = SHARED / "data" / "eval.txt"
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks"
WORK = RESULTS / "work"


def prune(strategy: str, method: str, output: Path, *, model: Path = REFMODEL, sparsity: float | None = None,
          seqlen: int = 256, nsamples: int = 64, seed: int = 0, calib: Path = CALIB, **options: Any) -> dict[str, Any]:
    """Run one pruning job through the CLI's pipeline; returns its report."""
    from llmprune.config import PruneSettings
    from llmprune.pipeline import run_prune

    settings = PruneSettings(
        strategy=strategy, method=method, model=str(model), output=output, seqlen=seqlen, nsamples=nsamples,
        seed=seed, calib=str(calib), overwrite=True, sparsity=0.5 if sparsity is None else sparsity,
        method_options=options,
    )
    return run_prune(settings)


def prune_command(strategy: str, method: str, sparsity: float | None = None, **options: Any) -> str:
    """The equivalent shell command, for the tables."""
    parts = ["llmprune", strategy, "../shared/refmodel", "-o", "OUT", "--method", method]
    if sparsity is not None and strategy != "semi24":
        parts += ["--sparsity", str(sparsity)]
    parts += ["--calib", "../shared/data/calib.txt", "--seqlen", "256", "--nsamples", "64", "--seed", "0"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def evaluate(model: Path, data: Path = EVAL, seqlen: int = 256, speed: bool = False) -> dict[str, Any]:
    from llmprune.evaluation_run import EvalSettings, run_eval

    return run_eval(EvalSettings(model=str(model), data=str(data), seqlen=seqlen, speed=speed))


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


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


def write_results(name: str, title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, str]],
                  intro: str = "", notes: str = "") -> Path:
    """Write ``benchmarks/results/<name>.json`` and ``docs/benchmarks/<name>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    DOCS.mkdir(parents=True, exist_ok=True)
    payload = {"name": name, "date": today(), "machine": machine(), "command": command_line(), "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = [f"# {title}", "", f"Measured {payload['date']} on {payload['machine']}.",
          f"Reproduce with `{payload['command']}` (writes this page and `benchmarks/results/{name}.json`).", ""]
    if intro:
        md += [intro, ""]
    md += [markdown_table(rows, columns), ""]
    if notes:
        md += [notes, ""]
    path = DOCS / f"{name}.md"
    path.write_text("\n".join(md))
    return path


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])
