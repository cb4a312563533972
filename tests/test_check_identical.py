"""scripts/check_identical.py passes as shipped: this checkout's outputs match the recorded hashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_check_identical() -> None:
    """Every case (the learned methods, the baselines, the recovery) is byte-identical."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_identical.py")], capture_output=True, text=True, cwd=ROOT
    )
    print(proc.stdout)  # each case's result and wall time (pytest -rP or -s shows it)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
