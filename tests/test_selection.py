"""benchmarks/selection.py: a row's calibration budget (nsamples, seqlen) becomes the shared flags,
once, and the default budget keeps the cache keys rows were recorded under."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from common import prune_command  # noqa: E402
from selection import NSAMPLES, SEQLEN, Grid, grid_command  # noqa: E402


def test_point_budget_becomes_the_shared_flags_once():
    grid = Grid("semi24", "proxsparse", None, base={"lr": 2e-3}, points=[{"nsamples": 144, "seqlen": 512, "steps": 18}])
    (job,) = grid.jobs()
    words = grid_command(grid, {**grid.base, **job}).split()
    assert words.count("--nsamples") == 1 and words[words.index("--nsamples") + 1] == "144"
    assert words.count("--seqlen") == 1 and words[words.index("--seqlen") + 1] == "512"
    assert words[words.index("--steps") + 1] == "18" and words[words.index("--lr") + 1] == "0.002"


def test_grid_without_points_is_the_product_at_the_default_budget():
    grid = Grid("uniform", "minimax", 0.5, base={"lora_rank": 0}, vary={"lr": [0.01, 0.02], "ramp": [0.3, 0.5]})
    jobs = grid.jobs()
    assert len(jobs) == 4 and {(j["lr"], j["ramp"]) for j in jobs} == {
        (0.01, 0.3),
        (0.01, 0.5),
        (0.02, 0.3),
        (0.02, 0.5),
    }
    options = {**grid.base, **jobs[0]}
    # The command (and so the cache key) of a row at the default budget is what it was before
    # budgets could vary per row: rows cached in select.json stay valid.
    expected = prune_command("uniform", "minimax", 0.5, calib="CALIB_FIT", seqlen=SEQLEN, nsamples=NSAMPLES, **options)
    assert grid_command(grid, options) == expected
