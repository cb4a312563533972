"""Startup time of commands that need no model (issue 30): ``--help``, a command's ``--help``,
``--version``, a usage error and ``--estimate`` on the reference model (reads config.json only).

Each command runs as ``python -m llmprune ...`` in a fresh process (wall time, best of ``--repeats``,
default 5) with ``PYTHONPATH`` on the code measured: the current tree, or with ``--rev REV`` also
that git revision (checked out in a temporary worktree) as the "before" column. Writes
benchmarks/results/startup.json and docs/benchmarks/startup.md. Run from the repository root:
``python benchmarks/startup.py --rev main``. The load average is recorded: a shared machine is slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "startup.json"
TABLE = ROOT / "docs" / "benchmarks" / "startup.md"

#: (label, arguments after ``python -m llmprune``, expected exit code)
COMMANDS: list[tuple[str, list[str], int]] = [
    ("llmprune --help", ["--help"], 0),
    ("llmprune uniform --help", ["uniform", "--help"], 0),
    ("llmprune --version", ["--version"], 0),
    ("usage error (--sparsity abc)", ["uniform", "M", "-o", "X", "--sparsity", "abc"], 2),
    (
        "uniform examples/refmodel --estimate",
        ["uniform", "examples/refmodel", "--estimate", "--device", "cpu", "--method", "wanda"],
        0,
    ),
]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def time_command(tree: Path, args: list[str], expected: int, repeats: int) -> float:
    """Best wall time of ``repeats`` runs, in seconds (the exit code is checked every time)."""
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", COLUMNS="100")
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(  # in the tree: ``-m`` puts the working folder first on sys.path
            [sys.executable, "-m", "llmprune", *args], cwd=tree, env=env, capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - start
        if proc.returncode != expected:
            sys.exit(f"{args} exited {proc.returncode}, expected {expected}: {proc.stdout[-500:]}{proc.stderr[-1500:]}")
        best = min(best, wall)
    return best


def imports_heavy(tree: Path) -> dict[str, bool]:
    """Whether ``import llmprune.cli`` imports torch / transformers on that tree."""
    code = "import sys, llmprune.cli; print(llmprune.__file__, 'torch' in sys.modules, 'transformers' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=True
    ).stdout
    where, torch, transformers = out.split()
    assert Path(where).resolve().is_relative_to(tree.resolve()), f"measured {where}, not the code in {tree}"
    return {"torch": torch == "True", "transformers": transformers == "True"}


def measure(tree: Path, repeats: int) -> dict[str, object]:
    return {
        "seconds": {label: round(time_command(tree, args, code, repeats), 3) for label, args, code in COMMANDS},
        "import_llmprune_cli_imports": imports_heavy(tree),
    }


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="also measure this git revision (the 'before' column)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--note", default="", help="a remark for the table (e.g. 'machine shared with other jobs')")
    ns = parser.parse_args()

    load_before = os.getloadavg()[0]
    runs: dict[str, dict[str, object]] = {}
    if ns.rev:
        commit = git("rev-parse", ns.rev)
        with tempfile.TemporaryDirectory(prefix="llmprune-startup-") as tmp:
            tree = Path(tmp) / "tree"
            git("worktree", "add", "--detach", str(tree), commit)
            try:
                runs["before"] = {"rev": commit[:10], **measure(tree, ns.repeats)}
            finally:
                git("worktree", "remove", "--force", str(tree))
    head = git("rev-parse", "HEAD")[:10]
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    runs["after"] = {"rev": head + ("+changes" if dirty else ""), **measure(ROOT, ns.repeats)}
    result = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "repeats": ns.repeats,
        "note": ns.note,
        "runs": runs,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    TABLE.write_text(markdown(result))
    print(TABLE.read_text())


def markdown(result: dict) -> str:
    runs = result["runs"]
    names = list(runs)
    header = "| command | " + " | ".join(f"{n} (`{runs[n]['rev']}`)" for n in names) + " |"
    lines = [
        "# Startup time",
        "",
        "Wall time of a fresh `python -m llmprune ...` process, best of "
        f"{result['repeats']} (`python benchmarks/startup.py`; results in `benchmarks/results/startup.json`). "
        "None of these commands needs a model's weights; `--estimate` reads only `config.json`.",
        "",
        f"Measured {result['date_utc']} UTC, Python {result['python']}, {result['cpu_model']}, "
        f"{result['cores']} cores, 1-minute load average {result['load_average_1min_before']} before and "
        f"{result['load_average_1min_after']} after." + (f" {result['note']}" if result["note"] else ""),
        "",
        header,
        "|---|" + "---:|" * len(names),
    ]
    for label, _, _ in COMMANDS:
        cells = " | ".join(f"{runs[n]['seconds'][label]:.2f} s" for n in names)
        lines.append(f"| `{label}` | {cells} |")
    for module in ("torch", "transformers"):
        cells = " | ".join("yes" if runs[n]["import_llmprune_cli_imports"][module] else "no" for n in names)
        lines.append(f"| `import llmprune.cli` imports {module} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
