"""``uniform --method minimax``: learned uniform-width structured pruning (MaskPrune-style).

methods.md §2. Every decoder layer ends with the same number ``k_a`` of attention units (KV groups
or query heads) and ``k_f`` of MLP channels. What is learned:

* per-layer real scores ``z`` (one per attention unit / MLP channel), initialised from Wanda-sp
  importance (``baselines.unit_scores`` on dense calibration activations), normalised per layer;
* shared continuous widths ``s_a, s_f`` (as fractions ``ρ = s / n`` of the dense width), so the
  split of the parameter budget between attention and MLP is found by the optimisation;
* optional LoRA adapters on the frozen projections (merged into the weights before export).

Forward pass: hard masks, each layer keeps its top-``round(s)`` units (query units: the same
number in every KV group); the masks multiply head outputs (``o_proj`` input) and MLP channel
activations (``down_proj`` input) through forward pre-hooks; weights are never edited. Backward
(straight-through): the mask acts as the identity on ``z``, and as ``σ((s − rank − ½)/τ)`` on
``s`` (so ``s`` feels the value of the units at the boundary of the kept set).

Objective (minimised over z, s, LoRA; maximised over the multipliers y ≥ 0):

    L_distill + Σ_ℓ y_ℓ (‖z_ℓ‖₀ − s)/n + y_R (Params(s_a, s_f)/Params_dense − budget(t))

with ``L_distill = kl_weight · KL(teacher top-k ‖ student) + lm_weight · LM``. After each Adam step
on ``z`` the proximal operator of ``(λ + y_ℓ)·‖z_ℓ‖₁`` (soft threshold, scaled by the step size) is
applied; the multipliers take a projected ascent step on their constraint violation. The budget
ramps linearly from dense to ``1 − sparsity`` over the first ``--ramp`` fraction of the steps; the
last ``--finetune`` fraction trains LoRA only, with the masks frozen at the final widths. Final
widths: ``k_a = round(s_a)`` (to the attention granularity) and ``k_f`` chosen so the parameter
budget of methods.md §0 is met within one channel per layer (the accounting of
``masks.uniform_widths``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from llmprune import distributed
from llmprune.arch import Geometry
from llmprune.atomic import save_torch
from llmprune.distill import TeacherTopK, precompute_teacher, topk_kl
from llmprune.errors import NumericalError, ResumeError, UsageError
from llmprune.lora import add_lora, load_lora_state, lora_parameters, lora_state, remove_lora
from llmprune.alignment import Alignment
from llmprune.masks import attn_grid_step, attn_params_kept, uniform_widths
from llmprune.plan import PrunePlan
from llmprune.pruners.base import PruneContext, Pruner, register
from llmprune.pruners.baselines import STRUCTURED_KEYS, structured_layer_plan, unit_scores
from llmprune.trace import batch_rows, pyplot, save_figure

CHECKPOINT = "minimax_state.pt"
TEACHER = "minimax_teacher.pt"
TRACE_JSON = "minimax_trace.json"
TRACE_PNG = "minimax_trace.png"

GPU_HINT = (
    "7B+ on GPU: --nsamples 256 --seqlen 2048 --batch-size 4 --steps 1000 --lora-rank 16 --lora-lr 2e-4 "
    "--lr 0.01 --teacher-topk 256 --dtype bfloat16 (see docs/minimax.md)"
)


class MinimaxOptions(BaseModel):
    """The options of ``uniform --method minimax``; each field is also a command-line flag."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(100, ge=1, description="training steps (one batch of --batch-size sequences each). "
                       "Small CPU models: 80-300; " + GPU_HINT + ".")
    lr: float = Field(0.02, gt=0, description="Adam step size of the mask scores (scores start at normalised "
                      "Wanda-sp importance, mean 1).")
    width_lr: float = Field(0.05, gt=0, description="Adam step size of the shared widths (as fractions of the "
                            "dense widths).")
    lora_rank: int = Field(16, ge=0, description="LoRA rank on all q,k,v,o,gate,up,down (merged before export); "
                           "0 disables LoRA.")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha (update scaled by alpha/rank).")
    lora_lr: float = Field(2e-3, gt=0, description="AdamW learning rate of the LoRA adapters (cosine decay); "
                           "7B+: 1e-4 to 2e-4.")
    distill: bool = Field(True, description="distil from the dense model's precomputed top-k logits (KL); "
                          "--no-distill trains on the LM loss only.")
    kl_weight: float = Field(1.0, ge=0, description="weight of the KL distillation loss.")
    lm_weight: float = Field(0.5, ge=0, description="weight of the next-token (LM) loss.")
    learn_widths: bool = Field(True, description="learn the shared widths (the attention/MLP split); "
                               "--no-learn-widths fixes them at the uniform split of the baselines.")
    ramp: float = Field(0.3, ge=0, lt=1, description="fraction of the steps over which the budget ramps from "
                        "dense to the target.")
    finetune: float = Field(0.3, ge=0, lt=1, description="final fraction of the steps with masks frozen at the "
                            "final widths (LoRA only; skipped without LoRA).")
    dual_lr: float = Field(0.5, ge=0, description="ascent step of the Lagrange multipliers (per unit of "
                           "constraint violation, as a fraction).")
    prox: float = Field(1e-3, ge=0, description="strength of the l1 sparsity regulariser on the scores "
                        "(proximal soft-threshold after each step); 0 disables.")
    temperature: float = Field(1.0, gt=0, description="distillation temperature.")
    teacher_topk: int = Field(64, ge=1, description="teacher logits kept per position (top-k) for the KL; "
                              "7B+: 256-1024.")
    width_tau: float = Field(0.02, gt=0, le=1, description="width of the straight-through surrogate for the "
                             "widths (fraction of the dense width, at least one unit).")
    checkpoint_every: int = Field(20, ge=1, description="save a checkpoint for --resume every N steps.")


