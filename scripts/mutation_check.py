"""Mutation check of the numerical cores: each mutant breaks one piece of math and names the tests
that must then fail.

    python scripts/mutation_check.py            # every mutant
    python scripts/mutation_check.py NAME ...   # only these
    python scripts/mutation_check.py --list

The repository is copied to a temporary folder; there the named tests are first run on the clean
code (they must pass), then each mutant's patch is applied on its own (an exact source snippet,
replaced once) and its tests run with pytest in a subprocess whose ``PYTHONPATH`` is the copy. A
mutant whose tests all pass *survived*. Exit status 1 when a mutant survived, a snippet no longer
matches its file exactly once (the list must follow the code, it cannot rot silently), the tests
fail on the clean code, or pytest ends a mutant's run other than with failing tests (exit 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv"}


def ignore(folder: str, names: list[str]) -> set[str]:
    """Caches and version control are not copied (nor ``.ci/cache``, CI's downloads)."""
    skip = {n for n in names if n in SKIP}
    if Path(folder).name == ".ci" and "cache" in names:
        skip.add("cache")
    return skip


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    original: str  # exact source text, found exactly once in the file
    mutated: str
    tests: tuple[str, ...]  # pytest node ids; at least one must fail under the mutant


MUTANTS: list[Mutant] = [
    Mutant(
        "minimax-prox-removed",
        "llmprune/pruners/minimax.py",
        "z.copy_(torch.sign(z) * torch.clamp(z.abs() - thr, min=0.0))",
        "pass  # mutant: no soft threshold",
        ("tests/pruners/test_minimax.py::test_prox_soft_thresholds_the_pruned_scores_by_hand",),
    ),
    Mutant(
        "tyr-fitness-sign",
        "llmprune/pruners/tyr/search.py",
        "total += float((logp.exp() * (logp - q_top)).sum())",
        "total += float((logp.exp() * (q_top - logp)).sum())",
        (
            "tests/pruners/test_tyr.py::test_search_fitness_is_the_top_k_kl_computed_by_hand",
            "tests/pruners/test_tyr.py::test_search_keeps_the_candidate_with_the_lower_kl",
        ),
    ),
    Mutant(
        "proxsparse-lambda-not-scale-free",
        "llmprune/pruners/proxsparse.py",
        "self.lam = {n: o.lambda1 / self._metric_rms(n) for n in targets}",
        "self.lam = {n: o.lambda1 for n in targets}",
        ("tests/pruners/test_proxsparse.py::test_lambda_is_scale_free_per_matrix",),
    ),
    Mutant(
        "prox24-cost-without-half",
        "llmprune/core/prox.py",
        "return 0.5 * sq + lam * reg",
        "return sq + lam * reg",
        ("tests/test_prox.py::test_agrees_with_a_brute_force_minimiser",),
    ),
    Mutant(
        "obs-error-not-scaled-by-hinv-diagonal",
        "llmprune/core/obs.py",
        "err = (w - q) / d",
        "err = w - q",
        ("tests/test_kernels_by_hand.py::test_obs_with_a_prefix_mask_is_the_least_squares_refit",),
    ),
    Mutant(
        "distill-kl-without-rest",
        "llmprune/core/distill.py",
        "kl = kl + t_log_rest.exp() * (t_log_rest - s_rest)",
        "kl = kl + 0.0 * t_log_rest",
        ("tests/test_kernels_by_hand.py::test_topk_kl_on_top_k_and_rest_by_hand",),
    ),
]


def stale(mutants: list[Mutant], root: Path) -> list[str]:
    """Mutants whose snippet is not found exactly once (or whose file is gone)."""
    problems = []
    for m in mutants:
        path = root / m.file
        count = path.read_text().count(m.original) if path.is_file() else -1
        if count != 1:
            where = "file missing" if count < 0 else f"found {count} times"
            problems.append(f"{m.name}: snippet in {m.file} {where}: {m.original!r}")
    return problems


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    """pytest on ``tests`` in the copy; returns (exit code, last lines of output, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
    return proc.returncode, tail, time.perf_counter() - t0


def check_imports_copy(copy: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(copy))
    code = "import importlib.util; print(importlib.util.find_spec('llmprune').origin)"
    origin = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True)
    if not origin.stdout.strip().startswith(str(copy)):
        raise SystemExit(f"the subprocess imports llmprune from {origin.stdout.strip()!r}, not the copy {copy}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if args.list or unknown:
        for m in MUTANTS:
            print(f"{m.name:40} {m.file}")
        if unknown:
            print(f"unknown mutants: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 1 if unknown else 0

    problems = stale(mutants, ROOT)
    if problems:
        print("stale mutants (update scripts/mutation_check.py to follow the code):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmprune-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=ignore)
        check_imports_copy(copy)
        all_tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
        code, tail, secs = run_tests(copy, all_tests)
        if code != 0:
            print(f"the tests fail on the clean code (pytest exit {code}, {secs:.1f}s):\n{tail}", file=sys.stderr)
            return 1
        print(f"clean code: {len(all_tests)} test ids pass ({secs:.1f}s)")

        survived, broken = [], []
        for m in mutants:
            path = copy / m.file
            source = path.read_text()
            path.write_text(source.replace(m.original, m.mutated, 1))
            try:
                code, tail, secs = run_tests(copy, m.tests)
            finally:
                path.write_text(source)
            if code == 1:
                verdict = "killed"
            elif code == 0:
                verdict = "SURVIVED"
                survived.append(m.name)
            else:  # collection error, usage error, no tests: not a verdict on the math
                verdict = f"ERROR (pytest exit {code})"
                broken.append(m.name)
            print(f"{verdict:10} {m.name:40} {secs:5.1f}s  {' '.join(m.tests)}")
            if code not in (0, 1):
                print(tail)

    total = time.perf_counter() - t_start
    print(
        f"{len(mutants)} mutants: {len(mutants) - len(survived) - len(broken)} killed, "
        f"{len(survived)} survived, {len(broken)} errors ({total:.0f}s)"
    )
    return 1 if survived or broken else 0


if __name__ == "__main__":
    sys.exit(main())
