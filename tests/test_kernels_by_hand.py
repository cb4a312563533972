"""Shared numerical kernels against values worked out by hand or by an independent solver: the
distillation KL on {top-k, rest} (llmprune.core.distill) and the OBS update (llmprune.core.obs)."""

from __future__ import annotations

import math

import pytest
import torch

from llmprune.core.distill import topk_kl
from llmprune.core.obs import obs_prune


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_kl_on_top_k_and_rest_by_hand(temperature):
    # teacher p = (1/2, 1/4, 1/8, 1/8), top-2 kept, rest mass 1/4; student uniform (any temperature):
    # KL = ½·log(½ / ¼) + ¼·log(¼ / ¼) + ¼·log(¼ / ½) = ¼·log 2, times T²
    t_logp = torch.log(torch.tensor([[[0.5, 0.25]]]))
    t_index = torch.tensor([[[0, 1]]])
    t_log_rest = torch.log(torch.tensor([[0.25]]))
    student = torch.zeros(1, 1, 4)
    got = topk_kl(student, t_logp, t_index, t_log_rest, temperature)
    assert float(got) == pytest.approx(temperature**2 * 0.25 * math.log(2), rel=1e-5)
    # a student equal to the teacher on {top-2, rest} (however the rest is split) has KL 0
    same = torch.log(torch.tensor([[[0.5, 0.25, 0.2, 0.05]]])) * temperature
    assert float(topk_kl(same, t_logp, t_index, t_log_rest, temperature)) == pytest.approx(0.0, abs=1e-6)


def test_obs_with_a_prefix_mask_is_the_least_squares_refit():
    """Pruning the first columns in order, each error spread over the later (kept) columns, ends at
    the least-squares optimum over the kept columns: min ‖X Wᵀ − X_K V_Kᵀ‖ (no damping). Blocks of
    4 make the compensation cross block boundaries."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 12, generator=g) @ torch.randn(12, 12, generator=g)  # correlated inputs
    W = torch.randn(5, 12, generator=g)
    mask = torch.ones(5, 12, dtype=torch.bool)
    mask[:, :6] = False
    out = obs_prune(W, X.t() @ X, mask=mask, blocksize=4, percdamp=0.0)
    assert torch.all(out[:, :6] == 0)
    X64 = X.double()
    expected = torch.linalg.lstsq(X64[:, 6:], X64 @ W.double().t()).solution.t()
    torch.testing.assert_close(out[:, 6:].double(), expected, rtol=1e-4, atol=1e-4)
