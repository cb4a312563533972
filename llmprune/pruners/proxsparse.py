"""``semi24 --method proxsparse``: learned 2:4 masks by proximal gradient (ProxSparse, methods.md §4).

The targeted weights (q,k,v,o,gate,up,down of every decoder layer whose input width is a multiple
of 4) are trained on the calibration text with the LM loss (plus an optional λ₂ anchor to the
original weights) by AdamW with linear warm-up and linear decay. After every optimiser step each
matrix goes through the proximal operator of ``λ·R`` (``llmprune.prox``), where R is the 2:4
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

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from llmprune import distributed
from llmprune.arch import LINEAR_KEYS
from llmprune.atomic import save_torch
from llmprune.capture import LayerwiseRunner
from llmprune.errors import NumericalError, ResumeError, UsageError
from llmprune.masks import nm_eligible, nm_mask
from llmprune.obs import damped_cholesky_inverse, sparsegpt_prune
from llmprune.plan import PrunePlan, geometry_dict
from llmprune.prox import prox_24, regulariser
from llmprune.pruners.base import PruneContext, Pruner, register
from llmprune.pruners.baselines import report_skipped_semi24
from llmprune.trace import batch_rows, pyplot, save_figure

CHECKPOINT = "proxsparse_state.pt"
TRACE_JSON = "proxsparse_trace.json"
TRACE_PNG = "proxsparse_trace.png"
ANCHOR_EPS = 1e-2  # ε of the λ₂ anchor, relative to rms(W₀)

GPU_HINT = ("7B+ on GPU: --nsamples 400 --seqlen 2048 --batch-size 1 --steps 400 --lr 1e-4 --lambda1 0.1 "
            "--dtype bfloat16, --layers-per-stage 4-8 when full-model AdamW (4x the model) does not fit")


class ProxSparseOptions(BaseModel):
    """The options of ``semi24 --method proxsparse``; each field is also a command-line flag."""

    model_config = ConfigDict(extra="forbid")

    lambda1: float = Field(0.1, ge=0, description="strength of the 2:4 regulariser, scale-free (each matrix uses "
                           "lambda1 / rms(W0)); not multiplied by the learning rate. Useful range 0.02-0.5.")
    lambda2: float = Field(0.0, ge=0, description="weight of the anchor to the original weights "
                           "(mean of ((W/W0)(W-W0))^2 / rms(W0)^2 per matrix); 0 disables.")
    steps: int = Field(24, ge=1, description="optimiser steps (per stage with --layers-per-stage), one batch of "
                       "--batch-size calibration sequences each. " + GPU_HINT + ".")
    lr: float = Field(2e-3, gt=0, description="AdamW peak learning rate (linear warm-up, then linear decay to 0); "
                      "2e-3 for a few dozen steps on small models, 1e-4 for long runs on 7B+.")
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of the steps spent warming the learning rate up.")
    layers_per_stage: int = Field(0, ge=0, description="train the masks of this many decoder layers at a time "
                                  "(others frozen; AdamW memory is 4x the stage instead of 4x the model); "
                                  "0 = all layers at once.")
    init_mask: Literal["none", "wanda", "sparsegpt"] = Field(
        "none", description="none | wanda | sparsegpt: start from the original weights "
        "with the entries outside that baseline's 2:4 mask multiplied by --init-shrink.")
    init_shrink: float = Field(0.5, ge=0, le=1, description="factor applied to the entries outside --init-mask's "
                               "mask.")
    metric: Literal["plain", "wanda"] = Field(
        "wanda", description="wanda | plain: run the prox (and pick the final mask) on "
        "|W| times the normalised input-activation norm (wanda, default) or on |W| (plain, as the paper).")
    refit: Literal["none", "obs"] = Field(
        "none", description="none | obs. none (ProxSparse): final weights are the original "
        "weights times the learned mask. obs (our extension): keep the learned mask and update the kept "
        "weights layer by layer by OBS as SparseGPT does (costs one Hessian pass).")
    prox_sweeps: int = Field(100, ge=1, description="maximum coordinate-descent sweeps of the proximal operator.")
    checkpoint_every: int = Field(10, ge=1, description="save a checkpoint for --resume every N steps.")


@register
class ProxSparsePruner(Pruner):
    strategy = "semi24"
    method = "proxsparse"
    summary = "ProxSparse: 2:4 masks learned end to end (LM loss, AdamW, 2:4 proximal operator)"
    needs_calibration = True
    resumable = True
    Options = ProxSparseOptions

    # ------------------------------------------------------------------------------------------
    def prune(self, ctx: PruneContext) -> PrunePlan:
        o, s = self.options, ctx.settings
        if ctx.calib is None:
            raise UsageError("proxsparse needs calibration text (--calib)")
        model, adapter, device = ctx.model, ctx.adapter, ctx.device
        geom = adapter.geometry(model)
        plan = PrunePlan(kind="semi24", strategy=self.strategy, method=self.method, dense=geometry_dict(geom))
        layers = adapter.layers(model)
        n_layers = len(layers)
        per_stage = o.layers_per_stage or n_layers
        stages = [list(range(i, min(i + per_stage, n_layers))) for i in range(0, n_layers, per_stage)]

        targets: dict[str, nn.Linear] = {}
        layer_of: dict[str, int] = {}
        skipped: list[str] = []
        for i, layer in enumerate(layers):
            for key, lin in adapter.linears(layer).items():
                name = adapter.linear_name(i, key)
                if nm_eligible(lin.in_features):
                    targets[name], layer_of[name] = lin, i
                else:
                    skipped.append(name)
        plan.semi24_targets = list(targets)
        # Original weights (fp32 master copies, on the CPU) and their per-matrix scale.
        w0 = {name: lin.weight.detach().float().cpu().clone() for name, lin in targets.items()}
        rms = {name: float(w.pow(2).mean().sqrt().clamp_min(1e-12)) for name, w in w0.items()}

        fingerprint = self._fingerprint(ctx)
        ckpt_path = Path(ctx.work_dir) / CHECKPOINT
        state = distributed.on_main(  # rank 0's checkpoint, on every rank
            lambda: torch.load(ckpt_path, map_location="cpu", weights_only=False)
            if s.resume and ckpt_path.exists() else None
        )
        if state is not None:
            if state.get("fingerprint") != fingerprint:
                raise ResumeError("--resume: the checkpoint was made with different settings or options; rerun without --resume")

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if state is not None:
            scales, init = state["scales"], state["init_masks"]
        else:
            scales, init = self._calibration_pass(ctx, targets, w0)
        timings["time_init_s"] = time.perf_counter() - t0

        masks: dict[str, torch.Tensor] = dict(state["masks"]) if state else {}
        trace: list[dict[str, Any]] = list(state["trace"]) if state else []
        start_stage = state["stage"] if state else 0
        start_step = state["step"] if state else 0
        if state is not None:
            ctx.progress.log(f"proxsparse: resuming at stage {start_stage + 1}/{len(stages)}, step {start_step} of {o.steps}")
        # Stages finished before an interruption: prune them again from the original weights.
        with torch.no_grad():
            for name, mask in masks.items():
                targets[name].weight.copy_((w0[name] * mask).to(targets[name].weight.dtype))

        grad_flags = [p.requires_grad for p in model.parameters()]
        was_training = model.training
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()  # no dropout: a step is a deterministic function of the weights and the batch
        task = ctx.progress.task("proxsparse", total=o.steps * len(stages))
        task.advance(start_stage * o.steps + start_step)
        t0 = time.perf_counter()
        try:
            for si in range(start_stage, len(stages)):
                names = [n for n in targets if layer_of[n] in stages[si]]
                # A checkpoint taken at a stage boundary holds no optimiser state: start the stage afresh.
                resume_state = state if (state is not None and si == start_stage and state["opt"] is not None) else None
                self._train_stage(ctx, si, len(stages), names, targets, w0, rms, scales, init, masks, trace,
                                  resume_state, fingerprint, ckpt_path, task)
        finally:
            for p, flag in zip(model.parameters(), grad_flags):
                p.requires_grad_(flag)
            model.train(was_training)
        timings["time_train_s"] = time.perf_counter() - t0
        timings["time_prox_s"] = sum(r.get("time_prox_s", 0.0) for r in trace)

        # Verify the pattern before handing the plan over.
        for name, mask in masks.items():
            per_group = mask.reshape(mask.shape[0], -1, 4).sum(-1)
            if not bool((per_group == 2).all()):
                raise NumericalError(f"proxsparse: mask of {name} is not exactly 2:4")
        plan.masks = {name: masks[name] for name in targets}
        if o.refit == "obs":
            t0 = time.perf_counter()
            self._refit_obs(ctx, targets, w0, masks)
            timings["time_refit_s"] = time.perf_counter() - t0
        report_skipped_semi24(ctx, skipped)
        changed = self._mask_changes(masks, w0, scales, init)
        ctx.extras.setdefault("report", {})["proxsparse"] = {
            "stages": len(stages), "layers_per_stage": per_stage, "steps_per_stage": o.steps,
            "final_share_24": trace[-1]["share24"] if trace else None,
            "final_loss": trace[-1]["loss"] if trace else None,
            "lambda_per_matrix": {n: o.lambda1 / self._metric_rms(n, w0, scales) for n in targets},
            **changed, **timings,
        }
        files = ctx.extras.setdefault("files", {})
        files[TRACE_JSON] = {"options": o.model_dump(mode="json"), "trace": trace}
        png = plot_trace(trace, Path(ctx.work_dir) / TRACE_PNG) if distributed.is_main() else None
        if png is not None:
            files[TRACE_PNG] = png
        return plan

    # ------------------------------------------------------------------------------------------
    def _train_stage(self, ctx, si, n_stages, names, targets, w0, rms, scales, init, masks, trace, state,
                     fingerprint, ckpt_path, task) -> None:
        o, s = self.options, ctx.settings
        model, device, calib = ctx.model, ctx.device, ctx.calib
        n_samples = calib.shape[0]
        bs = min(s.batch_size, n_samples)
        T = o.steps
        # Trainable fp32 masters. With a float32 model they ARE the weights; otherwise the model's
        # weights get a rounded copy before every forward and pass their gradient back.
        shared = all(targets[n].weight.dtype == torch.float32 for n in names)
        masters: dict[str, torch.Tensor] = {}
        for n in names:
            if state is not None:
                start_w = state["masters"][n]
            elif init is not None:
                start_w = w0[n] * (init[n] + (~init[n]) * o.init_shrink)
            else:
                start_w = w0[n]
            if shared:
                lin = targets[n]
                with torch.no_grad():
                    lin.weight.copy_(start_w.to(device))
                lin.weight.requires_grad_(True)
                masters[n] = lin.weight
            else:
                masters[n] = nn.Parameter(start_w.to(device).clone())
                targets[n].weight.requires_grad_(True)
        params = [masters[n] for n in names]
        opt = torch.optim.AdamW(params, lr=o.lr, betas=(0.9, 0.999), weight_decay=0.0)
        start = 0
        if state is not None:
            opt.load_state_dict(state["opt"])
            start = state["step"]
            torch.set_rng_state(state["rng"])
        lam = {n: o.lambda1 / self._metric_rms(n, w0, scales) for n in names}
        scale_dev = {n: scales[n].to(device) for n in names} if scales is not None else None
        w0_dev = {n: w0[n].to(device) for n in names} if o.lambda2 > 0 else None
        total_groups = sum(masters[n].numel() // 4 for n in names)
        # Under torchrun: DistributedDataParallel over the weights the forward pass uses (the fp32
        # masters themselves, or the model's low-precision copies whose averaged gradient is then
        # handed to the masters); each rank runs its shard of every step's batch.
        forward = distributed.data_parallel([targets[n].weight for n in names],
                                            lambda t: model(t, use_cache=False).logits)

        for step in range(start, T):
            rows = batch_rows(si * T + step, n_samples, bs, s.seed)
            n_rows = rows.numel()
            lo, hi = distributed.shard_range(n_rows)  # all rows without a process group
            rows = rows[lo:hi]
            tokens = calib[rows].to(device)
            if not shared:
                with torch.no_grad():
                    for n in names:
                        targets[n].weight.copy_(masters[n].to(targets[n].weight.dtype))
            logits = forward(tokens)
            lm = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
            lm_value = float(lm.detach())
            if distributed.is_enabled():  # the batch mean over all ranks' rows (logged, checked)
                lm_value = distributed.all_reduce_floats([lm_value * rows.numel()])[0] / n_rows
                lm = lm * distributed.loss_weight(rows.numel(), n_rows)
            loss = lm
            anchor = torch.zeros((), device=device)
            if o.lambda2 > 0:
                for n in names:
                    ref = w0_dev[n]
                    denom = ref + ANCHOR_EPS * rms[n] * torch.where(ref >= 0, 1.0, -1.0)
                    anchor = anchor + (((masters[n] / denom) * (masters[n] - ref)) ** 2).mean() / rms[n] ** 2
                anchor = anchor / len(names)
                loss = loss + o.lambda2 * anchor
            if not (math.isfinite(lm_value) and torch.isfinite(anchor)):
                raise NumericalError(f"proxsparse: loss is not finite at step {step} (lower --lr, or use --dtype float32)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not shared:
                for n in names:
                    masters[n].grad = targets[n].weight.grad.float()
                    targets[n].weight.grad = None
            for group in opt.param_groups:
                group["lr"] = o.lr * lr_factor(step, T, o.warmup)
            opt.step()
            reg_sum, nz_groups = 0.0, 0
            t_prox = time.perf_counter()
            with torch.no_grad():
                for n in names:
                    w = masters[n]
                    if scale_dev is not None:
                        new = prox_24(w * scale_dev[n], lam[n], o.prox_sweeps) / scale_dev[n]
                    else:
                        new = prox_24(w, lam[n], o.prox_sweeps)
                    w.copy_(new)
                    metric_w = w * scale_dev[n] if scale_dev is not None else w
                    reg_sum += float(regulariser(metric_w / self._metric_rms(n, w0, scales)).sum())
                    nz_groups += int(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).sum())
            rec = {"stage": si + 1, "step": step + 1, "loss": lm_value, "anchor": float(anchor.detach()),
                   "reg": reg_sum / total_groups, "share24": nz_groups / total_groups,
                   "lr": o.lr * lr_factor(step, T, o.warmup), "time_prox_s": time.perf_counter() - t_prox}
            trace.append(rec)
            task.advance()
            task.info(stage=f"{si + 1}/{n_stages}", loss=rec["loss"], reg=rec["reg"], share24=f"{rec['share24']:.1%}")
            if (step + 1) % o.checkpoint_every == 0 and step + 1 < T and distributed.is_main():
                self._checkpoint(ckpt_path, fingerprint, si, step + 1, masters, opt, masks, trace, scales, init)
            _after_step(si * T + step + 1)

        # Final masks of the stage: top-2 |W_learned| (in the chosen metric), applied to W₀.
        with torch.no_grad():
            for n in names:
                w = masters[n].detach().float().cpu()
                score = (w * scales[n]).abs() if scales is not None else w.abs()
                masks[n] = nm_mask(score)
                targets[n].weight.requires_grad_(False)
                targets[n].weight.copy_((w0[n] * masks[n]).to(device=targets[n].weight.device,
                                                               dtype=targets[n].weight.dtype))
        del opt, masters, forward
        if si + 1 < n_stages and distributed.is_main():
            self._checkpoint(ckpt_path, fingerprint, si + 1, 0, {}, None, masks, trace, scales, init)

    # ------------------------------------------------------------------------------------------
    def _metric_rms(self, name: str, w0: dict[str, torch.Tensor], scales: dict[str, torch.Tensor] | None) -> float:
        w = w0[name] * scales[name] if scales is not None else w0[name]
        return float(w.pow(2).mean().sqrt().clamp_min(1e-12))

    def _calibration_pass(self, ctx: PruneContext, targets, w0):
        """Activation scales (``--metric wanda``) and/or the baseline's mask (``--init-mask``)."""
        o, s = self.options, ctx.settings
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
                    new = sparsegpt_prune(lin.weight, stats[key].hessian, n=2, m=4, name=name)
                    init[name] = nm_mask(new.detach().float().abs().cpu())
                    lin.weight.copy_(new.to(lin.weight.dtype))  # sequential, as the baseline

        task = ctx.progress.task(f"proxsparse {o.init_mask if o.init_mask != 'none' else 'activation'} statistics",
                                 total=len(ctx.adapter.layers(ctx.model)))
        runner = LayerwiseRunner(ctx.model, ctx.adapter, ctx.calib, ctx.device, s.batch_size)
        runner.run(process, progress=task)
        with torch.no_grad():  # undo the baseline's in-place pruning
            for name, lin in targets.items():
                lin.weight.copy_(w0[name].to(lin.weight.dtype))
        return (scales if o.metric == "wanda" else None), (init or None)

    def _refit_obs(self, ctx: PruneContext, targets, w0, masks) -> None:
        """Layer by layer (on the inputs of the already refitted layers before), rebuild each weight
        from its original values by OBS with the learned mask fixed: SparseGPT's update, our mask."""

        @torch.no_grad()
        def process(i: int, layer: nn.Module) -> None:
            stats = runner.collect(i, layer, LINEAR_KEYS, hessian=True)
            for key, lin in ctx.adapter.linears(layer).items():
                name = ctx.adapter.linear_name(i, key)
                if name in targets:
                    new = obs_with_mask(w0[name], stats[key].hessian, masks[name], name=name)
                    lin.weight.copy_(new.to(device=lin.weight.device, dtype=lin.weight.dtype))

        task = ctx.progress.task("proxsparse OBS refit", total=len(ctx.adapter.layers(ctx.model)))
        runner = LayerwiseRunner(ctx.model, ctx.adapter, ctx.calib, ctx.device, ctx.settings.batch_size)
        runner.run(process, progress=task)

    def _mask_changes(self, masks, w0, scales, init) -> dict[str, float]:
        """How far the learned masks are from magnitude, Wanda-like and init masks (share of groups)."""
        total = sum(m.numel() for m in masks.values())
        out = {}
        diff = sum(int((m != nm_mask(w0[n].abs())).sum()) for n, m in masks.items())
        out["share_weights_differing_from_magnitude_mask"] = diff / total
        if init is not None:
            diff = sum(int((m != init[n]).sum()) for n, m in masks.items())
            out["share_weights_differing_from_init_mask"] = diff / total
        return out

    def _fingerprint(self, ctx: PruneContext) -> str:
        s = ctx.settings
        keys = {k: v for k, v in s.model_dump(mode="json").items() if k not in ("resume", "overwrite", "output", "device")}
        keys["options"] = self.options.model_dump(mode="json")
        blob = json.dumps(keys, sort_keys=True, default=str) + str(tuple(ctx.calib.shape)) + str(int(ctx.calib.sum()))
        return hashlib.sha256(blob.encode()).hexdigest()

    @staticmethod
    def _checkpoint(path, fingerprint, stage, step, masters, opt, masks, trace, scales, init) -> None:
        state = {
            "fingerprint": fingerprint, "stage": stage, "step": step,
            "masters": {n: w.detach().float().cpu().clone() for n, w in masters.items()},
            "opt": opt.state_dict() if opt is not None else None,
            "masks": {n: m.clone() for n, m in masks.items()}, "trace": list(trace),
            "scales": scales, "init_masks": init, "rng": torch.get_rng_state(),
        }
        save_torch(state, path)


