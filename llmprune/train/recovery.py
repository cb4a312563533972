"""Recovery: knowledge distillation of a pruned student from its dense teacher.

The structure (or the 2:4 mask) is fixed; only weights train. The objective is the one minimax
trains its weights with (``llmprune.core.distill``):

    L(θ) = kl_weight · T² · KL(p_teacher^topk ‖ q_θ) + lm_weight · CE(q_θ, next token)

on the calibration text, with the teacher's top-k log-probabilities precomputed once. The trained
weights ``θ`` are, per ``--recover-mode``:

* ``lora``: ``W + (α/r)·B A`` on the ``--lora-targets`` projections (``B`` starts at 0, so step 0
  is the pruned model itself), merged into ``W`` before export;
* ``full``: the targeted weights ``W`` themselves.

For a 2:4 student the update is masked by ``M = (W ≠ 0)`` (taken before training): in ``lora``
mode the layer computes ``x (W + M ⊙ (α/r)·B A)ᵀ`` (``W`` is zero off ``M``, so this is
``M ⊙ (W + (α/r)·B A)``, the merged weight exactly); in ``full`` mode the gradient is multiplied by
``M`` and ``W ← M ⊙ W`` after every step. Either way every zero stays exactly zero.

The weights take AdamW steps (no weight decay) at a peak rate with a 5% linear warm-up and a
cosine decay to 10% (``WEIGHT_LR``, the schedule minimax's LoRA uses). Everything around the math
(resume, checkpoints, batches, DDP) is the shared loop of ``llmprune.train.loop``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmprune.core.distill import TeacherTopK, lm_loss, precompute_teacher, topk_kl
from llmprune.core.lora import LoRALinear, load_lora_state, lora_parameters, lora_state
from llmprune.errors import NumericalError
from llmprune.model.arch import LINEAR_KEYS, ArchAdapter
from llmprune.train.loop import Batch, LearnedMethod, Losses, LRSchedule, sharded_rows

# Declared torch-free (the command line builds the --recover-* flags from them); re-exported here.
from llmprune.train.recovery_options import DEFAULT_LR as DEFAULT_LR
from llmprune.train.recovery_options import DEFAULT_RECOVER_NSAMPLES as DEFAULT_RECOVER_NSAMPLES
from llmprune.train.recovery_options import RecoveryOptions

#: The weight-training schedule shared by recovery and minimax's LoRA.
WEIGHT_LR = LRSchedule(warmup=0.05, decay="cosine", floor=0.1, min_warmup_steps=1)


# ----- the objective ------------------------------------------------------------------------------
def distill_objective(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    temperature: float,
    kl_weight: float,
    lm_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, kl, lm)``: ``kl_weight·KL + lm_weight·CE``; without a teacher the KL is 0 and absent."""
    kl = torch.zeros((), device=logits.device)
    if teacher is not None:
        kl = topk_kl(logits, *teacher, temperature)
    lm = lm_loss(logits, tokens)
    loss = (kl_weight * kl if teacher is not None else 0.0) + lm_weight * lm
    return loss, kl, lm


# ----- what trains ---------------------------------------------------------------------------------
def target_linears(model: nn.Module, adapter: ArchAdapter, keys: tuple[str, ...]) -> dict[str, tuple[int, str]]:
    """``{module name: (layer, key)}`` of the targeted projections that exist and hold weights (a
    heterogeneous output's fully pruned attention or MLP has none)."""
    found = {}
    for i, layer in enumerate(adapter.layers(model)):
        for key in keys:
            try:
                lin = adapter.linear(layer, key)
            except AttributeError:
                continue
            if isinstance(lin, nn.Linear) and lin.weight.numel() > 0:
                found[adapter.linear_name(i, key)] = (i, key)
    return found


