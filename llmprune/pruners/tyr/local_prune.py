"""Týr's local pruner for one module (``o`` with attention units, ``down`` with MLP channels).

Work in the ``[in, out]`` orientation ``V = Wᵀ``: a unit is a set of rows of ``V`` (one input
channel of ``down``; ``d_h`` rows per query head of ``o``, ``g·d_h`` rows per KV group). From the
module's calibration inputs ``X``: ``H = XᵀX`` (float32, summed over tokens) and ``G = H·V_dense``
(the target: the dense output). ``H`` is damped by ``percdamp·mean(diag H)`` for every inverse
(``obs.damp_hessian``: the damping policy shared with SparseGPT).

Each round scores the alive units by a first-order term plus the OBS cost of removing the unit
with optimal compensation of the others (methods.md §3.1),

    score_p = F(⟨V_p, G_p⟩) + ½ tr(V_pᵀ [(H_AA⁻¹)_pp]⁻¹ V_p),

where ``⟨V_p, G_p⟩ = Σ_t ⟨x_{t,p} V_p, x_t V_dense⟩`` is how much unit ``p``'s current output
contributes to the dense output (``G`` uses the *undamped* ``H``) and ``F`` is ``--first-order``:
``paper`` |·|, ``code`` the signed value, ``none`` 0. It is not the gradient of the reconstruction
error ``H V − G``: at the dense start that gradient is only the damping, ``λ·V_dense``, and exactly
zero without damping. The lowest scores are dropped and the joint OBS compensation is applied to
the remaining rows. After the last
round the kept rows are refit exactly by least squares against the dense output:
``V_K = (H_KK)⁻¹ G_K``. Everything is float32; a result holds the kept columns only.

Removing a column of ``o`` removes the matching rows of ``q`` (and ``k, v`` when a whole KV group
goes); removing a column of ``down`` removes rows of ``gate`` and ``up``. Those rows are simply
sliced (their outputs only feed the removed columns), so only ``o``/``down`` get new weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from llmprune.core.obs import cholesky_damped, damp_hessian
from llmprune.errors import NumericalError
from llmprune.pruners.tyr_options import DEFAULT_PERCDAMP, ROUNDS

#: How the first-order term ⟨V_p, G_p⟩ enters a unit's score (``--first-order``).
FirstOrder = Literal["paper", "code", "none"]


@dataclass(frozen=True)
class LocalSettings:
    """The local pruner's options as the supernet and the final prune pass them on
    (``--percdamp``, ``--first-order``, ``--mlp-rounds``); the defaults are the command line's."""

    percdamp: float = DEFAULT_PERCDAMP
    first_order: FirstOrder = "none"
    mlp_rounds: int = ROUNDS["down"]

    def rounds(self, key: str) -> int:
        """Rounds of one module type: ``o`` keeps methods.md's single round."""
        return self.mlp_rounds if key == "down" else ROUNDS[key]


@dataclass
class LocalResult:
    """Kept unit indices (sorted), their input columns and the refit weight of those columns only
    (``compact``: ``[out, len(columns)]``): the removed columns are exact zeros, so they are not kept."""

    kept: list[int]
    columns: torch.Tensor  # int64, the input columns of the kept units, in the order of ``compact``
    compact: torch.Tensor
    in_features: int

    @property
    def weight(self) -> torch.Tensor:
        """The refit weight ``[out, in]`` in dense coordinates (zeros in the removed columns)."""
        return scatter_columns(self.compact, self.columns, self.in_features)


def scatter_columns(compact: torch.Tensor, columns: torch.Tensor, in_features: int) -> torch.Tensor:
    """A compact ``[out, len(columns)]`` weight in dense coordinates ``[out, in_features]``."""
    dense = compact.new_zeros(compact.shape[0], in_features)
    if columns.numel():
        dense[:, columns] = compact
    return dense


def unit_rows(num_units: int, rows_per_unit: int) -> torch.Tensor:
    """``[U, r]`` row indices of ``V`` for units made of consecutive rows."""
    return torch.arange(num_units * rows_per_unit).view(num_units, rows_per_unit)


