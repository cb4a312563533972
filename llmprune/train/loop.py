"""The resumable, distributed training loop under the learned methods (minimax, proxsparse).

A learned method writes only its math, as the hooks of :class:`LearnedMethod`; :class:`Training`
owns everything around it, identically for every method:

* the settings fingerprint of the run, carried by every checkpoint and cached artefact in the
  work folder (``--resume`` refuses any of them made with other settings);
* rank 0's checkpoint, written atomically in place every ``--checkpoint-every`` steps or minutes
  (:mod:`llmprune.train.cadence`) and at stage boundaries, read back on every rank. It is lean: only what
  cannot be recomputed (the current stage's trainable state and optimiser moments, RNG, stage and
  step, the trace). What a finished stage produced (``LearnedMethod.stage_result``, e.g.
  ProxSparse's masks) is written once, to its own file, when the stage ends;
* stages as an outer index (``--layers-per-stage``) and steps within a stage;
* the seeded batch of every step (a pure function of the global step and the seed, so a resumed
  run replays the batches an uninterrupted one sees) and each rank's shard of it;
* DistributedDataParallel over the method's trainable tensors, the loss weighting that makes its
  average the gradient of the global mean, batch means over all ranks, the finite-loss check;
* the trace (one record per step), the progress bar, and the one test seam (:func:`step_callback`).

LR schedules (:class:`LRSchedule`) live here too: every learned method warms up linearly and decays.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel
from torch import nn

from llmprune.core.memory_model import checkpointing_on, shape_of_model
from llmprune.errors import NumericalError, ResumeError
from llmprune.model.layer_forward import wrapped_forwards
from llmprune.runtime import distributed, memory
from llmprune.runtime.atomic import save_torch
from llmprune.train.cadence import Cadence, parse_every
from llmprune.train.trace import batch_rows

#: Settings that do not change what a run computes: a resumed run may differ in them.
RUN_CONTROL = frozenset(
    {
        "resume",
        "overwrite",
        "output",
        "device",
        "offload_dir",
        "max_shard_size",
        "save_dtype",
        "method_options",
        "recover",
        "grad_checkpoint",  # recomputes the same arithmetic: gradients are unchanged
        "stream_weights",  # where the weights wait between layers, not what is computed
        "checkpoint_every",  # when to save, not what is computed: resume may use another cadence
        "gpu_memory",  # the budget --layers-per-stage auto plans for; the checkpoint keeps its choice
    }
)


# ----- fingerprints and cached artefacts ----------------------------------------------------------
def fingerprint(settings: BaseModel, calib: torch.Tensor | None, options: BaseModel | None = None) -> dict[str, Any]:
    """The settings a resumed run must share with the run that wrote the work folder.

    Every setting that changes the computation (run-control flags excluded), the method's validated
    options, and a digest of the calibration tokens; a JSON-plain dict, so a mismatch can be named.
    """
    fp = {k: v for k, v in settings.model_dump(mode="json").items() if k not in RUN_CONTROL}
    if options is not None:
        fp.update({k: v for k, v in options.model_dump(mode="json").items() if k not in RUN_CONTROL})
    if calib is not None:
        tokens = calib.detach().cpu().contiguous()
        fp["calib_tokens"] = f"{tuple(tokens.shape)}:{hashlib.sha256(tokens.numpy().tobytes()).hexdigest()}"
    return json.loads(json.dumps(fp, sort_keys=True, default=str))


def check_fingerprint(found: Any, expected: dict[str, Any], what: str) -> None:
    """Raise the one-line ``ResumeError`` when ``found`` (from the work folder) is not ``expected``."""
    if found == expected:
        return
    if isinstance(found, dict):
        changed = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        detail = f" ({', '.join(changed)})"
    else:
        detail = " (or by another version of llmprune)"
    raise ResumeError(f"--resume: {what} was made with different settings{detail}; rerun without --resume")


def save_artefact(path: Path, payload: Any, fp: dict[str, Any]) -> None:
    """Write a work-folder artefact with its fingerprint (rank 0 only; atomic)."""
    if distributed.is_main():
        save_torch({"fingerprint": fp, "payload": payload}, path)


def load_artefact(path: Path, fp: dict[str, Any], resume: bool) -> Any | None:
    """Rank 0's artefact at ``path`` on every rank: None without ``--resume`` or when absent;
    ``ResumeError`` when it was made with other settings or cannot be read."""

    def load() -> Any | None:
        if not (resume and path.is_file()):
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # a truncated or foreign file is not resumable
            raise ResumeError(f"--resume: cannot read {path.name}: {err}") from err
        check_fingerprint(data.get("fingerprint") if isinstance(data, dict) else None, fp, path.name)
        return data["payload"]

    return distributed.on_main(load)


# ----- the test seam ------------------------------------------------------------------------------
#: Tests only: seconds to sleep after every step of a learned method (and every Týr generation),
#: so that tests/test_interrupt.py can kill a real subprocess mid-run. Read here and nowhere else.
STEP_DELAY_ENV = "LLMPRUNE_TEST_STEP_DELAY"


@dataclass(frozen=True)
class Event:
    """What the test seam sees: ``kind`` "step" (after every completed step, ``step`` counted over
    all stages) or a method's own kind (e.g. minimax's "student": the logits the export must match)."""

    method: str
    kind: str
    step: int = 0
    data: dict[str, Any] = field(default_factory=dict)


_callback: Callable[[Event], None] | None = None


@contextlib.contextmanager
def step_callback(fn: Callable[[Event], None]) -> Iterator[None]:
    """Tests: call ``fn(event)`` at every :func:`notify` while the block runs (it may raise, e.g.
    ``KeyboardInterrupt`` to simulate an interruption)."""
    global _callback
    previous, _callback = _callback, fn
    try:
        yield
    finally:
        _callback = previous


def interrupt_after(step: int) -> Callable[[Event], None]:
    """Tests: a callback raising ``KeyboardInterrupt`` (as Ctrl-C would) after ``step`` steps."""

    def callback(event: Event) -> None:
        if event.kind == "step" and event.step == step:
            raise KeyboardInterrupt

    return callback


def notify(event: Event) -> None:
    """Hand ``event`` to the test callback, then sleep ``$LLMPRUNE_TEST_STEP_DELAY`` after a step."""
    if _callback is not None:
        _callback(event)
    delay = os.environ.get(STEP_DELAY_ENV)
    if delay and event.kind == "step":
        time.sleep(float(delay))


# ----- learning-rate schedules --------------------------------------------------------------------
@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up over ``max(min_warmup_steps, round(warmup·total))`` steps, then a linear or
    cosine decay from 1 to ``floor`` at ``total``; :meth:`factor` multiplies the peak rate."""

    warmup: float
    decay: Literal["linear", "cosine"] = "linear"
    floor: float = 0.0
    min_warmup_steps: int = 0

    def factor(self, step: int, total: int) -> float:
        w = max(self.min_warmup_steps, int(round(self.warmup * total)))
        if step < w:
            return (step + 1) / w
        if self.decay == "cosine":
            p = (step - w) / max(1, total - w)
            return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * p))
        return self.floor + (1 - self.floor) * max(0.0, (total - step) / max(1, total - w))

    def apply(self, optimizer: torch.optim.Optimizer, peak: float, step: int, total: int) -> float:
        """Set every group's rate for ``step``; returns it."""
        lr = peak * self.factor(step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


# ----- the loop -----------------------------------------------------------------------------------
@dataclass
class Batch:
    """One step's data on this rank: its shard ``rows`` of the step's sequences and their tokens."""

    stage: int
    step: int  # within the stage
    rows: torch.Tensor
    tokens: torch.Tensor
    global_rows: int  # sequences of the step over all ranks


@dataclass
class Losses:
    """What a step computed. ``data`` is this rank's mean data loss (DDP averages its gradient over
    ranks); ``extra`` is added unweighted (regularisers, Lagrangian terms identical on every rank);
    ``logged`` are scalar batch means the loop averages over all ranks' rows for the trace."""

    data: torch.Tensor
    logged: dict[str, torch.Tensor]
    extra: torch.Tensor | None = None


@dataclass
class Checkpoint:
    """Where a resumed run starts: ``step`` steps of ``stage`` done (0 at a stage boundary)."""

    stage: int
    step: int
    trace: list[dict[str, Any]]
    method: dict[str, Any]
    rng: torch.Tensor | None = None


class LearnedMethod(ABC):
    """The hooks a learned method provides; :class:`Training` calls them in this order:
    ``begin_stage`` (per stage) → ``step`` / ``update`` (per step) → ``end_stage`` → ``finish`` →
    ``close`` (also after an error). ``state_dict`` is called for every checkpoint."""

    name: str
    #: Appended to the non-finite-loss error: what the user can change.
    hint: str = "lower the learning rate, or use --dtype float32"
    #: DDP option: True when some trainable tensors may get no gradient in a step.
    find_unused_parameters: bool = False
    n_stages: int = 1
    steps_per_stage: int = 1

    @abstractmethod
    def begin_stage(self, stage: int, resume: dict[str, Any] | None) -> Sequence[torch.Tensor]:
        """Prepare a stage (from the checkpoint's method state when resuming inside it); return
        the trainable tensors (wrapped by DDP under torchrun)."""

    @abstractmethod
    def step(self, batch: Batch, forward: Callable[[torch.Tensor], torch.Tensor]) -> Losses:
        """Forward the batch (``forward(tokens)`` returns logits) and compute the losses."""

    @abstractmethod
    def update(self, batch: Batch, means: dict[str, float]) -> dict[str, Any]:
        """After ``backward``: optimiser steps, proximal / dual updates; returns the trace record."""

    def end_stage(self, stage: int) -> None:
        """Finish a stage (e.g. fix its masks)."""

    def stage_result(self, stage: int) -> Any:
        """After ``end_stage``: what the finished stage produced that later stages and ``finish``
        need (ProxSparse: its masks), saved once to its own file instead of in every later
        checkpoint; handed back on resume by :meth:`Training.stage_results`. None: nothing."""
        return None

    def close(self) -> None:
        """Detach whatever the method attached to the model (hooks, adapters); called after
        ``finish`` and after an error, so it must be idempotent."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs besides what the loop keeps (stage, step, trace, RNG) and the
        finished stages' results: the current stage's trainable state and optimiser moments, and
        nothing that can be recomputed or that an earlier stage already stored."""

    def progress_info(self, record: dict[str, Any]) -> dict[str, Any]:
        """Fields shown beside the progress bar."""
        return {"loss": record.get("loss")}

    @abstractmethod
    def finish(self, trace: list[dict[str, Any]]) -> Any:
        """After the last stage: the method's result (a ``PruneResult``)."""


class Training:
    """One learned method's run in the work folder: fingerprint, resume, cached artefacts, loop."""

    def __init__(self, ctx: Any, name: str, options: BaseModel, checkpoint_every: int | str) -> None:
        self.ctx, self.name = ctx, name
        self.every = parse_every(checkpoint_every)
        self.fingerprint = fingerprint(ctx.settings, ctx.calib, options)
        self.checkpoint_path = Path(ctx.work_dir) / f"{name}_state.pt"
        self.resume = bool(ctx.settings.resume)
        self.checkpoint: Checkpoint | None = None

    def load_checkpoint(self) -> Checkpoint | None:
        """Rank 0's checkpoint on every rank (None unless resuming); refused on a settings mismatch."""
        payload = load_artefact(self.checkpoint_path, self.fingerprint, self.resume)
        self.checkpoint = Checkpoint(**payload) if payload is not None else None
        return self.checkpoint

    def cached(self, filename: str, build: Callable[[], Any]) -> Any:
        """An artefact of this run (e.g. teacher logits): reused with ``--resume`` when it carries
        this run's fingerprint, refused when it carries another, else built and saved by rank 0."""
        path = Path(self.ctx.work_dir) / filename
        payload = load_artefact(path, self.fingerprint, self.resume)
        if payload is None:
            payload = build()
            save_artefact(path, payload, self.fingerprint)
        return payload

    def stage_path(self, stage: int) -> Path:
        """The file of a finished stage's result (1-based in the name, like the progress bar)."""
        return Path(self.ctx.work_dir) / f"{self.name}_stage{stage + 1}.pt"

    def stage_results(self) -> list[Any]:
        """The results of the stages the checkpoint has finished, in order (empty without one)."""
        ckpt = self.checkpoint
        if ckpt is None:
            return []
        results = []
        for stage in range(ckpt.stage):
            path = self.stage_path(stage)
            if not distributed.on_main(path.is_file):
                raise ResumeError(f"--resume: {path.name} of a finished stage is missing; rerun without --resume")
            results.append(load_artefact(path, self.fingerprint, resume=True))
        return results

    def _save(self, stage: int, step: int, trace: list[dict[str, Any]], method: LearnedMethod) -> None:
        if distributed.is_main():
            state = Checkpoint(
                stage=stage, step=step, trace=list(trace), method=method.state_dict(), rng=torch.get_rng_state()
            )
            save_artefact(self.checkpoint_path, state.__dict__, self.fingerprint)

    def run(self, method: LearnedMethod) -> Any:
        """Train every stage from the checkpoint (or the start); returns ``method.finish(trace)``."""
        ctx, ckpt = self.ctx, self.checkpoint
        model, calib, device = ctx.model, ctx.calib, ctx.device
        n_samples = calib.shape[0]
        bs = min(ctx.settings.batch_size, n_samples)
        T, n_stages = method.steps_per_stage, method.n_stages
        trace: list[dict[str, Any]] = list(ckpt.trace) if ckpt else []
        start_stage, start_step = (ckpt.stage, ckpt.step) if ckpt else (0, 0)
        task = ctx.progress.task(self.name, total=T * n_stages)
        task.advance(start_stage * T + start_step)
        if ckpt is not None:
            ctx.progress.log(f"{self.name}: resuming at stage {start_stage + 1}/{n_stages}, step {start_step} of {T}")
        layers = ctx.adapter.layers(model)
        recompute = use_layer_checkpointing(ctx.settings, model, layers, bs, calib.shape[1])
        cadence = Cadence(self.every)
        with frozen_parameters(model), layer_checkpointing(layers, recompute), contextlib.closing(method):
            for stage in range(start_stage, n_stages):
                # A checkpoint inside this stage resumes it; one at its boundary starts it afresh.
                inside = ckpt is not None and stage == start_stage and start_step > 0
                trainable = method.begin_stage(stage, ckpt.method if inside and ckpt is not None else None)
                start = start_step if inside else 0
                if inside and ckpt is not None and ckpt.rng is not None:
                    torch.set_rng_state(ckpt.rng)
                cadence.restart()
                forward = distributed.data_parallel(
                    list(trainable),
                    lambda t: model(t, use_cache=False).logits,
                    find_unused_parameters=method.find_unused_parameters,
                )
                for step in range(start, T):
                    rows = batch_rows(stage * T + step, n_samples, bs, ctx.settings.seed)
                    n_rows = rows.numel()
                    lo, hi = distributed.shard_range(n_rows)  # all rows without a process group
                    rows = rows[lo:hi]
                    batch = Batch(stage, step, rows, calib[rows].to(device), n_rows)
                    losses = method.step(batch, forward)
                    means = dict(zip(losses.logged, global_means(rows.numel(), n_rows, *losses.logged.values())))
                    finite = all(math.isfinite(v) for v in means.values())
                    if not finite or (losses.extra is not None and not bool(torch.isfinite(losses.extra).all())):
                        raise NumericalError(f"{self.name}: loss is not finite at step {step} ({method.hint})")
                    total = losses.data
                    if distributed.is_enabled():
                        total = total * distributed.loss_weight(rows.numel(), n_rows)
                    if losses.extra is not None:
                        total = total + losses.extra
                    total.backward()
                    record = method.update(batch, means)
                    trace.append(record)
                    task.advance()
                    task.info(**method.progress_info(record))
                    if step + 1 < T and cadence.due(step + 1):  # same steps on every rank
                        self._save(stage, step + 1, trace, method)
                        cadence.restart()
                    notify(Event(self.name, "step", stage * T + step + 1))
                del forward  # releases DDP's hooks and buckets
                method.end_stage(stage)
                result = method.stage_result(stage)
                if result is not None and stage + 1 < n_stages:  # before the checkpoint that counts it
                    save_artefact(self.stage_path(stage), result, self.fingerprint)
                if stage + 1 < n_stages:
                    self._save(stage + 1, 0, trace, method)
            return method.finish(trace)


def is_main() -> bool:
    """True on the rank that writes files (traces, plots); always without torchrun."""
    return distributed.is_main()


def sharded_rows(n: int, compute: Callable[[int, int], Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Row-wise results over ``n`` rows, each rank computing ``compute(lo, hi)`` for its shard and
    every rank receiving all rows (e.g. teacher logits); ``compute(0, n)`` without a process group."""
    if not distributed.is_enabled():
        return list(compute(0, n))
    lo, hi = distributed.shard_range(n)  # non-empty: the pipeline asks for --nsamples >= ranks
    return [distributed.gather_rows(t, n, lo) for t in compute(lo, hi)]


def global_means(local_rows: int, global_rows: int, *values: torch.Tensor) -> list[float]:
    """Batch means over all ranks' rows (row-weighted) of per-rank means; the local values alone
    without a process group."""
    local = [float(v.detach()) for v in values]
    if not distributed.is_enabled():
        return local
    sums = distributed.all_reduce_floats([v * local_rows for v in local])
    return [v / global_rows for v in sums]


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Every model parameter frozen and the model in eval mode (no dropout: a step is a
    deterministic function of the trainable tensors and the batch); both restored on exit."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


# ----- gradient checkpointing ----------------------------------------------------------------------
def use_layer_checkpointing(
    settings: Any, model: nn.Module, layers: Sequence[nn.Module], batch: int, seqlen: int
) -> bool:
    """``--grad-checkpoint``: on, off, or auto, which turns it on when the weights plus the
    activations a step would save without it exceed half the device budget (the rule is
    :func:`llmprune.core.memory_model.checkpointing_on`, which the estimate asks too)."""
    params = list(model.parameters())
    b = params[0].element_size()
    weights = sum(p.numel() for p in params)
    budget = memory.memory_budget(settings, in_use=weights * b)
    return checkpointing_on(settings, shape_of_model(model, len(layers)), batch * seqlen, b, weights, budget)


@contextlib.contextmanager
def layer_checkpointing(layers: Sequence[nn.Module], enabled: bool = True) -> Iterator[None]:
    """Recompute each decoder layer's activations in backward instead of keeping them.

    Only the layer inputs stay alive between forward and backward (``tokens × hidden`` per layer)
    plus one layer's activations while it is recomputed. Hooks on the layer's submodules run again
    in the recomputation (minimax's mask hooks are pure, so this is harmless). transformers' own
    ``gradient_checkpointing_enable`` acts only in train mode; the loop runs the model in eval mode
    (no dropout), hence this wrapper of each layer's ``forward``. Non-reentrant checkpointing
    recomputes the very same kernels, so gradients are bit-identical to the plain run.
    """
    if not enabled:
        yield
        return
    from torch.utils.checkpoint import checkpoint

    def wrap(_: int, fn: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return fn(*args, **kwargs)
            return checkpoint(fn, *args, use_reentrant=False, **kwargs)

        return forward

    with wrapped_forwards(layers, wrap):  # restores an inner wrapper (weight streaming's) on exit
        yield
