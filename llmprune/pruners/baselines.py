"""Baselines every strategy is compared with (methods.md §1).

Structured, uniform widths: ``magnitude`` (L2 norm of a unit's weights) and ``wanda`` (Wanda-sp:
sum of |w_ij|·||X_j|| over a unit's weights). 2:4: ``magnitude``, ``wanda`` and ``sparsegpt``
(OBS mask selection with weight update). Calibration-based ones run layer by layer and prune
sequentially, so each layer is scored on the activations of the already-pruned layers before it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from llmprune.core.masks import explicit_widths, nm_eligible, nm_mask, uniform_widths
from llmprune.core.memory_model import Request, Resources, layerwise_resources
from llmprune.core.obs import sparsegpt_prune
from llmprune.core.scoring import STRUCTURED_KEYS, structured_layer_plan, unit_scores, weight_importance
from llmprune.data.capture import InputStats, LayerwiseRunner
from llmprune.model.alignment import Alignment
from llmprune.model.arch import LINEAR_KEYS, Geometry
from llmprune.model.plan import PrunePlan, geometry_dict
from llmprune.model.surgery import mask_layer
from llmprune.pruners.base import PruneContext, Pruner, skipped_semi24
from llmprune.pruners.baselines_options import (
    GlobalMagnitudeMethod,
    GlobalWandaMethod,
    Semi24MagnitudeMethod,
    Semi24SparseGPTMethod,
    Semi24WandaMethod,
    UniformMagnitudeMethod,
    UniformWandaMethod,
)


class _UniformScored(Pruner):
    """Uniform-width structured pruning by a per-unit score (shared by magnitude and Wanda-sp)."""

    uses_activations: ClassVar[bool] = True

    def widths(self, settings: Any, geom: Geometry) -> tuple[int, int]:
        """Kept (attention units, MLP channels) per layer: ``--widths`` if given, else the even split."""
        align, widths = Alignment.of(settings), self.options.widths  # type: ignore[attr-defined]
        if widths:
            return explicit_widths(geom, widths, settings.attn_unit, align)
        return uniform_widths(geom, settings.sparsity, settings.attn_unit, align)

    def check(self, settings: Any, geometry: Any) -> None:
        self.widths(settings, geometry)  # a bad --widths is refused before the model loads

    def prune(self, ctx: PruneContext) -> PrunePlan:
        s = ctx.settings
        geom = ctx.adapter.geometry(ctx.model)
        k_attn, k_mlp = self.widths(s, geom)
        plan = PrunePlan.dense_structured(geom, self.strategy, self.method, s.attn_unit)

        def process(i: int, layer: nn.Module, runner: LayerwiseRunner | None) -> None:
            stats = runner.collect(i, layer, STRUCTURED_KEYS, hessian=False) if runner else None
            attn, mlp = unit_scores(layer, ctx.adapter, geom, s.attn_unit, stats)
            plan.layers[i] = structured_layer_plan(i, attn, mlp, k_attn, k_mlp, geom, s.attn_unit)
            mask_layer(layer, ctx.adapter, plan.layers[i], geom)

        ctx.for_each_layer(process, self.uses_activations, f"{self.method} scoring")
        return plan


class UniformMagnitude(_UniformScored, UniformMagnitudeMethod):
    uses_activations = False


class UniformWanda(_UniformScored, UniformWandaMethod):
    pass


# ----- 2:4 ------------------------------------------------------------------------------------
class _Semi24Layerwise(Pruner):
    """2:4 masks chosen layer by layer, applied in place."""

    needs_hessian: ClassVar[bool] = False

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
    ctx.extras.setdefault("report", {}).update(skipped_semi24(ctx, skipped))


class Semi24Magnitude(_Semi24Layerwise, Semi24MagnitudeMethod):
    def new_weight(self, weight, stats, name):
        return weight * nm_mask(weight.float().abs())


class Semi24Wanda(_Semi24Layerwise, Semi24WandaMethod):
    def new_weight(self, weight, stats, name):
        return weight * nm_mask(weight_importance(weight, stats))


class Semi24SparseGPT(_Semi24Layerwise, Semi24SparseGPTMethod):
    needs_hessian = True

    @classmethod
    def resources(cls, request: Request) -> Resources:
        return layerwise_resources(request, hessians=True)  # + the layer's Hessians and their inverse

    def new_weight(self, weight, stats, name):
        return sparsegpt_prune(weight, stats.hessian, n=2, m=4, name=name)


# ----- global: the same scores at uniform widths, the reference a searched distribution must beat --
class GlobalMagnitude(_UniformScored, GlobalMagnitudeMethod):
    uses_activations = False


class GlobalWanda(_UniformScored, GlobalWandaMethod):
    pass