@dataclass
class Budget:
    """Parameter accounting of methods.md §0 for one layer, with continuous widths."""

    geom: Geometry
    attn_unit: str
    sparsity: float
    align: Alignment = Alignment()

    @property
    def n_a(self) -> int:
        return self.geom.attn_unit_count(self.attn_unit)

    @property
    def n_f(self) -> int:
        return self.geom.intermediate_size

    @property
    def step_a(self) -> int:
        return attn_grid_step(self.geom, self.attn_unit, self.align)

    @property
    def dense_layer(self) -> int:
        g = self.geom
        return g.layer_linear_params(g.num_heads, g.num_kv_heads, g.intermediate_size)

    def fraction(self, s_a: torch.Tensor | float, s_f: torch.Tensor | float) -> torch.Tensor | float:
        """Kept fraction of a layer's linear parameters for (continuous) widths in units."""
        g = self.geom
        if self.attn_unit == "group":
            attn = s_a * g.attn_unit_params("group")
        else:
            attn = g.hidden_size * g.head_dim * 2 * (s_a + g.num_kv_heads)
        return (attn + s_f * g.mlp_unit_params) / self.dense_layer

    def final_widths(self, s_a: float) -> tuple[int, int]:
        """Whole widths meeting the budget: attention rounded to its step, MLP absorbs rounding."""
        g, step = self.geom, self.step_a
        target = (1.0 - self.sparsity) * self.dense_layer
        k_pref = min(max(int(round(s_a / step)) * step, step), self.n_a)
        candidates = sorted(range(step, self.n_a + 1, step), key=lambda k: (abs(k - k_pref), k))
        for k_a in candidates:
            raw = (target - attn_params_kept(g, self.attn_unit, k_a)) / g.mlp_unit_params
            if 1 <= int(round(raw)) <= self.n_f:
                return k_a, self.align.round_channels(raw, self.n_f)
        return uniform_widths(g, self.sparsity, self.attn_unit, self.align)

    def kept_params(self, k_a: int, k_f: int) -> int:
        return attn_params_kept(self.geom, self.attn_unit, k_a) + k_f * self.geom.mlp_unit_params


