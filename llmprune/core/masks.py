"""Shared selection math: uniform widths for a budget, top-k units, N:M masks."""

from __future__ import annotations

from math import lcm

import torch

from llmprune.model.alignment import Alignment
from llmprune.model.arch import Geometry


def attn_step(geom: Geometry, attn_unit: str) -> int:
    """Granularity of attention pruning in units: query heads go one per KV group at a time."""
    return 1 if attn_unit == "group" else geom.num_kv_heads


def attn_params_kept(geom: Geometry, attn_unit: str, kept_units: int) -> int:
    """Attention linear parameters of one layer keeping ``kept_units`` units (``Geometry`` counts)."""
    return geom.attn_params_kept(attn_unit, kept_units)


def attn_grid_step(geom: Geometry, attn_unit: str, align: Alignment | None = None) -> int:
    """Kept attention units are multiples of this: the unit's own step and the ``--align`` grid."""
    step = attn_step(geom, attn_unit)
    return step if align is None else lcm(step, align.attn_granule(geom, attn_unit))


def uniform_widths(geom: Geometry, sparsity: float, attn_unit: str, align: Alignment | None = None) -> tuple[int, int]:
    """Per-layer kept (attention units, MLP channels) meeting the sparsity budget.

    Attention keeps the requested fraction rounded to its granularity (at least one step); the MLP
    width absorbs the rounding so the total is within one channel per layer of the budget (one
    grid step of ``align``: widths on the grid meet the budget only as closely as the grid allows).
    """
    align = align or Alignment()
    n_attn = geom.attn_unit_count(attn_unit)
    step = attn_grid_step(geom, attn_unit, align)
    target = (1.0 - sparsity) * geom.dense_layer_params
    k_attn = int(round((1.0 - sparsity) * n_attn / step)) * step
    k_attn = min(max(k_attn, step), n_attn)
    k_mlp = align.round_channels(
        (target - attn_params_kept(geom, attn_unit, k_attn)) / geom.mlp_unit_params, geom.intermediate_size
    )
    return k_attn, k_mlp


def explicit_widths(geom: Geometry, spec: str, attn_unit: str, align: Alignment | None = None) -> tuple[int, int]:
    """Per-layer kept (attention units, MLP channels) given as ``"ATTN,MLP"`` (e.g. the widths
    another method learned, to compare scores at equal widths); a UsageError names what is wrong."""
    from llmprune.errors import UsageError

    align = align or Alignment()
    parts = spec.replace(" ", "").split(",")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise UsageError(f"--widths {spec!r}: expected two whole numbers ATTN,MLP, e.g. 3,640")
    k_attn, k_mlp = int(parts[0]), int(parts[1])
    n_attn, step = geom.attn_unit_count(attn_unit), attn_grid_step(geom, attn_unit, align)
    if not (step <= k_attn <= n_attn and k_attn % step == 0):
        raise UsageError(
            f"--widths {spec}: attention units (--attn-unit {attn_unit}) must be a multiple of {step} "
            f"between {step} and {n_attn}"
        )
    if not (1 <= k_mlp <= geom.intermediate_size and align.allowed_channels(k_mlp, geom.intermediate_size)):
        raise UsageError(
            f"--widths {spec}: MLP channels must be between 1 and {geom.intermediate_size}"
            + (f" and a multiple of {align.width}" if align.width > 1 else "")
        )
    return k_attn, k_mlp


def topk_sorted(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` largest scores, sorted ascending (ties broken by lower index)."""
    if k >= scores.numel():
        return list(range(scores.numel()))
    order = torch.argsort(scores.double(), descending=True, stable=True)
    return sorted(order[:k].tolist())


def select_attention_units(scores: torch.Tensor, k: int, geom: Geometry, attn_unit: str) -> list[int]:
    """Top-k attention units; for query heads, the same number from every KV group."""
    if attn_unit == "group":
        return topk_sorted(scores, k)
    g, per_group = geom.group_size, k // geom.num_kv_heads
    kept: list[int] = []
    for j in range(geom.num_kv_heads):
        kept += [j * g + h for h in topk_sorted(scores[j * g : (j + 1) * g], per_group)]
    return sorted(kept)


def head_scores_from_rows(row_scores: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Sum per-row (or per-column) scores into per-head scores."""
    return row_scores.view(-1, head_dim).sum(dim=1)


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest scores in each group of ``m`` consecutive inputs."""
    out_features, in_features = scores.shape
    if in_features % m:
        raise ValueError(f"input dimension {in_features} is not a multiple of {m}")
    groups = scores.reshape(out_features, in_features // m, m)
    top = torch.topk(groups, n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(out_features, in_features)


def nm_eligible(in_features: int, m: int = 4) -> bool:
    """Whether a weight with this input width can carry an N:M pattern (e.g. after uniform pruning
    left an MLP width that is not a multiple of 4, the down projection cannot)."""
    return in_features % m == 0


def max_nonzeros_per_group(weight: torch.Tensor, m: int = 4) -> int:
    """Largest number of non-zeros in any group of ``m`` consecutive inputs (2 for valid 2:4)."""
    out_features, in_features = weight.shape
    groups = (weight != 0).reshape(out_features, in_features // m, m)
    return int(groups.sum(-1).max())


def min_layer_params(geom: Geometry, attn_unit: str, align: Alignment | None = None) -> int:
    """Decoder-linear parameters of one layer that keeps the least uniform widths allow: one
    attention step and one MLP channel (one grid step of each with ``--align``)."""
    align = align or Alignment()
    k_attn = min(attn_grid_step(geom, attn_unit, align), geom.attn_unit_count(attn_unit))
    return (
        attn_params_kept(geom, attn_unit, k_attn)
        + align.round_channels(0, geom.intermediate_size) * geom.mlp_unit_params
    )


def max_structured_sparsity(geom: Geometry, attn_unit: str, align: Alignment | None = None) -> float:
    """The largest sparsity structured pruning can reach on this geometry (and grid)."""
    dense = geom.layer_linear_params(geom.num_heads, geom.num_kv_heads, geom.intermediate_size)
    return 1.0 - min_layer_params(geom, attn_unit, align) / dense


def one_unit_sparsity(geom: Geometry, align: Alignment | None = None) -> float:
    """The sparsity of one MLP channel (one grid step with ``--align``) in every layer: how closely
    a structured plan can meet a budget."""
    dense = geom.layer_linear_params(geom.num_heads, geom.num_kv_heads, geom.intermediate_size)
    step = (align or Alignment()).round_channels(0, geom.intermediate_size)
    return step * geom.mlp_unit_params / dense
