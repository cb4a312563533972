"""Declaration of ``semi24 --method proxsparse`` (implemented in ``proxsparse.py``): its options, no torch."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmprune.pruners.registry import Method, register
from llmprune.train.cadence import DEFAULT_EVERY, CheckpointEvery
from llmprune.train.cadence import HELP as CHECKPOINT_HELP

GPU_HINT = (
    "7B+ on GPU: --nsamples 400 --seqlen 4096 --batch-size 1 --steps 400 --lr 1e-4 --lambda1 0.1 "
    "--dtype bfloat16, --layers-per-stage 4-8 when full-model AdamW (4x the model) does not fit"
)


class ProxSparseOptions(BaseModel):
    """The options of ``semi24 --method proxsparse``; each field is also a command-line flag."""

    model_config = ConfigDict(extra="forbid")

    lambda1: float = Field(
        0.1,
        ge=0,
        description="strength of the 2:4 regulariser, scale-free (each matrix uses "
        "lambda1 / rms(W0)); not multiplied by the learning rate. Useful range 0.02-0.5.",
    )
    lambda2: float = Field(
        0.0,
        ge=0,
        description="weight of the anchor to the original weights "
        "(mean of ((W/W0)(W-W0))^2 / rms(W0)^2 per matrix); 0 disables.",
    )
    # 36: the best setting within ~5 min on the reference model's held-out budget curve
    # (benchmarks/proxsparse_budget.py); more steps and, more so, more calibration tokens help.
    steps: int = Field(
        36,
        ge=1,
        description="optimiser steps (per stage with --layers-per-stage), one batch of "
        "--batch-size calibration sequences each. " + GPU_HINT + ".",
    )
    lr: float = Field(
        2e-3,
        gt=0,
        description="AdamW peak learning rate (linear warm-up, then linear decay to 0); "
        "2e-3 for a few dozen steps on small models, 1e-4 for long runs on 7B+.",
    )
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of the steps spent warming the learning rate up.")
    layers_per_stage: str = Field(
        "auto",
        description="train the masks of this many decoder layers at a time "
        "(others frozen; AdamW memory is 4x the stage instead of 4x the model); "
        "0 = all layers at once; auto = the most layers whose predicted peak memory fits the budget "
        "(--gpu-memory, else the GPU's free memory; host RAM on CPU), logged and reported.",
    )
    init_mask: Literal["none", "wanda", "sparsegpt"] = Field(
        "none",
        description="none | wanda | sparsegpt: start from the original weights "
        "with the entries outside that baseline's 2:4 mask multiplied by --init-shrink.",
    )
    init_shrink: float = Field(0.5, ge=0, le=1, description="factor applied to the entries outside --init-mask's mask.")
    metric: Literal["plain", "wanda"] = Field(
        "wanda",
        description="wanda | plain: run the prox (and pick the final mask) on "
        "|W| times the normalised input-activation norm (wanda, default) or on |W| (plain, as the paper).",
    )
    refit: Literal["none", "obs"] = Field(
        "none",
        description="none | obs. none (ProxSparse): final weights are the original "
        "weights times the learned mask. obs (our extension): keep the learned mask and update the kept "
        "weights layer by layer by OBS as SparseGPT does (costs one Hessian pass).",
    )
    prox_sweeps: int = Field(100, ge=1, description="maximum coordinate-descent sweeps of the proximal operator.")
    checkpoint_every: CheckpointEvery = Field(DEFAULT_EVERY, description=CHECKPOINT_HELP)

    @field_validator("layers_per_stage", mode="before")
    @classmethod
    def _layers_per_stage(cls, v: Any) -> str:
        text = str(v).strip().lower()
        if text != "auto" and not (text.isdigit() and not isinstance(v, (bool, float))):
            raise ValueError(f"expected auto or a whole number of layers (0 = all at once), got {v!r}")
        return text if text == "auto" else str(int(text))


@register
class ProxSparseMethod(Method):
    strategy = "semi24"
    method = "proxsparse"
    summary = "ProxSparse: 2:4 masks learned end to end (LM loss, AdamW, 2:4 proximal operator)"
    needs_calibration = True
    resumable = True
    Options = ProxSparseOptions
    #: The setting ``--estimate`` names when the learned state is the largest device term.
    advice: ClassVar[dict[str, str]] = {"learned state": "lower --layers-per-stage"}
    implementation = "llmprune.pruners.proxsparse:ProxSparsePruner"
