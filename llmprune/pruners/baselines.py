"""Baselines every strategy is compared with (methods.md §1).

Structured, uniform widths: ``magnitude`` (L2 norm of a unit's weights) and ``wanda`` (Wanda-sp:
sum of |w_ij|·||X_j|| over a unit's weights). 2:4: ``magnitude``, ``wanda`` and ``sparsegpt``
(OBS mask selection with weight update). Calibration-based ones run layer by layer and prune
sequentially, so each layer is scored on the activations of the already-pruned layers before it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from llmprune.alignment import Alignment
from llmprune.arch import LINEAR_KEYS, ArchAdapter, Geometry
from llmprune.capture import InputStats, LayerwiseRunner
from llmprune.masks import head_scores_from_rows, nm_eligible, nm_mask, select_attention_units, topk_sorted, uniform_widths
from llmprune.plan import LayerPlan, PrunePlan, geometry_dict, units_to_heads
from llmprune.pruners.base import PruneContext, Pruner, register
from llmprune.obs import sparsegpt_prune
from llmprune.surgery import mask_layer

STRUCTURED_KEYS = ("q", "k", "v", "o", "gate", "up", "down")


# ----- structured scoring ---------------------------------------------------------------------
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
    index: int, attn_scores: torch.Tensor, mlp_scores: torch.Tensor, k_attn: int, k_mlp: int, geom: Geometry, attn_unit: str
) -> LayerPlan:
    """Keep the top ``k_attn`` attention units and ``k_mlp`` channels of one layer."""
    units = select_attention_units(attn_scores, k_attn, geom, attn_unit)
    heads, kv_heads = units_to_heads(units, geom, attn_unit)
    return LayerPlan(index=index, heads=heads, kv_heads=kv_heads, channels=topk_sorted(mlp_scores, k_mlp))


class _UniformScored(Pruner):
    """Uniform-width structured pruning by a per-unit score (shared by magnitude and Wanda-sp)."""

    strategy: ClassVar[str] = "uniform"
    uses_activations: ClassVar[bool] = True
    layerwise = True

    def prune(self, ctx: PruneContext) -> PrunePlan:
        s = ctx.settings
        geom = ctx.adapter.geometry(ctx.model)
        k_attn, k_mlp = uniform_widths(geom, s.sparsity, s.attn_unit, Alignment.of(s))
        plan = PrunePlan.dense_structured(geom, self.strategy, self.method, s.attn_unit)

        def process(i: int, layer: nn.Module, runner: LayerwiseRunner | None) -> None:
            stats = runner.collect(i, layer, STRUCTURED_KEYS, hessian=False) if runner else None
            attn, mlp = unit_scores(layer, ctx.adapter, geom, s.attn_unit, stats)
            plan.layers[i] = structured_layer_plan(i, attn, mlp, k_attn, k_mlp, geom, s.attn_unit)
            mask_layer(layer, ctx.adapter, plan.layers[i], geom)

        ctx.for_each_layer(process, self.uses_activations, f"{self.method} scoring")
        return plan


@register
class UniformMagnitude(_UniformScored):
    method = "magnitude"
    summary = "L2 norm of each unit's weights; no calibration"
    needs_calibration = False
    uses_activations = False


@register
class UniformWanda(_UniformScored):
    method = "wanda"
    summary = "Wanda-sp: sum of |w|·||X|| over each unit's weights"


# ----- 2:4 ------------------------------------------------------------------------------------
class _Semi24Layerwise(Pruner):
    """2:4 masks chosen layer by layer, applied in place."""

    strategy: ClassVar[str] = "semi24"
    needs_hessian: ClassVar[bool] = False
    layerwise = True

    def new_weight(self, weight: torch.Tensor, stats: InputStats | None, name: str) -> torch.Tensor:
        raise NotImplementedError

    def prune(self, ctx: PruneContext) -> PrunePlan:
        geom = ctx.adapter.geometry(ctx.model)
        plan = PrunePlan(kind="semi24", strategy=self.strategy, method=self.method, dense=geometry_dict(geom))
        skipped: list[str] = []

        @torch.no_grad()
        def process(i: int, layer: nn.Module, runner: LayerwiseRunner | None) -> None:
            stats = runner.collect(i, layer, LINEAR_KEYS, hessian=self.needs_hessian) if runner else {}
            for key, lin in ctx.adapter.linears(layer).items():
                name = ctx.adapter.linear_name(i, key)
                if not nm_eligible(lin.in_features):
                    skipped.append(name)
                    continue
                new = self.new_weight(lin.weight, stats.get(key), name)
                lin.weight.copy_(new.to(lin.weight.dtype))
                plan.semi24_targets.append(name)

        ctx.for_each_layer(process, self.needs_calibration, f"{self.method} 2:4")
        report_skipped_semi24(ctx, skipped)
        return plan


def report_skipped_semi24(ctx: PruneContext, skipped: list[str]) -> None:
    """Weights whose input width is not a multiple of 4 stay dense; say so and record them."""
    if skipped:
        ctx.progress.log(f"[yellow]warning:[/] {len(skipped)} weights have an input width that is not a multiple "
                         f"of 4 and stay dense (first: {skipped[0]})")
    ctx.extras.setdefault("report", {})["semi24_skipped"] = skipped


@register
class Semi24Magnitude(_Semi24Layerwise):
    method = "magnitude"
    summary = "keep the 2 largest |w| of every 4 inputs; no calibration"
    needs_calibration = False

    def new_weight(self, weight, stats, name):
        return weight * nm_mask(weight.float().abs())


@register
class Semi24Wanda(_Semi24Layerwise):
    method = "wanda"
    summary = "keep the 2 largest |w|·||X|| of every 4 inputs"

    def new_weight(self, weight, stats, name):
        return weight * nm_mask(weight_importance(weight, stats))


@register
class Semi24SparseGPT(_Semi24Layerwise):
    method = "sparsegpt"
    summary = "OBS mask selection with weight update (column blocks of 128, 1% damping)"
    needs_hessian = True

    def new_weight(self, weight, stats, name):
        return sparsegpt_prune(weight, stats.hessian, n=2, m=4, name=name)


# ----- global: the same scores at uniform widths, the reference a searched distribution must beat --
@register
class GlobalMagnitude(UniformMagnitude):
    strategy = "global"
    summary = "baseline: magnitude at uniform widths (no search)"


@register
class GlobalWanda(UniformWanda):
    strategy = "global"
    summary = "baseline: Wanda-sp at uniform widths (no search)"
