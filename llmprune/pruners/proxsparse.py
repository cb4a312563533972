"""``semi24 --method proxsparse``: learned 2:4 masks by proximal gradient (ProxSparse, methods.md §4).

The targeted weights (q,k,v,o,gate,up,down of every decoder layer whose input width is a multiple
of 4) are trained on the calibration text with the LM loss (plus an optional λ₂ anchor to the
original weights) by AdamW with linear warm-up and linear decay. After every optimiser step each
matrix goes through the proximal operator of ``λ·R`` (``llmprune.core.prox``), where R is the 2:4
regulariser of every group of 4 consecutive inputs. λ is *not* multiplied by the learning rate.

Scale-free λ₁: R is cubic in the weight scale, so scaling a matrix by ``c`` leaves its prox problem
unchanged only if λ scales by ``1/c``. We therefore use ``λ = λ₁ / rms(W₀)`` for each matrix, with
``W₀`` the matrix before training; one ``--lambda1`` then means the same thing for every matrix of
every model, whatever its scale or dtype.

``--metric wanda`` (optional) runs the prox on the activation-scaled weights ``W·diag(s)``,
``s_j = ‖X_j‖ / rms(‖X‖)`` from the dense calibration activations (a variable-metric proximal
step), so the regulariser ranks weights by Wanda's ``|w|·‖X‖`` instead of ``|w|``; the final mask
is then the top 2 of ``|W_learned|·s``. ``--init-mask wanda|sparsegpt`` starts training from the
original weights with the entries outside that baseline's 2:4 mask multiplied by
``--init-shrink``.

Final mask: the two largest ``|W_learned|`` (times ``s`` with ``--metric wanda``) of every group,
applied to the ORIGINAL weights. ``--layers-per-stage k`` trains k layers at a time (the others
frozen, AdamW state only for the stage); a finished stage is pruned to its final 2:4 weights before
the next stage starts, so later stages train on top of the pruned earlier layers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmprune.core.distill import lm_loss
from llmprune.core.masks import nm_eligible, nm_mask
from llmprune.core.memory_model import Request, Resources, learned_resources, stage_hours
from llmprune.core.obs import obs_prune, sparsegpt_prune
from llmprune.core.prox import prox_24, regulariser
from llmprune.errors import NumericalError, UsageError
from llmprune.model.arch import LINEAR_KEYS
from llmprune.model.originals import OriginalWeights
from llmprune.model.plan import PrunePlan, geometry_dict
from llmprune.pruners.base import PruneContext, Pruner, PruneResult, skipped_semi24
from llmprune.pruners.proxsparse_options import ProxSparseMethod, ProxSparseOptions
from llmprune.runtime import distributed
from llmprune.runtime.memory import GIB, memory_budget
from llmprune.train.cadence import checkpoints_per_stage
from llmprune.train.loop import Batch, LearnedMethod, Losses, LRSchedule, Training, is_main
from llmprune.train.trace import pyplot, save_figure

TRACE_JSON = "proxsparse_trace.json"
CALIBRATION = "proxsparse_calibration.pt"  # activation scales and init masks, computed once
TRACE_PNG = "proxsparse_trace.png"
ANCHOR_EPS = 1e-2  # ε of the λ₂ anchor, relative to rms(W₀)


class ProxSparsePruner(Pruner, ProxSparseMethod):
    options: ProxSparseOptions
    #: What ``--layers-per-stage auto`` chose (for the report); None otherwise.
    auto_staging: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------
    def prune(self, ctx: PruneContext) -> PruneResult:
        o = self.options
        if ctx.calib is None:
            raise UsageError("proxsparse needs calibration text (--calib)")
        training = Training(ctx, self.method, o, o.checkpoint_every)
        checkpoint = training.load_checkpoint()
        targets: dict[str, nn.Linear] = {}
        layer_of: dict[str, int] = {}
        skipped: list[str] = []
        for i, layer in enumerate(ctx.adapter.layers(ctx.model)):
            for key, lin in ctx.adapter.linears(layer).items():
                name = ctx.adapter.linear_name(i, key)
                if nm_eligible(lin.in_features):
                    targets[name], layer_of[name] = lin, i
                else:
                    skipped.append(name)
        # Original weights, memory-mapped from the input checkpoint (float32 one at a time on access).
        w0 = OriginalWeights(ctx.settings.model, targets)
        n_layers = len(ctx.adapter.layers(ctx.model))
        # A resumed run keeps the staging it started with (auto may pick another with other free memory).
        per_stage = checkpoint.method["layers_per_stage"] if checkpoint else self._layers_per_stage(ctx, n_layers)
        t0 = time.perf_counter()
        scales, init = None, None
        if o.metric == "wanda" or o.init_mask != "none":  # computed once, reused by --resume
            scales, init = training.cached(CALIBRATION, lambda: self._calibration_pass(ctx, targets, w0))
        masks: dict[str, torch.Tensor] = {}
        for finished in training.stage_results():  # the stages the checkpoint has finished
            masks.update(finished)
        method = ProxSparseTraining(self, ctx, targets, layer_of, w0, scales, init, skipped, masks, per_stage)
        method.timings["time_init_s"] = time.perf_counter() - t0
        return training.run(method)

    def _layers_per_stage(self, ctx: PruneContext, n_layers: int) -> int:
        """``--layers-per-stage``, with ``auto`` resolved by the memory model (:meth:`resources`)
        against the budget on rank 0, so every rank stages alike; logged when it stages at all."""
        value = self.options.layers_per_stage
        if value != "auto":
            return int(value) or n_layers

        def choose() -> tuple[int, float, int]:
            # the estimate counts the model's weights, which are already loaded: add them back
            loaded = sum(
                p.numel() * p.element_size() for p in ctx.model.parameters() if p.device.type == ctx.device.type
            )
            budget = memory_budget(ctx.settings, in_use=loaded)
            q = Request.of(ctx.settings, ctx.model.config, distributed.world_size(), ctx.stream is not None, budget)
            k = self.stage_layers(q)
            return k, self.resources_at(q, k).peak_device(q) / GIB, budget

        k, peak, budget = distributed.on_main(choose)
        room = f"{budget / GIB:.1f} GiB"
        if k < n_layers:  # staging changes the run: say so (all layers, the usual case, is in the report only)
            ctx.progress.log(
                f"proxsparse: --layers-per-stage auto: {k} of {n_layers} layers per stage "
                f"(predicted peak {peak:.2f} GiB of {room})"
            )
        self.auto_staging = {
            "layers_per_stage": k,
            "predicted_peak_gib": peak,
            "budget_gib": budget / GIB,
        }
        return k

    # ----- the memory model ------------------------------------------------------------------
    @classmethod
    def resources(cls, request: Request) -> Resources:
        return cls.resources_at(request, cls.stage_layers(request))

    @classmethod
    def stage_layers(cls, request: Request) -> int:
        """Layers per stage: the given number (0: all layers), or for ``auto`` the largest number
        whose predicted device peak fits the request's budget (all layers when there is no budget
        to plan for, one when not even one layer fits)."""
        n_layers = request.shape.layers
        value = str(ProxSparseOptions.model_validate(request.options).layers_per_stage)
        if value != "auto":
            return int(value) or n_layers
        if request.budget is None:
            return n_layers
        for k in range(n_layers, 0, -1):  # the peak grows with k: the first that fits is the largest
            if cls.resources_at(request, k).peak_device(request) <= request.budget:
                return k
        return 1

    @classmethod
    def resources_at(cls, request: Request, per_stage: int) -> Resources:
        """The shared training terms over every stage, plus a stage's trainable state (float32
        master = the weight, gradient, two Adam moments, the λ₂ anchor, a run-dtype gradient below
        float32), the finished stages' masks (one byte a weight) and their checkpoints."""
        q, o = request, ProxSparseOptions.model_validate(request.options)
        shape = q.shape
        n_stages = math.ceil(shape.layers / per_stage)
        res, _, step_flops = learned_resources(q, o.steps * n_stages, kl=False)
        res.shown["layers_per_stage"] = per_stage
        per_param = 4 + 8 + (4 if o.lambda2 > 0 else 0) + (4 + q.b if q.b < 4 else 4)
        res.terms["learned state"] = per_stage * shape.layer_linear * per_param
        if q.stream:  # the stage's layers stay on the device while they train
            res.terms["resident stage layers"] = per_stage * q.layer_bytes
        per_ckpt = per_stage * shape.layer_linear * 12  # the stage's fp32 masters + two Adam moments
        masks = shape.layers * shape.layer_linear  # finished stages' masks, one byte a weight, once
        res.host += per_ckpt + masks  # one checkpoint being serialised; finished stages' masks
        if q.device == "cpu":  # the masks wait in host memory, which is the device's here
            res.terms["finished stages' masks"] = masks
        res.disk += per_ckpt + masks
        every = checkpoints_per_stage(str(o.checkpoint_every), o.steps, stage_hours(q, o.steps, step_flops))
        res.writes = n_stages * every * per_ckpt + masks
        return res

    def _calibration_pass(self, ctx: PruneContext, targets, w0):
        """Activation scales (``--metric wanda``) and/or the baseline's mask (``--init-mask``)."""
        o = self.options
        if o.metric == "plain" and o.init_mask == "none":
            return None, None
        scales: dict[str, torch.Tensor] = {}
        init: dict[str, torch.Tensor] = {}
        want_hessian = o.init_mask == "sparsegpt"

        @torch.no_grad()
        def process(i: int, layer: nn.Module) -> None:
            stats = runner.collect(i, layer, LINEAR_KEYS, hessian=want_hessian)
            for key, lin in ctx.adapter.linears(layer).items():
                name = ctx.adapter.linear_name(i, key)
                if name not in targets:
                    continue
                norm = stats[key].col_norm.float().cpu()
                scales[name] = norm / norm.pow(2).mean().sqrt().clamp_min(1e-12)
                if o.init_mask == "wanda":
                    init[name] = nm_mask(w0[name].abs() * norm[None, :])
                elif o.init_mask == "sparsegpt":
                    hessian = stats[key].hessian
                    assert hessian is not None  # collected with hessian=True
                    new = sparsegpt_prune(lin.weight, hessian, n=2, m=4, name=name)
                    init[name] = nm_mask(new.detach().float().abs().cpu())
                    lin.weight.copy_(new.to(lin.weight.dtype))  # sequential, as the baseline

        task = ctx.progress.task(
            f"proxsparse {o.init_mask if o.init_mask != 'none' else 'activation'} statistics",
            total=len(ctx.adapter.layers(ctx.model)),
        )
        runner = ctx.layerwise_runner()
        runner.run(process, progress=task)
        with torch.no_grad():  # undo the baseline's in-place pruning
            for name, lin in targets.items():
                lin.weight.copy_(w0[name].to(lin.weight.dtype))
        return (scales if o.metric == "wanda" else None), (init or None)


