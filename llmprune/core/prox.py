"""The proximal operator of the ProxSparse 2:4 regulariser (methods.md §4), vectorised, float32.

For a group ``z`` of 4 consecutive inputs of a weight row, the regulariser is

    R(w) = |w1 w2 w3| + |w1 w2 w4| + |w1 w3 w4| + |w2 w3 w4|,

which is zero iff at most two entries are non-zero. The proximal operator solves

    prox(z) = argmin_w  ½‖w − z‖² + λ·R(w).

The minimiser keeps the signs of ``z`` and the order of ``|z|`` (swapping a larger ``|z_j|`` into
the support never costs more), so with ``a = sort(|z|)`` descending only three supports need to be
considered: the top 2 (cost ½(a3² + a4²), R = 0), the top 3 and all 4. The two non-trivial problems
are solved by exact coordinate minimisation (Gauss–Seidel) from ``w = 0``: R is multilinear, so
each coordinate's problem is a 1-D quadratic with the closed form

    w_i ← max(0, a_i − λ · Σ_{pairs (j, k) of the other active entries} w_j w_k),

for at most ``max_sweeps`` sweeps (100 as in the paper) or until no entry moves by more than
``tol`` (relative to the group's largest magnitude). The cheapest of the three candidates by the
full objective wins; order and signs are then restored. Everything is computed in float32 on whole
matrices at once: ``z`` may have any shape whose last dimension is a multiple of 4.
"""

from __future__ import annotations

import torch

GROUP = 4
STARTS = ("shrunk",)
ACTIVE = (3, 4)
CHECK_EVERY = 4  # sweeps between convergence checks (a check costs about one sweep)


def regulariser(w: torch.Tensor) -> torch.Tensor:
    """R(w) of every group of 4 consecutive entries along the last dimension: shape ``[..., n/4]``."""
    a = _groups(w).abs()
    a1, a2, a3, a4 = a.unbind(-1)
    return a1 * a2 * (a3 + a4) + a3 * a4 * (a1 + a2)


