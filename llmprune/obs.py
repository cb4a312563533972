"""Optimal-brain-surgeon numerics shared by SparseGPT and Týr: damped inverses, N:M OBS pruning."""

from __future__ import annotations

import torch

from llmprune.errors import NumericalError


def damped_cholesky_inverse(hessian: torch.Tensor, percdamp: float = 0.01, name: str = "", tries: int = 6) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` with λ = percdamp·mean(diag H).

    A singular or badly conditioned ``H`` is damped progressively (×10 per try) instead of
    crashing; dead inputs (zero diagonal) get a unit diagonal.
    """
    H = hessian.detach().float().clone()
    if not torch.isfinite(H).all():
        raise NumericalError(f"non-finite Hessian for {name or 'a module'} (use --dtype float32 or bfloat16)")
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    mean_diag = torch.diag(H).mean().clamp_min(1e-8)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    damp = percdamp
    for _ in range(tries):
        L, info = torch.linalg.cholesky_ex(H + damp * mean_diag * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return U
        last, damp = damp, max(damp * 10.0, 1e-4)
    raise NumericalError(f"Hessian of {name or 'a module'} stays singular after damping up to {last:g}·mean(diag)")


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    n: int = 2,
    m: int = 4,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "",
) -> torch.Tensor:
    """SparseGPT N:M: choose masks by OBS saliency w²/[H⁻¹]²_jj and update the remaining weights.

    Returns the new float32 weight with exactly ``m − n`` zeros forced in every group of ``m``
    consecutive inputs (some kept weights may also be zero if they were zero before).
    """
    W = weight.detach().float().clone()
    cols = W.shape[1]
    dead = torch.diag(hessian) == 0
    W[:, dead] = 0
    Hinv = damped_cholesky_inverse(hessian, percdamp, name)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        pruned = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if i % m == 0:
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
        raise NumericalError(f"SparseGPT produced non-finite weights for {name or 'a module'}")
    return W
