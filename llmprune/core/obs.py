"""Optimal-brain-surgeon numerics shared by SparseGPT, ProxSparse's refit and Týr: one Hessian
damping policy and one OBS pruning loop.

Damping policy (every inverse of a calibration Hessian goes through it): dead inputs (zero
diagonal) get a unit diagonal, ``λ = percdamp·mean(diag H)`` is added to the diagonal, and a
factorisation that still fails is retried with ten times more damping (at least 1e-4·mean) a few
times before a one-line ``NumericalError``; a non-finite Hessian is a ``NumericalError`` at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from llmprune.errors import NumericalError


def damping_ladder(percdamp: float, tries: int = 6) -> Iterator[float]:
    """The damping fractions tried in turn: ``percdamp``, then ×10 per failure (at least 1e-4)."""
    damp = percdamp
    for _ in range(tries):
        yield damp
        damp = max(damp * 10.0, 1e-4)


def damp_hessian(hessian: torch.Tensor, percdamp: float, name: str = "") -> torch.Tensor:
    """``H + percdamp·mean(diag H)·I`` as a float32 copy, dead inputs given a unit diagonal first."""
    H = hessian.detach().float().clone()
    if not torch.isfinite(H).all():
        raise NumericalError(f"non-finite Hessian for {name or 'a module'} (use --dtype float32 or bfloat16)")
    diag = torch.diagonal(H)
    diag[diag == 0] = 1.0
    if percdamp > 0:
        diag += percdamp * diag.mean().clamp_min(1e-8)
    return H


def _singular(name: str, last: float) -> NumericalError:
    return NumericalError(f"Hessian of {name or 'a module'} stays singular after damping up to {last:g}·mean(diag)")


def cholesky_damped(H: torch.Tensor, percdamp: float = 0.0, name: str = "", tries: int = 6) -> torch.Tensor:
    """Lower Cholesky factor of ``H + damp·mean(diag H)·I`` for the first ``damp`` of
    :func:`damping_ladder` that works (``H`` itself first when ``percdamp`` is 0)."""
    mean_diag = torch.diagonal(H).mean().clamp_min(1e-8)
    damp = percdamp
    for damp in damping_ladder(percdamp, tries):
        L, info = torch.linalg.cholesky_ex(H if damp == 0 else plus_diagonal(H, damp * mean_diag))
        if int(info) == 0:
            return L
    raise _singular(name, damp)


def plus_diagonal(H: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``H + value·I`` as one new matrix (the same floats as adding ``value · eye``, without an
    identity and a scaled identity of ``H``'s size alive next to it: 14336² floats each at 8B)."""
    out = H.clone()
    out.diagonal().add_(value)
    return out


def damped_cholesky_inverse(
    hessian: torch.Tensor, percdamp: float = 0.01, name: str = "", tries: int = 6
) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` with λ = percdamp·mean(diag H), by the damping policy."""
    H = damp_hessian(hessian, 0.0, name)  # dead inputs and the finiteness check; λ below
    # The mean over a copy of the diagonal (summation order differs from the view's in the last
    # bit; SparseGPT's outputs are pinned by scripts/check_identical.py).
    mean_diag = torch.diag(H).mean().clamp_min(1e-8)
    damp = percdamp
    # At most three matrices of H's size live at once (H kept for a retry, then the factor, then
    # the inverse): each step frees its input as soon as the next exists.
    for damp in damping_ladder(percdamp, tries):
        L, info = torch.linalg.cholesky_ex(plus_diagonal(H, damp * mean_diag))
        if int(info) == 0:
            inverse = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if int(info) == 0:
                return U
    raise _singular(name, damp)


@torch.no_grad()
def obs_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    mask: torch.Tensor | None = None,
    n: int = 2,
    m: int = 4,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "",
) -> torch.Tensor:
    """OBS pruning with SparseGPT's column-block update; returns the new float32 weight.

    Without ``mask`` the N:M mask is chosen as it goes by the OBS saliency w²/[H⁻¹]²_jj (SparseGPT:
    exactly ``m − n`` zeros forced in every group of ``m`` consecutive inputs); with ``mask``
    (True = keep) exactly the given mask is pruned. Either way each pruned weight is set to 0 and
    its error is spread over the not-yet-processed columns.
    """
    W = weight.detach().float().clone()
    cols = W.shape[1]
    W[:, torch.diag(hessian) == 0] = 0
    Hinv = damped_cholesky_inverse(hessian, percdamp, name)
    drop_all = None if mask is None else ~mask.to(W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        pruned = torch.zeros_like(W1, dtype=torch.bool) if drop_all is None else drop_all[:, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if drop_all is None and i % m == 0:
                saliency = W1[:, i : i + m] ** 2 / torch.diag(Hinv1)[i : i + m].reshape(1, -1) ** 2
                drop = torch.topk(saliency, m - n, dim=1, largest=False).indices
                pruned.scatter_(1, i + drop, True)
            q = w.clone()
            q[pruned[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if not torch.isfinite(W).all():
        what = "SparseGPT" if mask is None else "OBS with a given mask"
        raise NumericalError(f"{what} produced non-finite weights for {name or 'a module'}")
    return W


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    n: int = 2,
    m: int = 4,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "",
) -> torch.Tensor:
    """SparseGPT N:M: OBS pruning with the mask chosen by saliency (:func:`obs_prune` without a mask)."""
    return obs_prune(weight, hessian, None, n, m, blocksize, percdamp, name)
