"""Distillation from the dense teacher with precomputed top-k logits.

The teacher runs once over the calibration tokens; per position we keep the log-probabilities of
its ``k`` most likely tokens (at temperature ``T``), their indices, and the log of the remaining
probability mass. The student then never needs the teacher resident. The loss is the KL
divergence ``KL(p_teacher ‖ q_student)`` over the ``k + 1`` outcomes {top-k tokens, "any other
token"}, which is a proper divergence (zero iff the two agree on those outcomes) and equals the full
KL when ``k`` is the vocabulary size. Scaled by ``T²`` as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

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
    """Run the (dense) model once and keep its top-k targets on CPU."""
    logps, indices, rests = [], [], []
    for start in range(0, tokens.shape[0], batch_size):
        logits = model(tokens[start : start + batch_size].to(device), use_cache=False).logits.float()
        kk = min(k, logits.shape[-1])
        index = torch.topk(logits, kk, dim=-1).indices
        top, rest = _topk_parts(logits, index, temperature)
        if not torch.isfinite(top).all():
            raise NumericalError("teacher logits are not finite (fp16 overflow? use --dtype float32 or bfloat16)")
        logps.append(top.cpu())
        indices.append(index.cpu())
        rests.append(rest.clamp_min(-1e4).cpu())  # p_rest may underflow to 0
        if progress:
            progress()
    return TeacherTopK(torch.cat(logps), torch.cat(indices), torch.cat(rests), temperature)


def topk_kl(
    student_logits: torch.Tensor,
    t_logp: torch.Tensor,
    t_index: torch.Tensor,
    t_log_rest: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Mean over positions of ``T² · KL(teacher ‖ student)`` on {top-k, rest}."""
    s_top, s_rest = _topk_parts(student_logits, t_index, temperature)
    kl = (t_logp.exp() * (t_logp - s_top)).sum(-1)
    if t_index.shape[-1] < student_logits.shape[-1]:
        kl = kl + t_log_rest.exp() * (t_log_rest - s_rest)
    return kl.mean() * temperature**2
