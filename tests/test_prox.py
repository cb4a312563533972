"""The 2:4 proximal operator (llmprune.core.prox): exactness, optimality against candidates and a
brute-force minimiser, signs/order, scale invariance, vectorisation."""

from __future__ import annotations

import itertools

import pytest
import torch

from llmprune.core import prox
from llmprune.core.prox import objective, prox_24, regulariser, share_24


def random_groups(n: int, seed: int) -> torch.Tensor:
    """Mixed random groups: Gaussian, heavy-tailed, near-ties, exact ties, zeros, outliers."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g) * torch.rand(n, 1, generator=g) * 2
    q = n // 6
    z[:q] = torch.randn(q, 1, generator=g) + 0.05 * torch.randn(q, 4, generator=g)  # near-equal magnitudes
    z[q : 2 * q] = torch.randint(-2, 3, (q, 4), generator=g).float()  # exact ties and zeros
    z[2 * q : 3 * q, 2:] = 0.0  # already 2:4
    z[3 * q : 4 * q] *= 10.0  # large scale
    return z


def brute_force(z: torch.Tensor, lam: float, starts: int = 24, sweeps: int = 60) -> torch.Tensor:
    """Per-group minimum of ½‖w − z‖² + λR(w) found independently of the operator: the best of all
    2-sparse supports (exact) and of exact coordinate descent on all four entries from many random
    points of the box [0, |z|] (the minimiser lies there with the signs of z)."""
    a = z.abs()
    best = torch.full((z.shape[0],), float("inf"))
    for i, j in itertools.combinations(range(4), 2):  # every 2-sparse support, exactly
        w = torch.zeros_like(a)
        w[:, i], w[:, j] = a[:, i], a[:, j]
        best = torch.minimum(best, objective(w, a, lam).squeeze(-1))
    g = torch.Generator().manual_seed(123)
    for s in range(starts):
        w = a.clone() if s == 0 else torch.rand(a.shape, generator=g) * a
        for _ in range(sweeps):
            for i in range(4):
                x, y, u = (w[:, j] for j in range(4) if j != i)
                w[:, i] = torch.clamp(a[:, i] - lam * (x * y + x * u + y * u), min=0.0)
        best = torch.minimum(best, objective(w, a, lam).squeeze(-1))
    return best


def test_lambda_zero_returns_the_input_exactly():
    z = torch.randn(16, 32)
    assert torch.equal(prox_24(z, 0.0), z)
    assert torch.equal(prox_24(z, torch.zeros(16, 1)), z)


@pytest.mark.parametrize("lam", [50.0, 1e3])
def test_large_lambda_leaves_at_most_two_nonzeros_per_group(lam):
    z = random_groups(600, 0).reshape(30, 80)
    out = prox_24(z, lam)
    assert int((out.reshape(30, 20, 4) != 0).sum(-1).max()) <= 2
    assert float(regulariser(out).max()) == 0.0
    assert share_24(out) == 1.0
    # and the two kept entries are the two largest, unchanged
    nz = out != 0
    assert torch.equal(out[nz], z[nz])
    kept = out.reshape(-1, 4).abs().sort(-1, descending=True).values[:, :2]
    top2 = z.reshape(-1, 4).abs().sort(-1, descending=True).values[:, :2]
    assert torch.equal(kept, top2)


@pytest.mark.parametrize("lam", [0.05, 0.3, 1.0, 3.0])
def test_never_worse_than_any_enumerated_candidate(lam):
    z = random_groups(1200, 1)
    got = objective(prox_24(z, lam), z, lam).squeeze(-1)
    a = z.abs()
    candidates = [torch.zeros_like(z), z]  # nothing kept; everything kept (cost λR(z))
    for i, j in itertools.combinations(range(4), 2):  # every 2-sparse support
        w = torch.zeros_like(z)
        w[:, i], w[:, j] = z[:, i], z[:, j]
        candidates.append(w)
    # the paper's candidates: coordinate descent from w = 0 on the top-3 and on all 4 entries
    sorted_a, order = a.sort(-1, descending=True)
    cols = list(sorted_a.t().contiguous().unbind(0))
    lam_v = torch.full((z.shape[0],), lam)
    for active in (3, 4):
        w_sorted = torch.stack(prox._coordinate_descent(cols, lam_v, active, 100, 1e-7, "zero"), -1)
        w = torch.empty_like(w_sorted).scatter_(-1, order, w_sorted) * torch.sign(z)
        candidates.append(w)
    for cand in candidates:
        cost = objective(cand, z, lam).squeeze(-1)
        assert bool((got <= cost + 1e-5 * (1 + cost.abs())).all())


@pytest.mark.parametrize("lam", [0.1, 0.5, 1.0, 2.5])
def test_agrees_with_a_brute_force_minimiser(lam):
    z = random_groups(900, 2)
    got = objective(prox_24(z, lam), z, lam).squeeze(-1)
    best = brute_force(z, lam)
    # never worse than the brute force, and the brute force never finds anything better
    assert float((got - best).max()) <= 1e-5 * (1 + float(best.abs().max()))


def test_a_fine_grid_on_single_groups_finds_nothing_better():
    grid = torch.linspace(0, 1, 41)
    w = torch.cartesian_prod(grid, grid, grid, grid)  # fractions of |z|
    g = torch.Generator().manual_seed(5)
    for _ in range(6):
        z = torch.randn(1, 4, generator=g)
        lam = float(torch.rand(1, generator=g)) * 2
        got = float(objective(prox_24(z, lam), z, lam))
        cand = w * z  # every grid point inside the box, with z's signs
        best = float(objective(cand, z.expand_as(cand), lam).min())
        assert got <= best + 1e-6


def test_signs_and_order_are_preserved_and_entries_only_shrink():
    z = random_groups(1200, 3)
    for lam in (0.05, 0.5, 2.0):
        out = prox_24(z, lam)
        assert bool(((out == 0) | (torch.sign(out) == torch.sign(z))).all())
        assert bool((out.abs() <= z.abs() + 1e-7).all())
        a, b = z.abs(), out.abs()
        for i, j in itertools.permutations(range(4), 2):
            bigger = a[:, i] > a[:, j]
            assert bool((b[:, i][bigger] >= b[:, j][bigger] - 1e-7).all())


def test_scale_invariance_behind_the_scale_free_lambda():
    """prox(c·z, λ/c) = c·prox(z, λ): with λ = λ₁/rms(W), scaling a matrix scales the result."""
    z = torch.randn(64, 64)
    for c in (0.01, 7.0):
        lam = 0.4 / float(z.pow(2).mean().sqrt())
        torch.testing.assert_close(prox_24(c * z, lam / c), c * prox_24(z, lam), rtol=1e-4, atol=1e-3 * c)


def test_vectorised_with_per_row_lambda_equals_row_by_row_and_returns_float32():
    z = torch.randn(8, 24).to(torch.bfloat16)
    lam = torch.rand(8, 1) * 3
    out = prox_24(z, lam)
    assert out.dtype == torch.float32 and out.shape == z.shape
    for r in range(8):
        torch.testing.assert_close(out[r], prox_24(z[r : r + 1].float(), float(lam[r])).squeeze(0))
    # batched 3-D input (a stack of matrices) behaves like the 2-D one
    torch.testing.assert_close(prox_24(z.float().reshape(2, 4, 24), 0.7).reshape(8, 24), prox_24(z, 0.7))


def test_rejects_widths_that_are_not_a_multiple_of_four():
    with pytest.raises(ValueError):
        prox_24(torch.randn(3, 6), 1.0)
