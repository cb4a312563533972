"""Declaration of ``global --method tyr`` (implemented in the ``tyr`` package): its options, no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmprune.pruners.registry import Method, register

#: Rounds of progressive pruning per module type (methods.md §3: MLP 16, heads 1); ``--mlp-rounds``
#: sets the MLP's.
ROUNDS = {"o": 1, "down": 16}
#: ``--percdamp``'s default (one source for the option and the local pruner's ``LocalSettings``): chosen on
#: held-out calibration text (docs/benchmarks/select.md); methods.md's 0.01 over-regularises the refit.
DEFAULT_PERCDAMP = 1e-4


def _int_list(value: str | list[int] | tuple[int, ...], n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            parts = tuple(int(p) for p in value.replace(" ", "").split(",") if p)
        except ValueError as err:
            raise ValueError(f"{name} must be {n} comma-separated integers, got {value!r}") from err
    else:
        parts = tuple(int(p) for p in value)
    if len(parts) != n or min(parts) < 1:
        raise ValueError(f"{name} must be {n} comma-separated positive integers, got {value!r}")
    return parts


class TyrOptions(BaseModel):
    """The options of ``global --method tyr``; each field is also a command-line flag."""

    model_config = ConfigDict(extra="forbid")

    generations: int = Field(8, ge=0, description="Generations per coarse-to-fine iteration (paper: 50).")
    offspring: int = Field(16, ge=1, description="Offspring per generation (paper: 128).")
    select_tokens: str = Field(
        "1024,2048,4096",
        description="Calibration tokens of the three selection stages: small,medium,large (paper: 2K,16K,128K).",
    )
    survivors: str = Field("4,2", description="Offspring kept after the small and the medium stage (paper: 16,4).")
    iterations: int = Field(4, ge=1, le=12, description="Coarse-to-fine iterations; Δ halves each time.")
    delta: float = Field(
        0.125, gt=0.0, le=0.5, description="Initial step Δ as a fraction of each module's units (at least one unit)."
    )
    budget_split: Literal["fixed", "free"] = Field(
        "free",
        description="free: the search may move parameters between attention and MLP (the default: best "
        "on held-out calibration text, docs/benchmarks/select.md); fixed: they keep their uniform "
        "parameter shares (the paper's search space).",
    )
    topk_logits: int = Field(
        256, ge=1, description="Dense top-k logits cached per token for the KL fitness (paper: up to 8192)."
    )
    search_nsamples: int | None = Field(
        None,
        ge=1,
        description="Calibration sequences used by the search (default: all --nsamples); the supernet always uses all.",
    )
    percdamp: float = Field(
        DEFAULT_PERCDAMP,
        ge=0.0,
        description="Hessian damping of the local pruner, as a fraction of mean(diag H) (the default: best "
        "on held-out calibration text, docs/benchmarks/select.md; methods.md's 0.01 over-regularises the "
        "refit; raised ×10 automatically when a Cholesky fails).",
    )
    first_order: Literal["paper", "code", "none"] = Field(
        "none",
        description="First-order term of the local pruner's unit score, added to the OBS cost: paper: "
        "|<V_p, G_p>| with G = H·V_dense; code: the signed <V_p, G_p>; none: OBS cost only (the default: "
        "best on held-out calibration text, docs/benchmarks/select.md).",
    )
    mlp_rounds: int = Field(
        ROUNDS["down"],
        ge=1,
        description="Rounds in which the local pruner removes MLP channels, each followed by OBS "
        "compensation of the rest (methods.md: 16; attention heads go in one round).",
    )
    final_prune: Literal["supernet", "sequential"] = Field(
        "supernet",
        description="How the searched widths become weights: supernet: the supernet's variants, pruned "
        "on expected inputs (the paper's; the default: sequential was no better on held-out "
        "calibration text, docs/global.md); sequential: pruned again layer by layer with the local "
        "pruner on the inputs of the already pruned layers.",
    )
    search_space: Literal["full", "deci"] = Field(
        "full",
        description="full: any widths; deci: only widths the DeciLM format (vLLM, llama.cpp) expresses "
        "without padding: attention whole or removed, MLP widths multiples of 256 (use with --export-format deci).",
    )

    @field_validator("select_tokens")
    @classmethod
    def _tokens(cls, v: str) -> str:
        parts = _int_list(v, 3, "--select-tokens")
        if list(parts) != sorted(parts):
            raise ValueError(f"--select-tokens must be increasing (small, medium, large), got {v!r}")
        return v

    @field_validator("survivors")
    @classmethod
    def _survivors(cls, v: str) -> str:
        _int_list(v, 2, "--survivors")
        return v


@register
class TyrMethod(Method):
    strategy = "global"
    method = "tyr"
    summary = "Týr-the-Pruner: supernet of locally pruned variants + evolutionary search, coarse to fine"
    needs_calibration = True
    resumable = True
    Options = TyrOptions
    implementation = "llmprune.pruners.tyr:GlobalTyr"
