"""scripts/mutation_check.py: every mutant of the numerical cores is killed by its tests, and no
snippet has drifted from the code (about two minutes: one pytest subprocess per mutant)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutation_check.py"


@pytest.mark.slow
def test_every_mutant_is_killed():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_mutant_snippet_matches_the_code_once():
    """The quick half: the list follows the code (the full check runs the tests)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import mutation_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert mutation_check.stale(mutation_check.MUTANTS, SCRIPT.parents[1]) == []
    assert len({m.name for m in mutation_check.MUTANTS}) == len(mutation_check.MUTANTS)