def objective(w: torch.Tensor, z: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Per-group prox objective ½‖w − z‖² + λ·R(w) (λ broadcast against the group tensor)."""
    d = _groups(w.float() - z.float())
    return 0.5 * (d * d).sum(-1) + _lam(lam, d) * regulariser(w.float())


def share_24(w: torch.Tensor) -> float:
    """Fraction of groups of 4 that already have at most two non-zeros."""
    nz = (_groups(w) != 0).sum(-1)
    return float((nz <= 2).float().mean())


def prox_24(z: torch.Tensor, lam: torch.Tensor | float, max_sweeps: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Proximal operator of ``λ·R`` applied to every group of 4 along the last dimension of ``z``.

    ``lam`` is a scalar or a tensor broadcastable to ``z.shape[:-1] + (1,)`` (e.g. one value per
    matrix, or per row ``[out, 1]``). Returns a float32 tensor shaped like ``z``.
    """
    zf = z.detach().float()
    if zf.shape[-1] % GROUP:
        raise ValueError(f"last dimension {zf.shape[-1]} is not a multiple of {GROUP}")
    groups = _groups(zf)  # [..., G, 4]
    lam_t = _lam(lam, groups)  # broadcastable to [..., G]
    if not torch.is_tensor(lam) and lam == 0:
        return zf.clone()

    a_abs = groups.abs()
    a, order = torch.sort(a_abs, dim=-1, descending=True, stable=True)
    lam_g = torch.broadcast_to(lam_t, a.shape[:-1]).reshape(-1)
    flat = a.reshape(-1, GROUP)
    best = _solve_sorted(flat, lam_g, max_sweeps, tol)  # [n, 4], sorted order
    w_sorted = best.reshape(a.shape)
    w_abs = torch.empty_like(w_sorted).scatter_(-1, order, w_sorted)
    out = torch.where(groups < 0, -w_abs, w_abs)
    return out.reshape(zf.shape)


def _solve_sorted(a: torch.Tensor, lam: torch.Tensor, max_sweeps: int, tol: float) -> torch.Tensor:
    """Minimise over the three candidate supports for rows ``a`` (sorted descending, ≥ 0).

    Works on the coordinates as four contiguous vectors (``[4, n]``): element-wise kernels on long
    contiguous vectors are far faster than on strided columns, and selection uses ``where`` rather
    than boolean indexing.
    """
    cols = list(a.t().contiguous().unbind(0))  # a1..a4, each [n]
    zero = torch.zeros_like(cols[0])
    # Candidate 1: the top two exactly (R = 0, cost ½(a3² + a4²)). Groups with a3 = 0 are already
    # 2:4; the solvers below return the same point for them.
    best = [cols[0], cols[1], zero, zero]
    best_cost = _cost_sorted(best, cols, lam)
    for active in ACTIVE:
        for start in STARTS:
            cand = _coordinate_descent(cols, lam, active, max_sweeps, tol, start)
            cost = _cost_sorted(cand, cols, lam)
            better = cost < best_cost
            best = [torch.where(better, c, b) for c, b in zip(cand, best)]
            best_cost = torch.where(better, cost, best_cost)
    return torch.stack(best, dim=-1)


def _coordinate_descent(
    a: list[torch.Tensor], lam: torch.Tensor, active: int, max_sweeps: int, tol: float, start: str = "zero"
) -> list[torch.Tensor]:
    """Gauss–Seidel on the first ``active`` (3 or 4) coordinates; the other coordinates stay 0.

    Starts: ``"zero"`` (w = 0, as in the paper), ``"input"`` (w = a) or ``"shrunk"`` (each entry
    at the root of ``t = a − c·λ·t²``, the interior point of equal entries; the default, see
    ``STARTS``). A group has converged when no coordinate moved by more than ``tol`` times the
    group's largest magnitude in a sweep; the groups still moving are carried on alone.
    """
    aw = a[:active]
    if start == "zero":
        ww = [torch.zeros_like(x) for x in aw]
    elif start == "input":
        ww = [x.clone() for x in aw]
    else:  # "shrunk": the interior stationary point if all active entries were equal to a_i
        c = 1.0 if active == 3 else 3.0
        ww = [2.0 * x / (1.0 + torch.sqrt(1.0 + 4.0 * c * lam * x)) for x in aw]
    ww = _sweeps(aw, lam, a[0] * tol, ww, active, max_sweeps)
    zero = torch.zeros_like(a[0])
    return ww + [zero] * (GROUP - active)


def _sweeps(
    aw: list[torch.Tensor], lam: torch.Tensor, thr: torch.Tensor, ww: list[torch.Tensor], active: int, budget: int
) -> list[torch.Tensor]:
    n = aw[0].numel()
    for sweep in range(budget):
        check = sweep % CHECK_EVERY == CHECK_EVERY - 1 and sweep < budget - 1
        prev = [w.clone() for w in ww] if check else None
        for i in range(active):
            others = [ww[j] for j in range(active) if j != i]
            if active == 3:
                pair = others[0] * others[1]
            else:
                x, y, u = others
                pair = torch.addcmul(x * (y + u), y, u)
            ww[i] = torch.addcmul(aw[i], lam, pair, value=-1.0).clamp_(min=0.0)
        if check:
            assert prev is not None  # cloned above whenever check is set
            moved: torch.Tensor | None = None
            for w, p in zip(ww, prev):
                step = (w - p).abs_() > thr
                moved = step if moved is None else moved.logical_or_(step)
            assert moved is not None  # ww holds at least three groups
            count = int(moved.sum())
            if count == 0:
                return ww
            if count < n // 2:  # carry on with the groups still moving only
                idx = torch.nonzero(moved).squeeze(1)
                sub = _sweeps(
                    [x.index_select(0, idx) for x in aw],
                    lam.index_select(0, idx),
                    thr.index_select(0, idx),
                    [w.index_select(0, idx) for w in ww],
                    active,
                    budget - sweep - 1,
                )
                for w, s in zip(ww, sub):
                    w.index_copy_(0, idx, s)
                return ww
    return ww


def _cost_sorted(w: list[torch.Tensor], a: list[torch.Tensor], lam: torch.Tensor) -> torch.Tensor:
    w1, w2, w3, w4 = w
    reg = w1 * w2 * (w3 + w4) + w3 * w4 * (w1 + w2)
    sq = sum((wi - ai) ** 2 for wi, ai in zip(w, a))
    return 0.5 * sq + lam * reg


def _groups(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(*w.shape[:-1], w.shape[-1] // GROUP, GROUP)


def _lam(lam: torch.Tensor | float, groups: torch.Tensor) -> torch.Tensor:
    """λ as a float32 tensor broadcastable to the group tensor without its last dimension."""
    t = torch.as_tensor(lam, dtype=torch.float32, device=groups.device)
    if t.dim() == 0:
        return t
    # A per-row/per-matrix λ given against the weight shape [..., 1] maps onto [..., G].
    return t.reshape(*t.shape[:-1], 1) if t.shape[-1:] == (1,) else t
