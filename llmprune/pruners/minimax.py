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

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmprune.core.distill import TeacherTopK
from llmprune.core.masks import attn_grid_step, attn_params_kept, uniform_widths
from llmprune.core.memory_model import Request, Resources, learned_resources, stage_hours
from llmprune.core.scoring import STRUCTURED_KEYS, structured_layer_plan, unit_scores
from llmprune.errors import UsageError
from llmprune.model.alignment import Alignment
from llmprune.model.arch import Geometry
from llmprune.model.plan import PrunePlan
from llmprune.pruners.base import PruneContext, Pruner, PruneResult
from llmprune.pruners.minimax_options import MinimaxMethod, MinimaxOptions
from llmprune.train.cadence import checkpoints_per_stage
from llmprune.train.loop import Batch, Event, LearnedMethod, Losses, Training, is_main, notify
from llmprune.train.recovery import WEIGHT_LR, LoRAWeights, distill_objective, topk_targets
from llmprune.train.trace import pyplot, save_figure

TEACHER = "minimax_teacher.pt"
TRACE_JSON = "minimax_trace.json"
TRACE_PNG = "minimax_trace.png"


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
class MinimaxPruner(Pruner, MinimaxMethod):
    options: MinimaxOptions

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        o = self.options
        if o.ramp + o.finetune >= 1.0:
            raise UsageError(
                f"--ramp {o.ramp} + --finetune {o.finetune} must be below 1 (steps are needed at the target budget)"
            )
        if o.distill and o.kl_weight == 0 and o.lm_weight == 0:
            raise UsageError("--kl-weight and --lm-weight are both 0: nothing to train on")
        if not o.distill and o.lm_weight == 0:
            raise UsageError("--no-distill needs --lm-weight > 0 (the LM loss is the only loss left)")

    @classmethod
    def resources(cls, request: Request) -> Resources:
        """The shared training terms, plus the LoRA adapters (value, gradient, two Adam moments in
        float32), the dense teacher's top-k logits (host and disk) and the teacher's forward pass."""
        q, o = request, MinimaxOptions.model_validate(request.options)
        shape = q.shape
        res, _, step_flops = learned_resources(q, o.steps, kl=o.distill)
        qd, kvd = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        io = 2 * (shape.hidden + qd) + 2 * (shape.hidden + kvd) + 3 * (shape.hidden + shape.intermediate)  # Σ in + out
        lora = shape.layers * o.lora_rank * io
        res.terms["learned state"] = lora * 16
        teacher = q.calib_tokens * (o.teacher_topk * 12 + 4) if o.distill else 0
        res.host += teacher
        res.disk += teacher + lora * 12
        every = checkpoints_per_stage(str(o.checkpoint_every), o.steps, stage_hours(q, o.steps, step_flops))
        res.writes = every * lora * 12  # LoRA + two Adam moments
        res.flops += 2 * shape.params * q.calib_tokens  # the teacher pass
        res.transfers += math.ceil(q.nsamples / q.ranks / max(q.batch, 1)) * q.streamed_bytes
        return res

    # ------------------------------------------------------------------------------------------
    def prune(self, ctx: PruneContext) -> PruneResult:
        if ctx.calib is None:
            raise UsageError("minimax needs calibration text (--calib)")
        o = self.options
        training = Training(ctx, self.method, o, o.checkpoint_every)
        checkpoint = training.load_checkpoint()
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        teacher = None
        if o.distill and o.kl_weight > 0:  # precomputed once (kept on CPU), reused by --resume
            build = lambda: topk_targets(ctx, ctx.model, o.teacher_topk, o.temperature, "minimax teacher top-k")  # noqa: E731
            teacher = TeacherTopK.from_state(training.cached(TEACHER, lambda: build().state()))
        timings["time_teacher_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        geom = ctx.adapter.geometry(ctx.model)
        scores = checkpoint.method if checkpoint else None
        if scores is None:
            z_a, z_f = self._init_scores(ctx, geom)
            scores = {"z_a": z_a, "z_f": z_f, "prior_a": z_a.clone(), "prior_f": z_f.clone()}
        timings["time_init_s"] = time.perf_counter() - t0
        return training.run(MinimaxTraining(self, ctx, geom, teacher, scores, timings))

    def _init_scores(self, ctx: PruneContext, geom: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
        """Wanda-sp scores of every layer on dense activations, each divided by its layer mean."""
        s = ctx.settings
        attn_scores: list[torch.Tensor] = []
        mlp_scores: list[torch.Tensor] = []

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


class MinimaxTraining(LearnedMethod):
    """The minimax objective as hooks of the shared training loop (``llmprune.train.loop``)."""

    name = "minimax"
    hint = "lower --lr/--lora-lr, or use --dtype float32"
    find_unused_parameters = True  # frozen masks leave the scores without gradient

    def __init__(
        self,
        pruner: MinimaxPruner,
        ctx: PruneContext,
        geom: Geometry,
        teacher: TeacherTopK | None,
        scores: dict[str, torch.Tensor],
        timings: dict[str, float],
    ) -> None:
        o, s, device = pruner.options, ctx.settings, ctx.device
        self.o, self.s, self.ctx, self.geom, self.teacher, self.timings = o, s, ctx, geom, teacher, timings
        self.strategy, self.method = pruner.strategy, pruner.method
        self.budget = budget = Budget(geom, s.attn_unit, s.sparsity, Alignment.of(s))
        self.steps_per_stage = T = o.steps
        L = geom.num_layers
        self.n_a, self.n_f = budget.n_a, budget.n_f
        self.rows_a = rows_a = geom.num_kv_heads if s.attn_unit == "query" else 1
        self.z_a = nn.Parameter(scores["z_a"].clone().to(device).view(L, rows_a, self.n_a // rows_a))
        self.z_f = nn.Parameter(scores["z_f"].clone().to(device).view(L, 1, self.n_f))
        self.prior_a = scores["prior_a"].to(device).view_as(self.z_a)
        self.prior_f = scores["prior_f"].to(device).view_as(self.z_f)
        self.rho = nn.Parameter(torch.ones(2, dtype=torch.float32, device=device))  # widths as fractions
        self.rho_min = torch.tensor([budget.step_a / self.n_a, 1.0 / self.n_f], device=device)
        self.y_layer = torch.zeros(2, L, dtype=torch.float32, device=device)  # per-layer multipliers (a, f)
        self.y_res = torch.zeros((), dtype=torch.float32, device=device)  # resource multiplier
        self.fixed_k = uniform_widths(geom, s.sparsity, s.attn_unit, budget.align)
        self.ramp_steps = int(round(o.ramp * T))
        self.freeze_step = T - int(round(o.finetune * T)) if o.lora_rank > 0 else T
        self.frozen: dict[str, Any] | None = None
        self.lora: LoRAWeights | None = None  # the recovery stage's adapters (llmprune.train.recovery)
        self.hooks: MaskHooks | None = None

    # ----- the schedule of the widths and the budget ------------------------------------------
    def widths(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Current continuous widths in units (with gradient when learned)."""
        if self.o.learn_widths:
            return self.rho[0] * self.n_a, self.rho[1] * self.n_f
        r = min(1.0, (step + 1) / self.ramp_steps) if self.ramp_steps else 1.0
        sa = self.n_a - (self.n_a - self.fixed_k[0]) * r
        sf = self.n_f - (self.n_f - self.fixed_k[1]) * r
        return torch.tensor(float(sa), device=self.ctx.device), torch.tensor(float(sf), device=self.ctx.device)

    def target(self, step: int) -> float:
        """Kept fraction allowed at ``step``: ramps from dense to ``1 − sparsity``."""
        r = min(1.0, (step + 1) / self.ramp_steps) if self.ramp_steps else 1.0
        return 1.0 - self.s.sparsity * r

    def freeze(self, step: int) -> dict[str, Any]:
        """Final whole widths and each layer's kept units by the current scores."""
        sa, _ = self.widths(step)
        k_a, k_f = self.fixed_k if not self.o.learn_widths else self.budget.final_widths(float(sa.detach()))
        key_a, key_f = ranking_key(self.z_a, self.prior_a), ranking_key(self.z_f, self.prior_f)
        layers = [
            structured_layer_plan(
                i, key_a[i].flatten().cpu(), key_f[i].flatten().cpu(), k_a, k_f, self.geom, self.s.attn_unit
            )
            for i in range(self.geom.num_layers)
        ]
        return {"k_a": k_a, "k_f": k_f, "layers": [lp.model_dump() for lp in layers], "step": step}

    def frozen_masks(self, fr: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        heads, chans = [], []
        for lp in fr["layers"]:
            h = torch.zeros(self.geom.num_heads, device=self.ctx.device)
            h[lp["heads"]] = 1.0
            c = torch.zeros(self.n_f, device=self.ctx.device)
            c[lp["channels"]] = 1.0
            heads.append(h)
            chans.append(c)
        return heads, chans

    # ----- hooks of the training loop ----------------------------------------------------------
    def begin_stage(self, stage: int, resume: dict[str, Any] | None) -> list[torch.Tensor]:
        o, ctx = self.o, self.ctx
        self.lora = (
            LoRAWeights(ctx.model, ctx.adapter, o.lora_rank, o.lora_alpha, self.s.seed, device=ctx.device)
            if o.lora_rank > 0
            else None
        )
        lora_params = self.lora.parameters() if self.lora is not None else []
        self.hooks = MaskHooks(ctx.model, ctx.adapter, self.geom)
        self.opt_z = torch.optim.Adam([self.z_a, self.z_f], lr=o.lr)
        self.opt_w = torch.optim.Adam([self.rho], lr=o.width_lr)
        self.opt_l = torch.optim.AdamW(lora_params, lr=o.lora_lr, weight_decay=0.0) if self.lora is not None else None
        if resume is not None:
            with torch.no_grad():
                self.rho.copy_(resume["rho"])
                self.y_layer.copy_(resume["y_layer"])
                self.y_res.copy_(resume["y_res"])
            self.opt_z.load_state_dict(resume["opt_z"])
            self.opt_w.load_state_dict(resume["opt_w"])
            if self.opt_l is not None and self.lora is not None:
                self.lora.load(resume["lora"])
                self.opt_l.load_state_dict(resume["opt_l"])
            self.frozen = resume["frozen"]
        self.t_train = time.perf_counter()
        # Under torchrun the loop wraps every trainable tensor (scores, widths, LoRA) in DDP.
        return [self.z_a, self.z_f, self.rho, *lora_params]

    def step(self, batch: Batch, forward) -> Losses:
        o, step, device = self.o, batch.step, self.ctx.device
        geom, L, n_a, n_f, rows_a = self.geom, self.geom.num_layers, self.n_a, self.n_f, self.rows_a
        for opt in (self.opt_z, self.opt_w, self.opt_l):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        if self.frozen is None and step >= self.freeze_step:
            self.frozen = self.freeze(step)
        assert self.hooks is not None  # begin_stage installed them
        m_a: torch.Tensor | None
        m_f: torch.Tensor | None
        if self.frozen is None:
            sa, sf = self.widths(step)
            m_a = ste_mask(self.z_a, sa / rows_a, max(1.0, o.width_tau * n_a / rows_a), self.prior_a)
            m_f = ste_mask(self.z_f, sf, max(1.0, o.width_tau * n_f), self.prior_f)
            head_masks = [_head_mask(m_a[i].flatten(), geom, self.s.attn_unit) for i in range(L)]
            self.hooks.set(head_masks, [m_f[i].flatten() for i in range(L)])
        else:
            m_a = m_f = None
            self.hooks.set(*self.frozen_masks(self.frozen))
            sa = torch.tensor(float(self.frozen["k_a"]), device=device)
            sf = torch.tensor(float(self.frozen["k_f"]), device=device)

        logits = forward(batch.tokens)
        teacher = self.teacher.batch(batch.rows, device) if self.teacher is not None else None
        loss, kl, lm = distill_objective(logits, batch.tokens, teacher, o.temperature, o.kl_weight, o.lm_weight)

        # budget of the widths actually in use (rounded), gradient to the continuous widths
        sa_used = sa + (torch.clamp(torch.round(sa.detach() / rows_a), min=1) * rows_a - sa.detach())
        sf_used = sf + (torch.clamp(torch.round(sf.detach()), min=1) - sf.detach())
        frac = self.budget.fraction(sa_used, sf_used)
        violation = float(frac.detach() if torch.is_tensor(frac) else frac) - self.target(step)
        with torch.no_grad():
            active = torch.stack([(self.z_a > 0).flatten(1).sum(1), (self.z_f > 0).flatten(1).sum(1)]).float()
            layer_viol = torch.stack([(active[0] - sa.detach()) / n_a, (active[1] - sf.detach()) / n_f])
        extra = None
        if self.frozen is None and o.learn_widths:
            # Lagrangian terms: only s carries gradient here (counts are constants).
            # (the per-layer terms y_ℓ(‖z_ℓ‖₀ − s) act through the prox threshold only)
            extra = self.y_res * (frac - self.target(step))
        self.current: dict[str, Any] = {
            "sa": sa,
            "sf": sf,
            "m_a": m_a,
            "m_f": m_f,
            "frac": frac,
            "violation": violation,
            "layer_viol": layer_viol,
        }
        return Losses(data=loss, logged={"loss": loss, "kl": kl, "lm": lm}, extra=extra)

    def update(self, batch: Batch, means: dict[str, float]) -> dict[str, Any]:
        o, c, step, L = self.o, self.current, batch.step, self.geom.num_layers
        if self.opt_l is not None:
            WEIGHT_LR.apply(self.opt_l, o.lora_lr, step, o.steps)
            self.opt_l.step()
        frozen = self.frozen
        if frozen is None:
            self.opt_z.step()
            if o.learn_widths:
                self.opt_w.step()
            with torch.no_grad():
                # proximal step of (λ + y_ℓ)·‖z_ℓ outside its kept set‖₁, scaled by the step
                # size: pruned units' scores decay to 0 unless their gradient keeps them up.
                for z, y, m in ((self.z_a, self.y_layer[0], c["m_a"]), (self.z_f, self.y_layer[1], c["m_f"])):
                    thr = (o.lr * (o.prox + y)).view(L, 1, 1) * (1.0 - m.detach())
                    z.copy_(torch.sign(z) * torch.clamp(z.abs() - thr, min=0.0))
                self.rho.copy_(torch.maximum(torch.minimum(self.rho, torch.ones_like(self.rho)), self.rho_min))
                # dual ascent, projected on y ≥ 0
                self.y_res.copy_(torch.clamp(self.y_res + o.dual_lr * c["violation"], min=0.0))
                self.y_layer.copy_(torch.clamp(self.y_layer + o.dual_lr * c["layer_viol"], min=0.0))
        sa, sf, frac, layer_viol = c["sa"], c["sf"], c["frac"], c["layer_viol"]
        return {
            "step": step + 1,
            "loss": means["loss"],
            "kl": means["kl"],
            "lm": means["lm"],
            "s_attn": float(sa.detach()),
            "s_mlp": float(sf.detach()),
            "k_attn": int(frozen["k_a"]) if frozen else int(round(float(sa.detach()))),
            "k_mlp": int(frozen["k_f"]) if frozen else int(round(float(sf.detach()))),
            "params_fraction": float(frac.detach() if torch.is_tensor(frac) else frac),
            "budget": self.target(step),
            "violation": c["violation"],
            "y_resource": float(self.y_res),
            "y_layer_attn": float(self.y_layer[0].mean()),
            "y_layer_mlp": float(self.y_layer[1].mean()),
            "layer_violation_attn": float(layer_viol[0].mean()),
            "layer_violation_mlp": float(layer_viol[1].mean()),
            "frozen": frozen is not None,
        }

    def progress_info(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "loss": record["loss"],
            "kl": record["kl"],
            "k_a": record["k_attn"],
            "k_f": record["k_mlp"],
            "viol": round(record["violation"], 4),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "z_a": self.z_a.detach().cpu().flatten(1).clone(),
            "z_f": self.z_f.detach().cpu().flatten(1).clone(),
            "prior_a": self.prior_a.detach().cpu().flatten(1).clone(),
            "prior_f": self.prior_f.detach().cpu().flatten(1).clone(),
            "rho": self.rho.detach().cpu().clone(),
            "y_layer": self.y_layer.cpu().clone(),
            "y_res": self.y_res.cpu().clone(),
            "opt_z": self.opt_z.state_dict(),
            "opt_w": self.opt_w.state_dict(),
            "opt_l": self.opt_l.state_dict() if self.opt_l is not None else None,
            "lora": self.lora.state() if self.lora is not None else {},
            "frozen": self.frozen,
        }

    def finish(self, trace: list[dict[str, Any]]) -> PruneResult:
        """Final plan, LoRA merged into the kept weights, and a self-check of the merge."""
        o, s, ctx, geom, T = self.o, self.s, self.ctx, self.geom, self.o.steps
        frozen = self.frozen if self.frozen is not None else self.freeze(T)
        self.timings["time_train_s"] = time.perf_counter() - self.t_train
        plan = PrunePlan.dense_structured(geom, self.strategy, self.method, s.attn_unit)
        plan.layers = [type(plan.layers[0]).model_validate(lp) for lp in frozen["layers"]]
        assert self.hooks is not None  # begin_stage installed them
        assert ctx.calib is not None  # MinimaxPruner.prune checked it
        self.hooks.set(*self.frozen_masks(frozen))
        probe_tokens = ctx.calib[:1].to(ctx.device)
        with torch.no_grad():
            student = ctx.model(probe_tokens, use_cache=False).logits.float().cpu()
        notify(Event(self.name, "student", T, {"tokens": probe_tokens.cpu(), "logits": student}))
        self.hooks.remove()
        # Merge LoRA into the weights in place (one matrix at a time); plan.weights refers to them.
        if self.lora is not None:
            plan.weights.update(self.lora.merge())
        merge_diff = _merge_check(ctx, plan, probe_tokens, student)

        k_a, k_f = frozen["k_a"], frozen["k_f"]
        kept = self.budget.kept_params(k_a, k_f)
        report = {
            "k_attn": k_a,
            "k_mlp": k_f,
            "attn_unit": s.attn_unit,
            "attn_share_of_kept_params": attn_params_kept(geom, s.attn_unit, k_a) / kept,
            "uniform_split": {"k_attn": self.fixed_k[0], "k_mlp": self.fixed_k[1]},
            "steps": T,
            "freeze_step": frozen["step"],
            "final_loss": trace[-1]["loss"] if trace else None,
            "final_kl": trace[-1]["kl"] if trace else None,
            "merge_check_max_abs_logit_diff": merge_diff,
            **self.timings,
        }
        files: dict[str, Any] = {TRACE_JSON: {"options": o.model_dump(mode="json"), "trace": trace}}
        png = _plot_trace(trace, Path(ctx.work_dir) / TRACE_PNG, s.sparsity) if is_main() else None
        if png is not None:
            files[TRACE_PNG] = png
        return PruneResult(plan, report={"minimax": report}, files=files)

    def close(self) -> None:
        if self.hooks is not None:
            self.hooks.remove()
        if self.lora is not None:
            self.lora.remove()


# ----- helpers --------------------------------------------------------------------------------
def _head_mask(unit_mask: torch.Tensor, geom: Geometry, attn_unit: str) -> torch.Tensor:
    """Attention-unit mask -> per-query-head mask (a KV group covers its g query heads)."""
    if attn_unit == "group":
        return unit_mask.repeat_interleave(geom.group_size)
    return unit_mask


def _merge_check(ctx: PruneContext, plan: PrunePlan, tokens: torch.Tensor, student: torch.Tensor) -> float:
    """Max |logit| difference between the trained student (hooks + LoRA) and the model with the
    merged weights and the removed units zeroed (left so: surgery then slices them away)."""
    from llmprune.model.surgery import mask_structured

    with torch.no_grad():
        mask_structured(ctx.model, ctx.adapter, plan)
        out = ctx.model(tokens, use_cache=False).logits.float().cpu()
    return float((out - student).abs().max())


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
    ax.set_xlabel("step")
    ax.set_title("losses")
    ax.legend()
    ax.set_yscale("log")
    ax = axes[1]
    n_a = max(r["s_attn"] for r in trace) or 1
    n_f = max(r["s_mlp"] for r in trace) or 1
    ax.plot(steps, [r["s_attn"] / n_a for r in trace], label=f"attention width / {n_a:g}")
    ax.plot(steps, [r["s_mlp"] / n_f for r in trace], label=f"MLP width / {n_f:g}")
    ax.plot(steps, [r["params_fraction"] for r in trace], label="kept params")
    ax.plot(steps, [r["budget"] for r in trace], "--", label="budget")
    ax.set_xlabel("step")
    ax.set_title(f"widths (sparsity {sparsity:g})")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(steps, [r["violation"] for r in trace], label="resource violation")
    ax.plot(steps, [r["y_resource"] for r in trace], label="y_resource")
    ax.plot(steps, [r["y_layer_mlp"] for r in trace], label="mean y_layer (MLP)")
    ax.plot(steps, [r["y_layer_attn"] for r in trace], label="mean y_layer (attn)")
    ax.set_xlabel("step")
    ax.set_title("constraint and multipliers")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
