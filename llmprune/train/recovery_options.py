"""The options of the recovery stage (``llmprune recover``, ``--recover-*``), importable without
torch: the command line generates its flags from them when the commands are built."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmprune.model.arch import LINEAR_KEYS
from llmprune.train.cadence import DEFAULT_EVERY, CheckpointEvery
from llmprune.train.cadence import HELP as CHECKPOINT_HELP

#: Peak learning rate when --lr is not given, by mode. LoRA: chosen on the select split of
#: calib.txt (docs/benchmarks/select.md) at the default 256 sequences, where 2e-3 beat 5e-4 on
#: every output measured (Týr 50%, Wanda-sp 50%, SparseGPT 2:4; on 64 sequences a 2:4 output had
#: preferred 5e-4: the student drifted towards those 16K tokens). Full: a conventional
#: fine-tuning rate, not measured.
DEFAULT_LR = {"lora": 2e-3, "full": 1e-4}
#: Sequences the recovery distils on by default (``--recover-nsamples``; ``recover --nsamples``):
#: 100 steps of 8 over 64 sequences are 12 epochs, and the student drifts towards those 16K tokens.
DEFAULT_RECOVER_NSAMPLES = 256


class RecoveryOptions(BaseModel):
    """The options of the recovery stage; each field is a flag of ``llmprune recover`` (and,
    prefixed with ``--recover-``, of the pruning commands)."""

    model_config = ConfigDict(extra="forbid")

    recover_mode: Literal["lora", "full"] = Field(
        "lora",
        description="what trains: 'lora' (low-rank adapters, merged before export) or 'full' "
        "(the kept weights themselves). 2:4 outputs keep their zeros either way.",
    )
    lora_rank: int = Field(16, ge=1, description="LoRA rank (--recover-mode lora).")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha (update scaled by alpha/rank).")
    lora_targets: str = Field(
        ",".join(LINEAR_KEYS),
        description="comma-separated projections that train (LoRA adapters or full weights), of "
        + ",".join(LINEAR_KEYS)
        + ".",
    )
    steps: int = Field(100, ge=1, description="training steps (one batch of --batch-size sequences each).")
    recover_nsamples: int = Field(
        DEFAULT_RECOVER_NSAMPLES,
        ge=1,
        description="calibration sequences of --seqlen the recovery distils on: the pruning's --nsamples "
        "first, then more from the same text (all it holds if fewer; never fewer than --nsamples). "
        "`llmprune recover` takes its own --nsamples instead.",
    )
    lr: float | None = Field(
        None,
        gt=0,
        description="peak AdamW learning rate (warm-up, cosine decay); default: lora 2e-3 (chosen on held-out "
        "calibration text), full 1e-4.",
    )
    kl_weight: float = Field(1.0, ge=0, description="weight of the top-k KL distillation loss.")
    lm_weight: float = Field(0.5, ge=0, description="weight of the next-token (LM) loss.")
    teacher_topk: int = Field(64, ge=1, description="teacher logits kept per position (top-k) for the KL.")
    temperature: float = Field(1.0, gt=0, description="distillation temperature.")
    checkpoint_every: CheckpointEvery = Field(DEFAULT_EVERY, description=CHECKPOINT_HELP)

    @field_validator("lora_targets")
    @classmethod
    def _targets(cls, v: str) -> str:
        keys = [k.strip() for k in v.split(",") if k.strip()]
        unknown = [k for k in keys if k not in LINEAR_KEYS]
        if not keys or unknown:
            raise ValueError(f"expected a comma-separated subset of {','.join(LINEAR_KEYS)}, got {v!r}")
        return ",".join(k for k in LINEAR_KEYS if k in keys)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.lora_targets.split(","))

    def peak_lr(self) -> float:
        """``--lr``, else the default of this mode."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.recover_mode]
