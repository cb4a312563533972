"""Declarations of the baselines (implemented in ``baselines.py``): uniform structured magnitude and
Wanda-sp, the same at uniform widths under ``global``, and 2:4 magnitude, Wanda and SparseGPT."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from llmprune.pruners.registry import Method, register

IMPLEMENTATION = "llmprune.pruners.baselines"


class UniformOptions(BaseModel):
    """The options of the uniform baselines; each field is also a command-line flag."""

    model_config = ConfigDict(extra="forbid")

    widths: str = Field(
        "",
        description="keep exactly ATTN,MLP per layer (attention units of --attn-unit, MLP channels) "
        "instead of the even split of --sparsity: the widths another method chose (see `llmprune "
        "inspect`), to compare scores at equal widths. The run still reports how far it is from --sparsity.",
    )


class _UniformScoredMethod(Method):
    """Uniform widths by a per-unit score, one layer at a time."""

    layerwise = True
    Options: ClassVar[type[BaseModel]] = UniformOptions


@register
class UniformMagnitudeMethod(_UniformScoredMethod):
    strategy = "uniform"
    method = "magnitude"
    summary = "L2 norm of each unit's weights; no calibration"
    needs_calibration = False
    implementation = f"{IMPLEMENTATION}:UniformMagnitude"


@register
class UniformWandaMethod(_UniformScoredMethod):
    strategy = "uniform"
    method = "wanda"
    summary = "Wanda-sp: sum of |w|·||X|| over each unit's weights"
    implementation = f"{IMPLEMENTATION}:UniformWanda"


@register
class GlobalMagnitudeMethod(_UniformScoredMethod):
    strategy = "global"
    method = "magnitude"
    summary = "baseline: magnitude at uniform widths (no search)"
    needs_calibration = False
    implementation = f"{IMPLEMENTATION}:GlobalMagnitude"


@register
class GlobalWandaMethod(_UniformScoredMethod):
    strategy = "global"
    method = "wanda"
    summary = "baseline: Wanda-sp at uniform widths (no search)"
    implementation = f"{IMPLEMENTATION}:GlobalWanda"


# ----- 2:4 ------------------------------------------------------------------------------------
@register
class Semi24MagnitudeMethod(Method):
    strategy = "semi24"
    method = "magnitude"
    summary = "keep the 2 largest |w| of every 4 inputs; no calibration"
    needs_calibration = False
    layerwise = True
    implementation = f"{IMPLEMENTATION}:Semi24Magnitude"


@register
class Semi24WandaMethod(Method):
    strategy = "semi24"
    method = "wanda"
    summary = "keep the 2 largest |w|·||X|| of every 4 inputs"
    layerwise = True
    implementation = f"{IMPLEMENTATION}:Semi24Wanda"


@register
class Semi24SparseGPTMethod(Method):
    strategy = "semi24"
    method = "sparsegpt"
    summary = "OBS mask selection with weight update (column blocks of 128, 1% damping)"
    layerwise = True
    implementation = f"{IMPLEMENTATION}:Semi24SparseGPT"