# ----- masks ----------------------------------------------------------------------------------
def ranking_key(z: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
    """Scores in float64, ties (e.g. scores the prox set to 0) broken by the prior (init) scores."""
    key = z.detach().double()
    return key if prior is None else key + 1e-9 * prior.detach().double()


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """0-based rank of each entry in its row (0 = highest score; ties: lower index first)."""
    order = torch.argsort(scores.detach().double(), dim=-1, descending=True, stable=True)
    r = torch.empty_like(order)
    r.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order).contiguous())
    return r


def ste_mask(z: torch.Tensor, width: torch.Tensor, tau: float, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Hard top-round(width) mask per row of ``z`` with straight-through gradients.

    Forward: 1 for the ``round(width)`` best-ranked entries of each row, else 0. Backward: the
    identity on ``z``, and ``σ((width − rank − ½)/τ)`` on ``width``.
    """
    r = ranks(ranking_key(z, prior)).to(z.dtype)
    k = torch.round(width.detach()).clamp(1, z.shape[-1])
    hard = (r < k).to(z.dtype)
    soft = torch.sigmoid((width - r - 0.5) / tau)
    return hard + (z - z.detach()) + (soft - soft.detach())


class MaskHooks:
    """Forward pre-hooks multiplying head outputs and MLP channel activations by the masks."""

    def __init__(self, model: nn.Module, adapter, geom: Geometry) -> None:
        self.masks: dict[tuple[int, str], torch.Tensor] = {}
        self.handles = []
        d = geom.head_dim
        for i, layer in enumerate(adapter.layers(model)):
            for key, kind, rep in (("o", "a", d), ("down", "f", 1)):
                module = adapter.linear(layer, key)

                def hook(_m, args, i=i, kind=kind, rep=rep):
                    mask = self.masks.get((i, kind))
                    if mask is None:
                        return None
                    x = args[0]
                    if rep > 1:
                        mask = mask.repeat_interleave(rep)
                    return (x * mask.to(x.dtype),) + tuple(args[1:])

                self.handles.append(module.register_forward_pre_hook(hook))

    def set(self, head_masks: list[torch.Tensor], channel_masks: list[torch.Tensor]) -> None:
        self.masks = {}
        for i, (h, c) in enumerate(zip(head_masks, channel_masks)):
            self.masks[(i, "a")] = h
            self.masks[(i, "f")] = c

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.masks = {}


# ----- the pruner -----------------------------------------------------------------------------
@register
class MinimaxPruner(Pruner):
    strategy = "uniform"
    method = "minimax"
    summary = "MaskPrune-style: learned masks and shared widths (minimax, STE, prox, distillation, LoRA)"
    needs_calibration = True
    resumable = True
    Options = MinimaxOptions

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        o = self.options
        if o.ramp + o.finetune >= 1.0:
            raise UsageError(f"--ramp {o.ramp} + --finetune {o.finetune} must be below 1 (steps are needed at the target budget)")
        if o.distill and o.kl_weight == 0 and o.lm_weight == 0:
            raise UsageError("--kl-weight and --lm-weight are both 0: nothing to train on")
        if not o.distill and o.lm_weight == 0:
            raise UsageError("--no-distill needs --lm-weight > 0 (the LM loss is the only loss left)")
        self.probe: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------------------
    def prune(self, ctx: PruneContext) -> PrunePlan:
        o, s = self.options, ctx.settings
        if ctx.calib is None:
            raise UsageError("minimax needs calibration text (--calib)")
        model, adapter, device = ctx.model, ctx.adapter, ctx.device
        geom = adapter.geometry(model)
        budget = Budget(geom, s.attn_unit, s.sparsity, Alignment.of(s))
        calib = ctx.calib
        n_samples = calib.shape[0]
        bs = min(s.batch_size, n_samples)
        use_kl = o.distill and o.kl_weight > 0
        lm_w = o.lm_weight
        timings: dict[str, float] = {}
        fingerprint = self._fingerprint(ctx)
        ckpt_path = Path(ctx.work_dir) / CHECKPOINT
        teacher_path = Path(ctx.work_dir) / TEACHER

        # --- resume or start (rank 0's checkpoint, on every rank) ----------------------------
        def load_state() -> dict[str, Any] | None:
            if not (s.resume and ckpt_path.exists()):
                return None
            return torch.load(ckpt_path, map_location="cpu", weights_only=False)

        state = distributed.on_main(load_state)
        if state is not None and state.get("fingerprint") != fingerprint:
            raise ResumeError("--resume: the checkpoint was made with different settings or options; rerun without --resume")

        # --- teacher targets (precomputed once, kept on CPU) ---------------------------------
        t0 = time.perf_counter()
        teacher: TeacherTopK | None = None
        if use_kl:
            cached = distributed.on_main(
                lambda: torch.load(teacher_path, map_location="cpu", weights_only=False)
                if s.resume and teacher_path.exists() else None
            )
            if cached is not None:
                teacher = TeacherTopK.from_state(cached)
            else:
                task = ctx.progress.task("minimax teacher top-k", total=math.ceil(n_samples / bs))
                model.eval()
                teacher = _teacher(model, calib, o.teacher_topk, o.temperature, bs, device, task.advance)
                if distributed.is_main():
                    save_torch(teacher.state(), teacher_path)
        timings["time_teacher_s"] = time.perf_counter() - t0

        # --- scores: Wanda-sp importance on dense activations, normalised per layer -----------
        t0 = time.perf_counter()
        if state is None:
            z_a, z_f = self._init_scores(ctx, geom)
        else:
            z_a, z_f = state["z_a"].clone(), state["z_f"].clone()
        prior_a = (state["prior_a"] if state is not None else z_a.clone()).to(device)
        prior_f = (state["prior_f"] if state is not None else z_f.clone()).to(device)
        timings["time_init_s"] = time.perf_counter() - t0

        # --- trainable state ------------------------------------------------------------------
        L = geom.num_layers
        n_a, n_f, step_a = budget.n_a, budget.n_f, budget.step_a
        rows_a = geom.num_kv_heads if s.attn_unit == "query" else 1
        z_a = nn.Parameter(z_a.to(device).view(L, rows_a, n_a // rows_a))
        z_f = nn.Parameter(z_f.to(device).view(L, 1, n_f))
        prior_a, prior_f = prior_a.view_as(z_a), prior_f.view_as(z_f)
        rho = nn.Parameter(torch.ones(2, dtype=torch.float32, device=device))  # widths as fractions
        rho_min = torch.tensor([step_a / n_a, 1.0 / n_f], device=device)
        y_layer = torch.zeros(2, L, dtype=torch.float32, device=device)  # per-layer multipliers (a, f)
        y_res = torch.zeros((), dtype=torch.float32, device=device)  # resource multiplier
        fixed_k = uniform_widths(geom, s.sparsity, s.attn_unit, budget.align)

        grad_flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        wrapped = add_lora(model, adapter, o.lora_rank, o.lora_alpha, s.seed) if o.lora_rank > 0 else {}
        hooks = MaskHooks(model, adapter, geom)
        opt_z = torch.optim.Adam([z_a, z_f], lr=o.lr)
        opt_w = torch.optim.Adam([rho], lr=o.width_lr)
        opt_l = torch.optim.AdamW(lora_parameters(wrapped), lr=o.lora_lr, weight_decay=0.0) if wrapped else None

        T = o.steps
        ramp_steps = int(round(o.ramp * T))
        freeze_step = T - int(round(o.finetune * T)) if wrapped else T
        trace: list[dict[str, Any]] = []
        frozen: dict[str, Any] | None = None
        start = 0
        if state is not None:
            with torch.no_grad():
                rho.copy_(state["rho"])
                y_layer.copy_(state["y_layer"])
                y_res.copy_(state["y_res"])
            opt_z.load_state_dict(state["opt_z"])
            opt_w.load_state_dict(state["opt_w"])
            if opt_l is not None:
                load_lora_state(wrapped, state["lora"])
                opt_l.load_state_dict(state["opt_l"])
            trace, frozen, start = state["trace"], state["frozen"], state["step"]
            ctx.progress.log(f"minimax: resuming at step {start} of {T}")

        def widths(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            """Current continuous widths in units (with gradient when learned)."""
            if o.learn_widths:
                return rho[0] * n_a, rho[1] * n_f
            r = min(1.0, (step + 1) / ramp_steps) if ramp_steps else 1.0
            sa = n_a - (n_a - fixed_k[0]) * r
            sf = n_f - (n_f - fixed_k[1]) * r
            return torch.tensor(float(sa), device=device), torch.tensor(float(sf), device=device)

        def target(step: int) -> float:
            r = min(1.0, (step + 1) / ramp_steps) if ramp_steps else 1.0
            return 1.0 - s.sparsity * r

        def freeze(step: int) -> dict[str, Any]:
            sa, _ = widths(step)
            k_a, k_f = fixed_k if not o.learn_widths else budget.final_widths(float(sa.detach()))
            key_a, key_f = ranking_key(z_a, prior_a), ranking_key(z_f, prior_f)
            layers = [
                structured_layer_plan(i, key_a[i].flatten().cpu(), key_f[i].flatten().cpu(), k_a, k_f, geom, s.attn_unit)
                for i in range(L)
            ]
            return {"k_a": k_a, "k_f": k_f, "layers": [lp.model_dump() for lp in layers], "step": step}

        def frozen_masks(fr: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            heads, chans = [], []
            for lp in fr["layers"]:
                h = torch.zeros(geom.num_heads, device=device)
                h[lp["heads"]] = 1.0
                c = torch.zeros(n_f, device=device)
                c[lp["channels"]] = 1.0
                heads.append(h)
                chans.append(c)
            return heads, chans

        task = ctx.progress.task("minimax", total=T)
        task.advance(start)
        t0 = time.perf_counter()
        model.train(False)
        # Under torchrun: DistributedDataParallel over every trainable tensor (scores, widths,
        # LoRA); each rank runs its shard of every step's batch. Single process: the model itself.
        trainable = [z_a, z_f, rho, *lora_parameters(wrapped)]
        forward = distributed.data_parallel(trainable, lambda t: model(t, use_cache=False).logits,
                                            find_unused_parameters=True)
        try:
            for step in range(start, T):
                if frozen is None and step >= freeze_step:
                    frozen = freeze(step)
                rows = batch_rows(step, n_samples, bs, s.seed)
                n_rows = rows.numel()
                lo, hi = distributed.shard_range(n_rows)  # all rows without a process group
                rows = rows[lo:hi]
                tokens = calib[rows].to(device)
                if frozen is None:
                    sa, sf = widths(step)
                    m_a = ste_mask(z_a, sa / rows_a, max(1.0, o.width_tau * n_a / rows_a), prior_a)
                    m_f = ste_mask(z_f, sf, max(1.0, o.width_tau * n_f), prior_f)
                    head_masks = [self._head_mask(m_a[i].flatten(), geom, s.attn_unit) for i in range(L)]
                    hooks.set(head_masks, [m_f[i].flatten() for i in range(L)])
                else:
                    hooks.set(*frozen_masks(frozen))
                    sa = torch.tensor(float(frozen["k_a"]), device=device)
                    sf = torch.tensor(float(frozen["k_f"]), device=device)

                logits = forward(tokens)
                kl = torch.zeros((), device=device)
                if use_kl:
                    kl = topk_kl(logits, *teacher.batch(rows, device), o.temperature)
                lm = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
                loss = (o.kl_weight * kl if use_kl else 0.0) + lm_w * lm
                logged = _global_means(rows.numel(), n_rows, loss, kl, lm)  # floats, same on every rank
                if not math.isfinite(logged[0]):
                    raise NumericalError(f"minimax: loss is not finite at step {step} (lower --lr/--lora-lr, or use --dtype float32)")

                # budget of the widths actually in use (rounded), gradient to the continuous widths
                sa_used = sa + (torch.clamp(torch.round(sa.detach() / rows_a), min=1) * rows_a - sa.detach())
                sf_used = sf + (torch.clamp(torch.round(sf.detach()), min=1) - sf.detach())
                frac = budget.fraction(sa_used, sf_used)
                violation = float(frac.detach() if torch.is_tensor(frac) else frac) - target(step)
                with torch.no_grad():
                    active = torch.stack([(z_a > 0).flatten(1).sum(1), (z_f > 0).flatten(1).sum(1)]).float()
                    layer_viol = torch.stack([(active[0] - sa.detach()) / n_a, (active[1] - sf.detach()) / n_f])
                total = loss * distributed.loss_weight(rows.numel(), n_rows) if distributed.is_enabled() else loss
                learn_now = frozen is None
                if learn_now and o.learn_widths:
                    # Lagrangian terms: only s carries gradient here (counts are constants).
                    # (the per-layer terms y_ℓ(‖z_ℓ‖₀ − s) act through the prox threshold only)
                    total = total + y_res * (frac - target(step))

                for opt in (opt_z, opt_w, opt_l):
                    if opt is not None:
                        opt.zero_grad(set_to_none=True)
                total.backward()
                if opt_l is not None:
                    for group in opt_l.param_groups:
                        group["lr"] = o.lora_lr * _cosine(step, T)
                    opt_l.step()
                if learn_now:
                    opt_z.step()
                    if o.learn_widths:
                        opt_w.step()
                    with torch.no_grad():
                        # proximal step of (λ + y_ℓ)·‖z_ℓ outside its kept set‖₁, scaled by the step
                        # size: pruned units' scores decay to 0 unless their gradient keeps them up.
                        for z, y, m in ((z_a, y_layer[0], m_a), (z_f, y_layer[1], m_f)):
                            thr = (o.lr * (o.prox + y)).view(L, 1, 1) * (1.0 - m.detach())
                            z.copy_(torch.sign(z) * torch.clamp(z.abs() - thr, min=0.0))
                        rho.copy_(torch.maximum(torch.minimum(rho, torch.ones_like(rho)), rho_min))
                        # dual ascent, projected on y ≥ 0
                        y_res.copy_(torch.clamp(y_res + o.dual_lr * violation, min=0.0))
                        y_layer.copy_(torch.clamp(y_layer + o.dual_lr * layer_viol, min=0.0))

                rec = {
                    "step": step + 1, "loss": logged[0], "kl": logged[1], "lm": logged[2],
                    "s_attn": float(sa.detach()), "s_mlp": float(sf.detach()),
                    "k_attn": int(frozen["k_a"]) if frozen else int(round(float(sa.detach()))),
                    "k_mlp": int(frozen["k_f"]) if frozen else int(round(float(sf.detach()))),
                    "params_fraction": float(frac.detach() if torch.is_tensor(frac) else frac), "budget": target(step), "violation": violation,
                    "y_resource": float(y_res), "y_layer_attn": float(y_layer[0].mean()),
                    "y_layer_mlp": float(y_layer[1].mean()),
                    "layer_violation_attn": float(layer_viol[0].mean()), "layer_violation_mlp": float(layer_viol[1].mean()),
                    "frozen": frozen is not None,
                }
                trace.append(rec)
                task.advance()
                task.info(loss=rec["loss"], kl=rec["kl"], k_a=rec["k_attn"], k_f=rec["k_mlp"], viol=round(violation, 4))
                if (step + 1) % o.checkpoint_every == 0 and step + 1 < T and distributed.is_main():
                    self._checkpoint(ckpt_path, fingerprint, step + 1, z_a, z_f, rho, y_layer, y_res, opt_z, opt_w,
                                     opt_l, wrapped, trace, frozen, prior_a, prior_f)
                _after_step(step + 1)

            if frozen is None:
                frozen = freeze(T)
            timings["time_train_s"] = time.perf_counter() - t0
            del forward  # releases DDP's hooks and buckets

            # --- final plan, merged LoRA, self-check of the merge -----------------------------
            plan = PrunePlan.dense_structured(geom, self.strategy, self.method, s.attn_unit)
            plan.layers = [type(plan.layers[0]).model_validate(lp) for lp in frozen["layers"]]
            hooks.set(*frozen_masks(frozen))
            probe_tokens = calib[:1].to(device)
            with torch.no_grad():
                student = model(probe_tokens, use_cache=False).logits.float().cpu()
            self.probe = {"tokens": probe_tokens.cpu(), "logits": student}
        finally:
            hooks.remove()
            remove_lora(model, adapter)
            for p, flag in zip(model.parameters(), grad_flags):
                p.requires_grad_(flag)
        # Merge LoRA into the weights in place (one matrix at a time); plan.weights refers to them.
        with torch.no_grad():
            for name, module in wrapped.items():
                module.base.weight.copy_(module.merged_weight().to(module.base.weight.dtype))
                plan.weights[name] = module.base.weight.detach()
        merge_diff = self._merge_check(ctx, plan, probe_tokens, student)

        k_a, k_f = frozen["k_a"], frozen["k_f"]
        kept = budget.kept_params(k_a, k_f)
        ctx.extras.setdefault("report", {})["minimax"] = {
            "k_attn": k_a, "k_mlp": k_f, "attn_unit": s.attn_unit,
            "attn_share_of_kept_params": attn_params_kept(geom, s.attn_unit, k_a) / kept,
            "uniform_split": {"k_attn": fixed_k[0], "k_mlp": fixed_k[1]},
            "steps": T, "freeze_step": frozen["step"], "final_loss": trace[-1]["loss"] if trace else None,
            "final_kl": trace[-1]["kl"] if trace else None, "merge_check_max_abs_logit_diff": merge_diff,
            **timings,
        }
        files = ctx.extras.setdefault("files", {})
        files[TRACE_JSON] = {"options": o.model_dump(mode="json"), "trace": trace}
        png = _plot_trace(trace, Path(ctx.work_dir) / TRACE_PNG, s.sparsity) if distributed.is_main() else None
        if png is not None:
            files[TRACE_PNG] = png
        return plan

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _head_mask(unit_mask: torch.Tensor, geom: Geometry, attn_unit: str) -> torch.Tensor:
        """Attention-unit mask -> per-query-head mask (a KV group covers its g query heads)."""
        if attn_unit == "group":
            return unit_mask.repeat_interleave(geom.group_size)
        return unit_mask

    def _init_scores(self, ctx: PruneContext, geom: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
        """Wanda-sp scores of every layer on dense activations, each divided by its layer mean."""
        s = ctx.settings
        attn_scores, mlp_scores = [], []

        def process(i: int, layer: nn.Module) -> None:
            stats = runner.collect(i, layer, STRUCTURED_KEYS, hessian=False)
            a, f = unit_scores(layer, ctx.adapter, geom, s.attn_unit, stats)
            attn_scores.append(a.float() / a.float().mean().clamp_min(1e-12))
            mlp_scores.append(f.float() / f.float().mean().clamp_min(1e-12))

        task = ctx.progress.task("minimax Wanda-sp init", total=geom.num_layers)
        with torch.no_grad():
            runner = ctx.layerwise_runner()
            runner.run(process, progress=task)
        return torch.stack(attn_scores), torch.stack(mlp_scores)

    @staticmethod
    def _fingerprint(ctx: PruneContext) -> str:
        s = ctx.settings
        keys = {k: v for k, v in s.model_dump(mode="json").items() if k not in ("resume", "overwrite", "output", "device")}
        blob = json.dumps(keys, sort_keys=True, default=str) + str(ctx.calib.shape) + str(int(ctx.calib.sum()))
        return hashlib.sha256(blob.encode()).hexdigest()

    @staticmethod
    def _checkpoint(path, fingerprint, step, z_a, z_f, rho, y_layer, y_res, opt_z, opt_w, opt_l, wrapped, trace, frozen,
                    prior_a, prior_f):
        state = {
            "fingerprint": fingerprint, "step": step,
            "z_a": z_a.detach().cpu().flatten(1).clone(), "z_f": z_f.detach().cpu().flatten(1).clone(),
            "rho": rho.detach().cpu().clone(), "y_layer": y_layer.cpu().clone(), "y_res": y_res.cpu().clone(),
            "opt_z": opt_z.state_dict(), "opt_w": opt_w.state_dict(),
            "opt_l": opt_l.state_dict() if opt_l is not None else None,
            "lora": lora_state(wrapped), "trace": list(trace), "frozen": frozen,
            "prior_a": prior_a.detach().cpu().flatten(1).clone(), "prior_f": prior_f.detach().cpu().flatten(1).clone(),
        }
        save_torch(state, path)

    @staticmethod
    def _merge_check(ctx: PruneContext, plan: PrunePlan, tokens: torch.Tensor, student: torch.Tensor) -> float:
        """Max |logit| difference between the trained student (hooks + LoRA) and the model with the
        merged weights and the removed units zeroed (left so: surgery then slices them away)."""
        from llmprune.surgery import mask_structured

        with torch.no_grad():
            mask_structured(ctx.model, ctx.adapter, plan)
            out = ctx.model(tokens, use_cache=False).logits.float().cpu()
        return float((out - student).abs().max())


def _after_step(step: int) -> None:
    """Called after every completed step (tests replace it to inject an interruption)."""
    from llmprune.pruners.base import step_delay_for_tests

    step_delay_for_tests()


def _global_means(local_rows: int, global_rows: int, *values: torch.Tensor) -> list[float]:
    """Batch means over all ranks' rows (row-weighted) of per-rank means; the local values alone
    without a process group."""
    local = [float(v.detach()) for v in values]
    if not distributed.is_enabled():
        return local
    sums = distributed.all_reduce_floats([v * local_rows for v in local])
    return [v / global_rows for v in sums]


def _teacher(model: nn.Module, calib: torch.Tensor, k: int, temperature: float, bs: int, device: torch.device,
             progress) -> TeacherTopK:
    """Teacher top-k of every calibration row; under torchrun each rank runs its shard and the
    rows are gathered (all ranks then hold the same targets)."""
    if not distributed.is_enabled():
        return precompute_teacher(model, calib, k, temperature, bs, device, progress=progress)
    n = calib.shape[0]
    lo, hi = distributed.shard_range(n)  # non-empty: the pipeline asks for --nsamples >= ranks
    part = precompute_teacher(model, calib[lo:hi], k, temperature, bs, device, progress=progress)
    return TeacherTopK(distributed.gather_rows(part.logp, n, lo), distributed.gather_rows(part.index, n, lo),
                       distributed.gather_rows(part.log_rest, n, lo), temperature)


def _cosine(step: int, total: int, warmup: float = 0.05, floor: float = 0.1) -> float:
    w = max(1, int(round(warmup * total)))
    if step < w:
        return (step + 1) / w
    p = (step - w) / max(1, total - w)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def _plot_trace(trace: list[dict[str, Any]], path: Path, sparsity: float) -> Path | None:
    """PNG of loss, widths and constraint violation per step (None without matplotlib)."""
    plt = pyplot()
    if not trace or plt is None:
        return None
    steps = [r["step"] for r in trace]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(steps, [r["loss"] for r in trace], label="loss")
    ax.plot(steps, [r["kl"] for r in trace], label="KL")
    ax.plot(steps, [r["lm"] for r in trace], label="LM")
    ax.set_xlabel("step"); ax.set_title("losses"); ax.legend(); ax.set_yscale("log")
    ax = axes[1]
    n_a = max(r["s_attn"] for r in trace) or 1
    n_f = max(r["s_mlp"] for r in trace) or 1
    ax.plot(steps, [r["s_attn"] / n_a for r in trace], label=f"attention width / {n_a:g}")
    ax.plot(steps, [r["s_mlp"] / n_f for r in trace], label=f"MLP width / {n_f:g}")
    ax.plot(steps, [r["params_fraction"] for r in trace], label="kept params")
    ax.plot(steps, [r["budget"] for r in trace], "--", label="budget")
    ax.set_xlabel("step"); ax.set_title(f"widths (sparsity {sparsity:g})"); ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(steps, [r["violation"] for r in trace], label="resource violation")
    ax.plot(steps, [r["y_resource"] for r in trace], label="y_resource")
    ax.plot(steps, [r["y_layer_mlp"] for r in trace], label="mean y_layer (MLP)")
    ax.plot(steps, [r["y_layer_attn"] for r in trace], label="mean y_layer (attn)")
    ax.set_xlabel("step"); ax.set_title("constraint and multipliers"); ax.legend(fontsize=8)
    return save_figure(fig, path)