def _inverse(H: torch.Tensor) -> torch.Tensor:
    """``H⁻¹`` of an already damped block; more damping by the shared policy if it is singular."""
    return torch.cholesky_inverse(cholesky_damped(H, 0.0, "a Týr variant"))


def least_squares_refit(H: torch.Tensor, G: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``V_K = (H_KK)⁻¹ G_K`` for the kept rows ``rows`` (``H`` already damped)."""
    if rows.numel() == 0:
        return G.new_zeros(0, G.shape[1])
    Hk = H.index_select(0, rows).index_select(1, rows)
    Gk = G.index_select(0, rows)
    L, info = torch.linalg.cholesky_ex(Hk)
    if int(info) != 0:
        return torch.linalg.lstsq(Hk, Gk).solution
    return torch.cholesky_solve(Gk, L)


def first_order_term(V: torch.Tensor, G: torch.Tensor, local_rows: torch.Tensor, mode: FirstOrder) -> torch.Tensor:
    """``F(⟨V_p, G_p⟩)`` of every unit: ``paper`` the absolute value, ``code`` signed, ``none`` 0."""
    inner = (V[local_rows] * G[local_rows]).sum(dim=(1, 2))
    if mode == "paper":
        return inner.abs()
    if mode == "code":
        return inner
    if mode == "none":
        return torch.zeros_like(inner)
    raise ValueError(f"unknown first-order mode {mode!r} (paper, code or none)")


def unit_scores(
    V: torch.Tensor, G: torch.Tensor, Hinv: torch.Tensor, local_rows: torch.Tensor, first_order: FirstOrder = "none"
) -> torch.Tensor:
    """First-order + OBS score of every unit (rows ``local_rows[u]`` of the alive block);
    ``G`` holds the alive rows of ``H·V_dense``."""
    r = local_rows.shape[1]
    Vp = V[local_rows]  # [U, r, out]
    first = first_order_term(V, G, local_rows, first_order)
    if r == 1:
        obs = 0.5 * (Vp[:, 0] ** 2).sum(1) / Hinv[local_rows[:, 0], local_rows[:, 0]]
    else:
        blocks = Hinv[local_rows[:, :, None], local_rows[:, None, :]]  # [U, r, r]
        L, info = torch.linalg.cholesky_ex(blocks)
        sol = torch.cholesky_solve(Vp, L)  # [(H⁻¹)_pp]⁻¹ V_p
        obs = 0.5 * (Vp * sol).sum(dim=(1, 2))
    return first + obs


def _select_lowest(scores: torch.Tensor, n: int, groups: list[list[int]] | None) -> list[int]:
    """Positions of the ``n`` lowest scores; with ``groups``, the same number from each group."""
    if groups is None:
        order = torch.argsort(scores.double(), stable=True)
        return order[:n].tolist()
    per = n // len(groups)
    chosen: list[int] = []
    for members in groups:
        sub = scores[members]
        lowest = torch.argsort(sub.double(), stable=True)[:per].tolist()
        chosen += [members[i] for i in lowest]
    return chosen


@torch.no_grad()
def prune_module(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    rows: torch.Tensor,
    keep: int,
    rounds: int = 1,
    percdamp: float = 0.01,
    groups: list[list[int]] | None = None,
    target: torch.Tensor | None = None,
    first_order: FirstOrder = "none",
) -> LocalResult:
    """Prune ``weight`` (``[out, in]``) to ``keep`` of its units and refit the kept inputs.

    ``rows[u]`` lists the input columns of ``weight`` that form unit ``u``. ``groups`` (optional)
    partitions the units into sets that must lose the same number of units each (query heads of
    the KV groups). ``target`` is ``G = H·V_dense`` when it has been computed already.
    """
    return prune_module_levels(weight, hessian, rows, [keep], rounds, percdamp, groups, target, first_order)[int(keep)]


def _schedule(num_units: int, keeps: list[int], rounds: int, granule: int) -> list[int]:
    """Unit counts after each round of one progressive sweep from dense to the sparsest level.

    Rounds remove at most ``(num_units − sparsest) / rounds`` units each (so one level alone gets
    exactly ``rounds`` rounds, as methods.md §3 asks), and every level is a round boundary.
    """
    pruned = sorted({k for k in keeps if k < num_units}, reverse=True)
    if not pruned:
        return []
    size = max(granule, (num_units - pruned[-1]) / max(1, rounds))
    counts: list[int] = []
    prev = num_units
    for level in pruned:
        n = max(1, math.ceil((prev - level) / size - 1e-9))
        for r in range(1, n + 1):
            counts.append(prev - round((prev - level) * r / n / granule) * granule)
        counts[-1] = level
        prev = level
    return [c for i, c in enumerate(counts) if i == 0 or c != counts[i - 1]]


@torch.no_grad()
def prune_module_levels(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    rows: torch.Tensor,
    keeps: list[int],
    rounds: int = 1,
    percdamp: float = 0.01,
    groups: list[list[int]] | None = None,
    target: torch.Tensor | None = None,
    first_order: FirstOrder = "none",
) -> dict[int, LocalResult]:
    """Several levels of one module in a single progressive sweep (nested kept sets).

    Each round removes at most 1/``rounds`` of the way from dense to the sparsest level, every
    level is a round boundary, and each level is refit exactly by least squares on its own kept
    rows. A single level gets exactly ``rounds`` rounds.
    """
    W = weight.detach().float()
    V_dense = W.t().contiguous()  # [in, out]
    num_units = rows.shape[0]
    keeps = [max(0, min(int(k), num_units)) for k in keeps]
    Hraw = hessian.detach().float()
    G = target if target is not None else Hraw @ V_dense
    H = damp_hessian(Hraw, percdamp)
    granule = len(groups) if groups is not None else 1
    if groups is not None and any(k % granule for k in keeps):
        raise ValueError(f"query-head pruning needs counts divisible by {granule} KV groups")
    results: dict[int, LocalResult] = {}

    def finish(alive: list[int]) -> LocalResult:
        if not alive:
            return LocalResult([], rows.new_zeros(0), W.new_zeros(W.shape[0], 0), W.shape[1])
        kept_rows = rows[alive].reshape(-1)
        refit = least_squares_refit(H, G, kept_rows)
        if not torch.isfinite(refit).all():
            raise NumericalError("the local pruner's refit produced non-finite weights")
        return LocalResult(list(alive), kept_rows, refit.t().contiguous(), W.shape[1])

    alive = list(range(num_units))
    if num_units in keeps:
        results[num_units] = finish(alive)
    wanted = set(keeps)
    V = V_dense.clone()
    for count in _schedule(num_units, keeps, rounds, granule):
        if count == 0:
            results[0] = finish([])
            break
        n = len(alive) - count
        alive_rows = rows[alive].reshape(-1)
        local = torch.arange(alive_rows.numel()).view(len(alive), rows.shape[1])
        Haa = H.index_select(0, alive_rows).index_select(1, alive_rows)
        Va = V.index_select(0, alive_rows)
        Hinv = _inverse(Haa)
        scores = unit_scores(Va, G.index_select(0, alive_rows), Hinv, local, first_order)
        alive_groups = None
        if groups is not None:
            pos = {u: i for i, u in enumerate(alive)}
            alive_groups = [[pos[u] for u in members if u in pos] for members in groups]
        drop_pos = sorted(_select_lowest(scores, n, alive_groups))
        drop_local = local[drop_pos].reshape(-1)
        # Joint OBS compensation: δV_A = −H⁻¹[:, P] (H⁻¹_PP)⁻¹ V_P
        Hpp = Hinv.index_select(0, drop_local).index_select(1, drop_local)
        coef = torch.linalg.solve(Hpp, Va.index_select(0, drop_local))
        Va = Va - Hinv.index_select(1, drop_local) @ coef
        Va[drop_local] = 0
        V[alive_rows] = Va
        dropped = {alive[p] for p in drop_pos}
        alive = [u for u in alive if u not in dropped]
        if count in wanted:
            results[count] = finish(alive)
    return results