# ----- helpers --------------------------------------------------------------------------------
def _after_step(step: int) -> None:
    """Called after every completed step (global count); tests replace it to inject an interruption."""
    from llmprune.pruners.base import step_delay_for_tests

    step_delay_for_tests()


def obs_with_mask(weight: torch.Tensor, hessian: torch.Tensor, mask: torch.Tensor, blocksize: int = 128,
                  percdamp: float = 0.01, name: str = "") -> torch.Tensor:
    """SparseGPT's OBS update (column blocks, damping ``percdamp``·mean diag H) with a given mask:
    pruned weights are set to 0 and their error is spread over the not-yet-processed columns."""
    W = weight.detach().float().clone()
    H = hessian.detach().float()
    cols = W.shape[1]
    W[:, torch.diag(H) == 0] = 0
    Hinv = damped_cholesky_inverse(H, percdamp, name)
    drop = ~mask.to(W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            q = torch.where(drop[:, i1 + i], torch.zeros_like(w), w)
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if not torch.isfinite(W).all():
        raise NumericalError(f"OBS refit produced non-finite weights for {name or 'a module'}")
    return W * mask.to(W.device)


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over ``warmup·total`` steps, then linear decay to 0 at ``total``."""
    w = int(round(warmup * total))
    if step < w:
        return (step + 1) / w
    return max(0.0, (total - step) / max(1, total - w))


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
    axes[0].set_title("loss"); axes[0].legend()
    axes[1].plot(x, [r["reg"] for r in trace])
    axes[1].set_title("regulariser R(W / rms W0) in the prox metric, mean per group"); axes[1].set_yscale("symlog", linthresh=1e-3)
    axes[2].plot(x, [r["share24"] for r in trace])
    axes[2].set_ylim(0, 1.02); axes[2].set_title("share of groups already 2:4")
    stages = sorted({r["stage"] for r in trace})
    for ax in axes:
        ax.set_xlabel("step" + (" (all stages)" if len(stages) > 1 else ""))
        for st in stages[1:]:
            first = next(k for k, r in enumerate(trace, start=1) if r["stage"] == st)
            ax.axvline(first, color="grey", lw=0.5, ls="--")
    return save_figure(fig, path)
