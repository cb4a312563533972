"""Importance scores shared by the structured pruners: Wanda-sp / magnitude scores of attention
units and MLP channels, and the per-layer plan that keeps the best of them.

Used by the baselines (``magnitude``, ``wanda``) and by ``minimax`` (its score initialisation and
its final per-layer selection), so the learned method and the baseline it is compared with rank
units by the same code.
"""

from __future__ import annotations

import torch
from torch import nn

from llmprune.core.masks import head_scores_from_rows, select_attention_units, topk_sorted
from llmprune.data.capture import InputStats
from llmprune.model.arch import ArchAdapter, Geometry
from llmprune.model.plan import LayerPlan, units_to_heads

STRUCTURED_KEYS = ("q", "k", "v", "o", "gate", "up", "down")


def weight_importance(weight: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
    """Per-weight importance: |w|·||X_j|| with statistics (Wanda), w² without (magnitude)."""
    w = weight.detach().float()
    if stats is None:
        return w * w
    return w.abs() * stats.col_norm.to(w.device)[None, :]


def unit_scores(
    layer: nn.Module, adapter: ArchAdapter, geom: Geometry, attn_unit: str, stats: dict[str, InputStats] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the attention units and MLP channels of one layer (higher = keep)."""
    lin = adapter.linears(layer)
    imp = {k: weight_importance(lin[k].weight, stats[k] if stats else None) for k in STRUCTURED_KEYS}
    d, g = geom.head_dim, geom.group_size
    per_head = head_scores_from_rows(imp["q"].sum(1), d) + head_scores_from_rows(imp["o"].sum(0), d)
    if attn_unit == "group":
        per_kv = head_scores_from_rows(imp["k"].sum(1), d) + head_scores_from_rows(imp["v"].sum(1), d)
        attn = per_head.view(geom.num_kv_heads, g).sum(1) + per_kv
    else:
        attn = per_head
    mlp = imp["gate"].sum(1) + imp["up"].sum(1) + imp["down"].sum(0)
    if stats is None:  # magnitude: L2 norm of the unit's weights
        attn, mlp = attn.sqrt(), mlp.sqrt()
    return attn.cpu(), mlp.cpu()


def structured_layer_plan(
    index: int,
    attn_scores: torch.Tensor,
    mlp_scores: torch.Tensor,
    k_attn: int,
    k_mlp: int,
    geom: Geometry,
    attn_unit: str,
) -> LayerPlan:
    """Keep the top ``k_attn`` attention units and ``k_mlp`` channels of one layer."""
    units = select_attention_units(attn_scores, k_attn, geom, attn_unit)
    heads, kv_heads = units_to_heads(units, geom, attn_unit)
    return LayerPlan(index=index, heads=heads, kv_heads=kv_heads, channels=topk_sorted(mlp_scores, k_mlp))
