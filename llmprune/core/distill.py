"""Distillation from the dense teacher with precomputed top-k logits.

The teacher runs once over the calibration tokens; per position we keep the log-probabilities of
its ``k`` most likely tokens (at temperature ``T``), their indices, and the log of the remaining
probability mass. The student then never needs the teacher resident. The loss is the KL
divergence ``KL(p_teacher ‖ q_student)`` over the ``k + 1`` outcomes {top-k tokens, "any other
token"}, which is a proper divergence (zero iff the two agree on those outcomes) and equals the full
KL when ``k`` is the vocabulary size. Scaled by ``T²`` as usual.

Both losses (and the LM loss, :func:`lm_loss`) walk the positions in chunks of at most
:data:`LOSS_CHUNK_BYTES` of float32 ``[positions × vocab]``, each chunk's float32 work recomputed
in backward (``torch.utils.checkpoint``) instead of kept: at 8B (vocabulary 128256) a step of
4 × 2048 positions would otherwise hold several 4 GiB float32 copies of the logits. When every
position fits in one chunk the plain, unchunked expression runs (the reference model's case, so
its results are byte-identical); otherwise the mean is a sum of chunk sums over the count, equal up
to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmprune.errors import NumericalError


@dataclass
class TeacherTopK:
    """Teacher targets for ``[N, L]`` calibration tokens."""

    logp: torch.Tensor  # [N, L, k] float32 teacher log-probs of its top-k tokens
    index: torch.Tensor  # [N, L, k] int64 token ids
    log_rest: torch.Tensor  # [N, L] float32 log of the probability outside the top-k
    temperature: float

    def batch(self, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.logp[rows].to(device), self.index[rows].to(device), self.log_rest[rows].to(device)

    def state(self) -> dict:
        return {"logp": self.logp, "index": self.index, "log_rest": self.log_rest, "temperature": self.temperature}

    @classmethod
    def from_state(cls, state: dict) -> TeacherTopK:
        return cls(state["logp"], state["index"], state["log_rest"], float(state["temperature"]))


#: Largest float32 ``[positions × vocab]`` block one loss chunk materialises.
LOSS_CHUNK_BYTES = 256 * 2**20


def chunk_positions(vocab: int, budget: int = LOSS_CHUNK_BYTES) -> int:
    """Positions per loss chunk: ``budget / (4 · vocab)`` (at least one)."""
    return max(1, budget // (4 * vocab))


def pieces(rows: int, length: int, size: int) -> list[tuple[slice, slice]]:
    """``(row slice, position slice)`` blocks of at most ``size`` positions covering ``rows × length``:
    whole rows grouped when a row fits, else each row cut along its positions."""
    if size >= length:
        per = size // length
        return [(slice(r, min(r + per, rows)), slice(0, length)) for r in range(0, rows, per)]
    return [(slice(r, r + 1), slice(t, min(t + size, length))) for r in range(rows) for t in range(0, length, size)]


def chunked_sum(fn: Callable[..., torch.Tensor], tensors: tuple[torch.Tensor, ...], size: int) -> torch.Tensor:
    """``Σ fn(*block)`` over the :func:`pieces` of ``[rows, length, ...]`` tensors, each block
    checkpointed (its float32 intermediates exist only while it is computed or recomputed)."""
    rows, length = tensors[0].shape[:2]
    total: torch.Tensor | None = None
    for r, t in pieces(rows, length, size):
        part = checkpoint(fn, *(x[r, t] for x in tensors), use_reentrant=False)
        total = part if total is None else total + part
    assert total is not None  # at least one position
    return total


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy (float32) of ``[B, L, V]`` logits on ``[B, L]`` tokens."""
    rows, length, vocab = logits.shape
    size = chunk or chunk_positions(vocab)
    n = rows * (length - 1)
    if n <= size:
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), tokens[:, 1:].reshape(-1))
    return chunked_sum(_ce_sum, (logits[:, :-1], tokens[:, 1:]), size) / n


def _ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")


def _topk_parts(logits: torch.Tensor, index: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``index`` and log of the rest, from full logits (float32)."""
    z = logits.float() / temperature
    lse = torch.logsumexp(z, dim=-1)
    top = z.gather(-1, index) - lse[..., None]
    if index.shape[-1] >= z.shape[-1]:  # the top-k is the whole vocabulary: nothing else
        return top, torch.full_like(lse, float("-inf"))
    rest = torch.logsumexp(z.scatter(-1, index, float("-inf")), dim=-1) - lse
    return top, rest


@torch.no_grad()
def precompute_teacher(
    model: nn.Module,
    tokens: torch.Tensor,
    k: int,
    temperature: float,
    batch_size: int,
    device: torch.device,
    progress=None,
) -> TeacherTopK:
    """Run the (dense) model once and keep its top-k targets on CPU (float32 work chunked)."""
    logps, indices, rests = [], [], []
    where: list[tuple[slice, slice]] = []
    for start in range(0, tokens.shape[0], batch_size):
        full = model(tokens[start : start + batch_size].to(device), use_cache=False).logits
        rows, length, vocab = full.shape
        for r, t in pieces(rows, length, chunk_positions(vocab)):
            where.append((slice(start + r.start, start + r.stop), t))
            logits = full[r, t].float()
            kk = min(k, vocab)
            index = torch.topk(logits, kk, dim=-1).indices
            top, rest = _topk_parts(logits, index, temperature)
            if not torch.isfinite(top).all():
                raise NumericalError("teacher logits are not finite (fp16 overflow? use --dtype float32 or bfloat16)")
            logps.append(top.cpu())
            indices.append(index.cpu())
            rests.append(rest.clamp_min(-1e4).cpu())  # p_rest may underflow to 0
        if progress:
            progress()
    return TeacherTopK(_stitch(logps, where), _stitch(indices, where), _stitch(rests, where), temperature)


def _stitch(blocks: list[torch.Tensor], where: list[tuple[slice, slice]]) -> torch.Tensor:
    """Put :func:`pieces` blocks back into one ``[N, L, ...]`` tensor (``where``: their places)."""
    rows = max(r.stop for r, _ in where)
    length = max(t.stop for _, t in where)
    out = torch.empty(rows, length, *blocks[0].shape[2:], dtype=blocks[0].dtype)
    for block, (r, t) in zip(blocks, where):
        out[r, t] = block
    return out


def topk_kl(
    student_logits: torch.Tensor,
    t_logp: torch.Tensor,
    t_index: torch.Tensor,
    t_log_rest: torch.Tensor,
    temperature: float,
    chunk: int | None = None,
) -> torch.Tensor:
    """Mean over positions of ``T² · KL(teacher ‖ student)`` on {top-k, rest} (chunked, see above)."""
    rows, length, vocab = student_logits.shape
    size = chunk or chunk_positions(vocab)
    if rows * length <= size:
        return _kl(student_logits, t_logp, t_index, t_log_rest, temperature).mean() * temperature**2

    def block(s: torch.Tensor, lp: torch.Tensor, ix: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        return _kl(s, lp, ix, lr, temperature).sum()

    total = chunked_sum(block, (student_logits, t_logp, t_index, t_log_rest), size)
    return total / (rows * length) * temperature**2


def _kl(
    student_logits: torch.Tensor,
    t_logp: torch.Tensor,
    t_index: torch.Tensor,
    t_log_rest: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    s_top, s_rest = _topk_parts(student_logits, t_index, temperature)
    kl = (t_logp.exp() * (t_logp - s_top)).sum(-1)
    if t_index.shape[-1] < student_logits.shape[-1]:
        kl = kl + t_log_rest.exp() * (t_log_rest - s_rest)
    return kl