class ProxSparseTraining(LearnedMethod):
    """ProxSparse as hooks of the shared training loop: AdamW on the LM loss (+ λ₂ anchor), then
    the 2:4 proximal operator after every step; a stage's masks are fixed at its end."""

    name = "proxsparse"
    hint = "lower --lr, or use --dtype float32"

    def __init__(
        self,
        pruner: ProxSparsePruner,
        ctx: PruneContext,
        targets: dict[str, nn.Linear],
        layer_of: dict[str, int],
        w0: Mapping[str, torch.Tensor],
        scales: dict[str, torch.Tensor] | None,
        init: dict[str, torch.Tensor] | None,
        skipped: list[str],
        masks: dict[str, torch.Tensor],
        per_stage: int,
    ) -> None:
        o = pruner.options
        self.o, self.ctx, self.strategy, self.method = o, ctx, pruner.strategy, pruner.method
        self.targets, self.layer_of, self.w0, self.scales, self.init, self.skipped = (
            targets,
            layer_of,
            w0,
            scales,
            init,
            skipped,
        )
        n_layers = len(ctx.adapter.layers(ctx.model))
        self.per_stage = per_stage
        self.auto_staging = getattr(pruner, "auto_staging", None)
        self.stages = [list(range(i, min(i + per_stage, n_layers))) for i in range(0, n_layers, per_stage)]
        self.n_stages, self.steps_per_stage = len(self.stages), o.steps
        # Scale-free λ: R is cubic in the weights, so each matrix's λ₁ is divided by its rms (in the metric).
        self.rms = {name: float(w.pow(2).mean().sqrt().clamp_min(1e-12)) for name, w in w0.items()}
        self.lam = {n: o.lambda1 / self._metric_rms(n) for n in targets}
        self.schedule = LRSchedule(warmup=o.warmup, decay="linear")
        self.masks = dict(masks)
        self.masters: dict[str, torch.Tensor] = {}
        self.opt: torch.optim.Optimizer | None = None
        self.timings: dict[str, float] = {}
        # Stages finished before an interruption: prune them again from the original weights.
        with torch.no_grad():
            for name, mask in self.masks.items():
                targets[name].weight.copy_((w0[name] * mask).to(targets[name].weight.dtype))
        self.t_train = time.perf_counter()

    def _metric_rms(self, name: str) -> float:
        w = self.w0[name] * self.scales[name] if self.scales is not None else self.w0[name]
        return float(w.pow(2).mean().sqrt().clamp_min(1e-12))

    # ----- hooks of the training loop ----------------------------------------------------------
    def begin_stage(self, stage: int, resume: dict[str, Any] | None) -> list[torch.Tensor]:
        o, device, targets, w0, init = self.o, self.ctx.device, self.targets, self.w0, self.init
        self.names = names = [n for n in targets if self.layer_of[n] in self.stages[stage]]
        if self.ctx.stream is not None:  # the stage's weights train: its layers stay on the device
            self.ctx.stream.keep(self.stages[stage])
        # Trainable fp32 masters. With a float32 model they ARE the weights; otherwise the model's
        # weights get a rounded copy before every forward and pass their gradient back.
        self.shared = all(targets[n].weight.dtype == torch.float32 for n in names)
        self.masters = {}
        for n in names:
            if resume is not None:
                start_w = resume["masters"][n]
            elif init is not None:
                start_w = w0[n] * (init[n] + (~init[n]) * o.init_shrink)
            else:
                start_w = w0[n]
            if self.shared:
                lin = targets[n]
                with torch.no_grad():
                    lin.weight.copy_(start_w.to(device))
                lin.weight.requires_grad_(True)
                self.masters[n] = lin.weight
            else:
                self.masters[n] = nn.Parameter(start_w.to(device).clone())
                targets[n].weight.requires_grad_(True)
        self.opt = torch.optim.AdamW([self.masters[n] for n in names], lr=o.lr, betas=(0.9, 0.999), weight_decay=0.0)
        if resume is not None:
            self.opt.load_state_dict(resume["opt"])
        self.scale_dev = {n: self.scales[n].to(device) for n in names} if self.scales is not None else None
        self.w0_dev = {n: w0[n].to(device) for n in names} if o.lambda2 > 0 else None
        self.total_groups = sum(self.masters[n].numel() // 4 for n in names)
        # Under torchrun the loop wraps the weights the forward pass uses in DDP (the fp32 masters
        # themselves, or the model's low-precision copies whose gradient is handed to the masters).
        return [targets[n].weight for n in names]

    def step(self, batch: Batch, forward) -> Losses:
        o, names, masters, targets = self.o, self.names, self.masters, self.targets
        assert self.opt is not None  # begin_stage created it
        self.opt.zero_grad(set_to_none=True)
        if not self.shared:
            with torch.no_grad():
                for n in names:
                    targets[n].weight.copy_(masters[n].to(targets[n].weight.dtype))
        logits = forward(batch.tokens)
        lm = lm_loss(logits, batch.tokens)
        anchor = torch.zeros((), device=self.ctx.device)
        extra = None
        if o.lambda2 > 0:
            assert self.w0_dev is not None  # begin_stage set it when lambda2 > 0
            for n in names:
                ref, rms = self.w0_dev[n], self.rms[n]
                denom = ref + ANCHOR_EPS * rms * torch.where(ref >= 0, 1.0, -1.0)
                anchor = anchor + (((masters[n] / denom) * (masters[n] - ref)) ** 2).mean() / rms**2
            anchor = anchor / len(names)
            extra = o.lambda2 * anchor
        self.anchor = anchor
        return Losses(data=lm, logged={"loss": lm}, extra=extra)

    def update(self, batch: Batch, means: dict[str, float]) -> dict[str, Any]:
        o, names, masters, targets, scale_dev = self.o, self.names, self.masters, self.targets, self.scale_dev
        if not self.shared:
            for n in names:
                grad = targets[n].weight.grad
                assert grad is not None  # backward ran through the model's weights
                masters[n].grad = grad.float()
                targets[n].weight.grad = None
        assert self.opt is not None  # begin_stage created it
        lr = self.schedule.apply(self.opt, o.lr, batch.step, o.steps)
        self.opt.step()
        reg_sum, nz_groups = 0.0, 0
        t_prox = time.perf_counter()
        with torch.no_grad():
            for n in names:
                w = masters[n]
                if scale_dev is not None:
                    new = prox_24(w * scale_dev[n], self.lam[n], o.prox_sweeps) / scale_dev[n]
                else:
                    new = prox_24(w, self.lam[n], o.prox_sweeps)
                w.copy_(new)
                metric_w = w * scale_dev[n] if scale_dev is not None else w
                reg_sum += float(regulariser(metric_w / self._metric_rms(n)).sum())
                nz_groups += int(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).sum())
        return {
            "stage": batch.stage + 1,
            "step": batch.step + 1,
            "loss": means["loss"],
            "anchor": float(self.anchor.detach()),
            "reg": reg_sum / self.total_groups,
            "share24": nz_groups / self.total_groups,
            "lr": lr,
            "time_prox_s": time.perf_counter() - t_prox,
        }

    def progress_info(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "stage": f"{record['stage']}/{self.n_stages}",
            "loss": record["loss"],
            "reg": record["reg"],
            "share24": f"{record['share24']:.1%}",
        }

    def end_stage(self, stage: int) -> None:
        """Final masks of the stage: top-2 |W_learned| (in the chosen metric), applied to W₀."""
        with torch.no_grad():
            for n in self.names:
                w = self.masters[n].detach().float().cpu()
                score = (w * self.scales[n]).abs() if self.scales is not None else w.abs()
                self.masks[n] = nm_mask(score)
                lin = self.targets[n]
                lin.weight.requires_grad_(False)
                lin.weight.grad = None  # a float32 weight is its own master: else its last gradient stays
                lin.weight.copy_((self.w0[n] * self.masks[n]).to(device=lin.weight.device, dtype=lin.weight.dtype))
        if self.ctx.stream is not None:
            self.ctx.stream.release(self.stages[stage])
        self.opt, self.masters = None, {}

    def stage_result(self, stage: int) -> dict[str, torch.Tensor]:
        """The finished stage's masks (stored once; the original weights times them are its weights)."""
        return {n: self.masks[n] for n in self.names}

    def state_dict(self) -> dict[str, Any]:
        """The current stage's fp32 masters and AdamW moments (empty at a stage boundary) and the
        staging; finished stages' masks are in their stage files, scales and init masks in
        ``proxsparse_calibration.pt``, the original weights in the input checkpoint."""
        return {
            "masters": {n: w.detach().float().cpu().clone() for n, w in self.masters.items()},
            "opt": self.opt.state_dict() if self.opt is not None else None,
            "layers_per_stage": self.per_stage,
        }

    def finish(self, trace: list[dict[str, Any]]) -> PruneResult:
        o, ctx, masks, targets = self.o, self.ctx, self.masks, self.targets
        self.timings["time_train_s"] = time.perf_counter() - self.t_train
        self.timings["time_prox_s"] = sum(r.get("time_prox_s", 0.0) for r in trace)
        # Verify the pattern before handing the plan over.
        for name, mask in masks.items():
            per_group = mask.reshape(mask.shape[0], -1, 4).sum(-1)
            if not bool((per_group == 2).all()):
                raise NumericalError(f"proxsparse: mask of {name} is not exactly 2:4")
        geom = ctx.adapter.geometry(ctx.model)
        plan = PrunePlan(kind="semi24", strategy=self.strategy, method=self.method, dense=geometry_dict(geom))
        plan.semi24_targets = list(targets)
        plan.masks = {name: masks[name] for name in targets}
        if o.refit == "obs":
            t0 = time.perf_counter()
            self._refit_obs()
            self.timings["time_refit_s"] = time.perf_counter() - t0
        report = {
            **skipped_semi24(ctx, self.skipped),
            "proxsparse": {
                "stages": self.n_stages,
                "layers_per_stage": self.per_stage,
                **({"layers_per_stage_auto": self.auto_staging} if self.auto_staging else {}),
                "steps_per_stage": o.steps,
                "final_share_24": trace[-1]["share24"] if trace else None,
                "final_loss": trace[-1]["loss"] if trace else None,
                "lambda_per_matrix": dict(self.lam),
                **self._mask_changes(),
                **self.timings,
            },
        }
        files: dict[str, Any] = {TRACE_JSON: {"options": o.model_dump(mode="json"), "trace": trace}}
        png = plot_trace(trace, Path(ctx.work_dir) / TRACE_PNG) if is_main() else None
        if png is not None:
            files[TRACE_PNG] = png
        return PruneResult(plan, report=report, files=files)

    def _refit_obs(self) -> None:
        """Layer by layer (on the inputs of the already refitted layers before), rebuild each weight
        from its original values by OBS with the learned mask fixed: SparseGPT's update, our mask."""
        ctx = self.ctx

        @torch.no_grad()
        def process(i: int, layer: nn.Module) -> None:
            stats = runner.collect(i, layer, LINEAR_KEYS, hessian=True)
            for key, lin in ctx.adapter.linears(layer).items():
                name = ctx.adapter.linear_name(i, key)
                if name in self.targets:
                    hessian = stats[key].hessian
                    assert hessian is not None  # collected with hessian=True
                    new = obs_prune(self.w0[name], hessian, mask=self.masks[name], name=name)
                    lin.weight.copy_(new.to(device=lin.weight.device, dtype=lin.weight.dtype))

        task = ctx.progress.task("proxsparse OBS refit", total=len(ctx.adapter.layers(ctx.model)))
        runner = ctx.layerwise_runner()
        runner.run(process, progress=task)

    def _mask_changes(self) -> dict[str, float]:
        """How far the learned masks are from magnitude, Wanda-like and init masks (share of groups)."""
        masks, w0, init = self.masks, self.w0, self.init
        total = sum(m.numel() for m in masks.values())
        out = {}
        diff = sum(int((m != nm_mask(w0[n].abs())).sum()) for n, m in masks.items())
        out["share_weights_differing_from_magnitude_mask"] = diff / total
        if init is not None:
            diff = sum(int((m != init[n]).sum()) for n, m in masks.items())
            out["share_weights_differing_from_init_mask"] = diff / total
        return out


def plot_trace(trace: list[dict[str, Any]], path: Path) -> Path | None:
    """PNG of the LM loss, the regulariser and the share of 2:4 groups per step (None without matplotlib)."""
    plt = pyplot()
    if not trace or plt is None:
        return None
    x = list(range(1, len(trace) + 1))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(x, [r["loss"] for r in trace], label="LM loss")
    if any(r["anchor"] for r in trace):
        axes[0].plot(x, [r["anchor"] for r in trace], label="anchor")
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].plot(x, [r["reg"] for r in trace])
    axes[1].set_title("regulariser R(W / rms W0) in the prox metric, mean per group")
    axes[1].set_yscale("symlog", linthresh=1e-3)
    axes[2].plot(x, [r["share24"] for r in trace])
    axes[2].set_ylim(0, 1.02)
    axes[2].set_title("share of groups already 2:4")
    stages = sorted({r["stage"] for r in trace})
    for ax in axes:
        ax.set_xlabel("step" + (" (all stages)" if len(stages) > 1 else ""))
        for st in stages[1:]:
            first = next(k for k, r in enumerate(trace, start=1) if r["stage"] == st)
            ax.axvline(first, color="grey", lw=0.5, ls="--")
    return save_figure(fig, path)