class MaskedLoRALinear(LoRALinear):
    """LoRA whose update is masked: ``y = x (W + M ⊙ s·B A)ᵀ`` (``W`` is already zero off ``M``)."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        generator: torch.Generator,
        mask: torch.Tensor,
        device: torch.device | None = None,
    ):
        super().__init__(base, rank, alpha, generator, device)
        self.mask: torch.Tensor
        self.register_buffer("mask", mask.to(device=base.weight.device, dtype=torch.float32), persistent=False)

    def delta(self) -> torch.Tensor:
        update = self.scale * (self.lora_b @ self.lora_a)
        return self.mask.to(update.device) * update  # the mask waits on the host when streamed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        return out + F.linear(x.to(self.lora_a.dtype), self.delta()).to(out.dtype)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        w = self.base.weight
        return w.float() + self.delta().to(w.device)


class LoRAWeights:
    """LoRA adapters on the targeted projections (masked for a 2:4 student)."""

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchAdapter,
        rank: int,
        alpha: float,
        seed: int,
        keys: tuple[str, ...] = LINEAR_KEYS,
        masks: dict[str, torch.Tensor] | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.model, self.adapter = model, adapter
        masks = masks or {}
        gen = torch.Generator().manual_seed(seed)  # drawn in add_lora's order: layers, then keys
        layers = adapter.layers(model)
        self.sites = target_linears(model, adapter, keys)
        self.wrapped: dict[str, LoRALinear] = {}
        for name, (i, key) in self.sites.items():
            base = adapter.linear(layers[i], key)
            if name in masks:
                module: LoRALinear = MaskedLoRALinear(base, rank, alpha, gen, masks[name], device)
            else:
                module = LoRALinear(base, rank, alpha, gen, device)
            adapter.set_linear(layers[i], key, module)
            self.wrapped[name] = module

    def parameters(self) -> list[torch.Tensor]:
        return list(lora_parameters(self.wrapped))

    def state(self) -> dict[str, torch.Tensor]:
        return lora_state(self.wrapped)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        load_lora_state(self.wrapped, state)

    def after_step(self) -> None:
        """Nothing: the mask is inside the forward pass."""

    @torch.no_grad()
    def merge(self) -> dict[str, torch.Tensor]:
        """``W ← W + s·B A`` in place (masked for 2:4), adapters removed; returns the merged weights."""
        merged = {}
        for name, module in self.wrapped.items():
            module.base.weight.copy_(module.merged_weight().to(module.base.weight.dtype))
            merged[name] = module.base.weight.detach()
        self.remove()
        return merged

    def remove(self) -> None:
        """Put the original (unchanged unless merged) projections back; idempotent."""
        layers = self.adapter.layers(self.model)
        for name, (i, key) in self.sites.items():
            self.adapter.set_linear(layers[i], key, self.wrapped[name].base)


class FullWeights:
    """The targeted weights themselves; for a 2:4 student the gradient and the weight are masked."""

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchAdapter,
        keys: tuple[str, ...],
        masks: dict[str, torch.Tensor] | None = None,
    ) -> None:
        modules = dict(model.named_modules())
        self.weights = {name: modules[name].weight for name in target_linears(model, adapter, keys)}
        self.masks = {
            name: mask.to(device=self.weights[name].device, dtype=self.weights[name].dtype)
            for name, mask in (masks or {}).items()
            if name in self.weights
        }
        self.handles = []
        for name, w in self.weights.items():
            w.requires_grad_(True)
            if name in self.masks:
                mask = self.masks[name]
                self.handles.append(w.register_hook(lambda g, mask=mask: g * mask))

    def parameters(self) -> list[torch.Tensor]:
        return list(self.weights.values())

    def state(self) -> dict[str, torch.Tensor]:
        return {name: w.detach().cpu().clone() for name, w in self.weights.items()}

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor]) -> None:
        for name, w in self.weights.items():
            w.copy_(state[name])

    @torch.no_grad()
    def after_step(self) -> None:
        for name, mask in self.masks.items():
            self.weights[name].mul_(mask)

    def merge(self) -> dict[str, torch.Tensor]:
        self.remove()
        return {name: w.detach() for name, w in self.weights.items()}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


# ----- the method ----------------------------------------------------------------------------------
class RecoveryTraining(LearnedMethod):
    """Distillation of the student's weights as hooks of the shared training loop."""

    name = "recovery"
    hint = "lower --lr (--recover-lr under --recover), or use --dtype float32"

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchAdapter,
        options: RecoveryOptions,
        teacher: TeacherTopK | None,
        seed: int,
        device: torch.device,
        masks: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.model, self.adapter, self.o, self.teacher = model, adapter, options, teacher
        self.seed, self.device, self.masks = seed, device, masks
        self.peak_lr = options.peak_lr()
        self.steps_per_stage = options.steps
        self.weights: LoRAWeights | FullWeights | None = None
        self.tokens_seen = 0
        self.t_train = 0.0
        self.trace: list[dict[str, Any]] = []  # every step's record, set by finish

    def begin_stage(self, stage: int, resume: dict[str, Any] | None) -> list[torch.Tensor]:
        o = self.o
        if o.recover_mode == "lora":
            self.weights = LoRAWeights(
                self.model, self.adapter, o.lora_rank, o.lora_alpha, self.seed, o.targets, self.masks, self.device
            )
        else:
            self.weights = FullWeights(self.model, self.adapter, o.targets, self.masks)
        params = self.weights.parameters()
        if not params:
            raise NumericalError(f"recovery: no weights to train among --lora-targets {o.lora_targets}")
        self.opt = torch.optim.AdamW(params, lr=self.peak_lr, weight_decay=0.0)
        if resume is not None:
            self.weights.load(resume["weights"])
            self.opt.load_state_dict(resume["opt"])
            self.tokens_seen = int(resume["tokens_seen"])
        self.t_train = time.perf_counter()
        return params

    def step(self, batch: Batch, forward: Callable[[torch.Tensor], torch.Tensor]) -> Losses:
        self.opt.zero_grad(set_to_none=True)
        logits = forward(batch.tokens)
        teacher = self.teacher.batch(batch.rows, self.device) if self.teacher is not None else None
        o = self.o
        loss, kl, lm = distill_objective(logits, batch.tokens, teacher, o.temperature, o.kl_weight, o.lm_weight)
        return Losses(data=loss, logged={"loss": loss, "kl": kl, "lm": lm})

    def update(self, batch: Batch, means: dict[str, float]) -> dict[str, Any]:
        assert self.weights is not None  # begin_stage made them
        lr = WEIGHT_LR.apply(self.opt, self.peak_lr, batch.step, self.o.steps)
        self.opt.step()
        self.weights.after_step()
        self.tokens_seen += batch.global_rows * batch.tokens.shape[1]
        return {"step": batch.step + 1, **means, "lr": lr, "tokens": self.tokens_seen}

    def state_dict(self) -> dict[str, Any]:
        assert self.weights is not None
        return {"weights": self.weights.state(), "opt": self.opt.state_dict(), "tokens_seen": self.tokens_seen}

    def finish(self, trace: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Merge (LoRA) or release (full) the trained weights; returns them by module name."""
        assert self.weights is not None
        self.trace = list(trace)
        weights, self.weights = self.weights, None
        return weights.merge()

    def close(self) -> None:
        if self.weights is not None:
            self.weights.remove()


def topk_targets(ctx: Any, model: torch.nn.Module, k: int, temperature: float, label: str) -> TeacherTopK:
    """Top-k targets of ``model`` on ``ctx.calib`` (shared by minimax and recovery)."""
    calib = ctx.calib
    assert calib is not None
    n = calib.shape[0]
    bs = min(ctx.settings.batch_size, n)
    task = ctx.progress.task(label, total=-(-n // bs))
    model.eval()

    def shard(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        part = precompute_teacher(model, calib[lo:hi], k, temperature, bs, ctx.device, progress=task.advance)
        return part.logp, part.index, part.log_rest

    logp, index, log_rest = sharded_rows(n, shard)
    return TeacherTopK(logp, index, log_rest, temperature)


# ----- checks ---------------------------------------------------------------------------------------
def zero_masks(model: nn.Module, targets: list[str]) -> dict[str, torch.Tensor]:
    """``M = (W ≠ 0)`` of every 2:4-targeted weight: the positions allowed to train."""
    modules = dict(model.named_modules())
    return {name: (modules[name].weight.detach() != 0) for name in targets if name in modules}


@torch.no_grad()
def check_zeros_kept(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """Raise unless every weight outside its mask is exactly zero; returns the zeros checked."""
    modules = dict(model.named_modules())
    checked = 0
    for name, mask in masks.items():
        w = modules[name].weight.detach()
        off = ~mask.to(w.device)
        if bool((w[off] != 0).any()):
            raise NumericalError(f"recovery: {name} has non-zeros where the 2:4 mask has zeros")
        checked += int(off.sum())
    return checked


@torch.no_grad()
def objective_on(
    model: nn.Module,
    calib: torch.Tensor,
    teacher: TeacherTopK | None,
    o: RecoveryOptions,
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """The objective's terms averaged over every calibration sequence (before/after recovery)."""
    totals = {"loss": 0.0, "kl": 0.0, "lm": 0.0}
    n = calib.shape[0]
    for lo in range(0, n, batch_size):
        rows = torch.arange(lo, min(lo + batch_size, n))
        tokens = calib[rows].to(device)
        logits = model(tokens, use_cache=False).logits
        t = teacher.batch(rows, device) if teacher is not None else None
        loss, kl, lm = distill_objective(logits, tokens, t, o.temperature, o.kl_weight, o.lm_weight)
        for key, value in zip(totals, (loss, kl, lm)):
            totals[key] += float(value) * rows.numel()
    return {key: value / n for key, value in totals.items()}
