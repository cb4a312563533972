"""Declaration of ``uniform --method minimax`` (implemented in ``minimax.py``): its options, no torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from llmprune.pruners.registry import Method, register
from llmprune.train.cadence import DEFAULT_EVERY, CheckpointEvery
from llmprune.train.cadence import HELP as CHECKPOINT_HELP

GPU_HINT = (
    "7B+ on GPU: --nsamples 256 --seqlen 2048 --batch-size 4 --steps 1000 --lora-rank 16 --lora-lr 2e-4 "
    "--lr 0.01 --teacher-topk 256 --dtype bfloat16 (see docs/minimax.md)"
)


class MinimaxOptions(BaseModel):
    """The options of ``uniform --method minimax``; each field is also a command-line flag."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(
        100,
        ge=1,
        description="training steps (one batch of --batch-size sequences each). "
        "Small CPU models: 80-300; " + GPU_HINT + ".",
    )
    lr: float = Field(
        0.01,
        gt=0,
        description="Adam step size of the mask scores (scores start at normalised Wanda-sp importance, mean 1).",
    )
    width_lr: float = Field(
        0.05, gt=0, description="Adam step size of the shared widths (as fractions of the dense widths)."
    )
    lora_rank: int = Field(
        16, ge=0, description="LoRA rank on all q,k,v,o,gate,up,down (merged before export); 0 disables LoRA."
    )
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha (update scaled by alpha/rank).")
    lora_lr: float = Field(
        2e-3, gt=0, description="AdamW learning rate of the LoRA adapters (cosine decay); 7B+: 1e-4 to 2e-4."
    )
    distill: bool = Field(
        True,
        description="distil from the dense model's precomputed top-k logits (KL); "
        "--no-distill trains on the LM loss only.",
    )
    kl_weight: float = Field(1.0, ge=0, description="weight of the KL distillation loss.")
    lm_weight: float = Field(0.5, ge=0, description="weight of the next-token (LM) loss.")
    learn_widths: bool = Field(
        True,
        description="learn the shared widths (the attention/MLP split); "
        "--no-learn-widths fixes them at the uniform split of the baselines.",
    )
    ramp: float = Field(
        0.3, ge=0, lt=1, description="fraction of the steps over which the budget ramps from dense to the target."
    )
    finetune: float = Field(
        0.3,
        ge=0,
        lt=1,
        description="final fraction of the steps with masks frozen at the "
        "final widths (LoRA only; skipped without LoRA).",
    )
    dual_lr: float = Field(
        0.5,
        ge=0,
        description="ascent step of the Lagrange multipliers (per unit of constraint violation, as a fraction).",
    )
    prox: float = Field(
        1e-3,
        ge=0,
        description="strength of the l1 sparsity regulariser on the scores "
        "(proximal soft-threshold after each step); 0 disables.",
    )
    temperature: float = Field(1.0, gt=0, description="distillation temperature.")
    teacher_topk: int = Field(
        64, ge=1, description="teacher logits kept per position (top-k) for the KL; 7B+: 256-1024."
    )
    width_tau: float = Field(
        0.02,
        gt=0,
        le=1,
        description="width of the straight-through surrogate for the "
        "widths (fraction of the dense width, at least one unit).",
    )
    checkpoint_every: CheckpointEvery = Field(DEFAULT_EVERY, description=CHECKPOINT_HELP)


@register
class MinimaxMethod(Method):
    strategy = "uniform"
    method = "minimax"
    summary = "MaskPrune-style: learned masks and shared widths (minimax, STE, prox, distillation, LoRA)"
    needs_calibration = True
    resumable = True
    Options = MinimaxOptions
    implementation = "llmprune.pruners.minimax:MinimaxPruner"
