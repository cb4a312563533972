"""Baselines every strategy is compared with (methods.md §1).

Structured, uniform widths: ``magnitude`` (L2 norm of a unit's weights) and ``wanda`` (Wanda-sp:
sum of |w_ij|·||X_j|| over a unit's weights). 2:4: ``magnitude``, ``wanda`` and ``sparsegpt``
(OBS mask selection with weight update). Calibration-based ones run layer by layer and prune
sequentially, so each layer is scored on the activations of the already-pruned layers before it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
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
from llmprune.pruners.base import PruneContext, Pruner, register, skipped_semi24


class UniformOptions(BaseModel):
    """The options of the uniform baselines; each field is also a command-line flag."""

    model_config = ConfigDict(extra="forbid")

    widths: str = Field(
        "",
        description="keep exactly ATTN,MLP per layer (attention units of --attn-unit, MLP channels) "
        "instead of the even split of --sparsity: the widths another method chose (see `llmprune "
        "inspect`), to compare scores at equal widths. The run still reports how far it is from --sparsity.",
    )


class _UniformScored(Pruner):
    """Uniform-width structured pruning by a per-unit score (shared by magnitude and Wanda-sp)."""

    strategy: ClassVar[str] = "uniform"
    uses_activations: ClassVar[bool] = True
    layerwise = True
    Options: ClassVar[type[BaseModel]] = UniformOptions

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
    ctx.extras.setdefault("report", {}).update(skipped_semi24(ctx, skipped))


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

    @classmethod
    def resources(cls, request: Request) -> Resources:
        return layerwise_resources(request, hessians=True)  # + the layer's Hessians and their inverse

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
