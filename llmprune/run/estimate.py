"""Pre-flight estimate: peak device memory, peak host memory, disk and time of a pruning run,
from the model's config alone (no weights are read).

Each method declares its own terms (``Pruner.resources``, built from the shared pieces of
:mod:`llmprune.core.memory_model`); this module adds what every run has (the output on disk, the
CUDA overhead, the time range, ``--stream-weights auto``) and never names a method. The model
below is the sum of those declarations:

The memory model, per method (bytes; every symbol from the config and the settings):

* ``b`` bytes per element of the run dtype (``--dtype``; auto: float32 on CPU, the checkpoint's
  dtype on GPU), ``s`` of the saved dtype; ``T = batch · seqlen`` tokens a step sees on one rank,
  ``N · L`` calibration tokens (``--nsamples`` × ``--seqlen``), ``R`` torchrun ranks.
* parameters ``P = n_l · (P_lin + 2H) + V·H · (2 − tied) + H`` with the decoder-linear
  ``P_lin = H·d·(2·n_h + 2·n_kv) + 3·H·I`` per layer.
* activations a step saves for backward, per token and layer (:func:`activation_bytes_per_token`)::

      a = 16·H + 2·b·H            (two RMSNorms: float32 input and normalised copy, output in b)
        + 5·b·n_h·d               (q, k and v expanded to n_h heads, attention output, o input)
        + 4·b·I                   (gate, act(gate), up, their product = down input)

  without gradient checkpointing ``A = n_l · T · a``; with it (``--grad-checkpoint``, the
  default where ``A`` dominates) ``A = n_l · T · b·H + T · a`` (the layer inputs plus one layer
  being recomputed).
* the loss head: logits, their gradient and the loss's float32 work, ``2·T·V·b + c·C·V·4`` with
  ``C = min(T, chunk)`` positions per chunk (:mod:`llmprune.core.distill`) and ``c = 2`` float32
  blocks for the LM loss (log-softmax and its gradient), ``c = 4`` with minimax's top-k KL, one
  more below float32 (the upcast copy).
* learned state, float32: minimax's LoRA ``7 · n_l · r · (in + out)`` parameters × 16 bytes
  (value, gradient, two Adam moments); ProxSparse's stage of ``n_s`` layers holds its targeted
  weights ``n_s · P_lin`` × ``(4 master + 4 gradient + 8 Adam + 4 anchor·[λ₂>0])`` plus, below
  float32, a gradient in the run dtype (``+ b``); the master *is* the weight in float32.
  Finished stages' masks (``n_l · P_lin`` bytes, one a weight) wait in host memory.
  ``--layers-per-stage auto`` takes the largest ``n_s`` whose device peak below fits the budget
  (``--gpu-memory``, else the device's free memory; on CPU the available host RAM).

Device peak of a learned method: ``P·b + A + loss head + learned state + O`` (``O`` =
:data:`OVERHEAD_GIB`: CUDA context and allocator slack; 0 on CPU, where everything is host memory).
With ``--stream-weights`` (auto: on a GPU when the device peak above exceeds the budget;
:mod:`llmprune.model.streaming`) the learned methods and Týr's search keep the decoder layers on the host
(``n_l · ℓ`` with ``ℓ = (P_lin + 2H) · b``, host memory of every rank) and hold two layers on the
device: ``P·b`` becomes ``P·b − n_l·ℓ + 2ℓ`` (+ ProxSparse's resident stage ``n_s·ℓ``); the time
range adds the host-to-device traffic (``n_l·ℓ`` a forward, twice a training step with
recomputation) over :data:`TRANSFER`.
Layer-wise methods (the one-shot baselines, Týr's supernet) keep the model on the host in its
saved dtype (``P·s``) and one layer on the device: ``2 · layer in float32`` (the layer and its
pruned copy) ``+ Hessians (SparseGPT, Týr: (2H² + (n_h·d)² + I²) · 4 + 3·max(H, n_h·d, I)²·4`` (the damped
copy, factor and inverse of the largest one, :mod:`llmprune.core.obs`) ``) + 2·N·L·H·4`` (a layer's
inputs and outputs, or on disk with ``--offload-dir``); on CPU the two are the same memory; Týr's search then runs
whole-model forwards (``P·b`` + one batch of activations without gradient).
Host peak: :data:`PROCESS_GIB` (Python, torch, transformers and a tokenizer, with the text tokenized) plus the larger of the
run's working set (the model in its checkpoint dtype while it loads, the calibration activations of a
layer-wise pass, the teacher's top-k logits ``N·L·k·12`` and one checkpoint's serialised state; on
CPU the device peak) and the save (the model in its saved dtype plus one shard of the output,
at most :data:`SAVE_SHARD_BYTES`, which safetensors serialises in memory before writing it).
Checkpoint writes over a run: per stage ⌊(steps − 1) / N⌋ lean checkpoints with ``--checkpoint-every N``
(steps), or ⌊stage time / D⌋ (at most steps − 1) with a duration D (the default ``10m``; the
stage time at the slow end of the time range, so a bound), each the stage's trainable state and
its two Adam moments (ProxSparse: ``n_s · P_lin · 12``; minimax: LoRA × 12); ProxSparse adds its
masks once, one file per finished stage (``n_l · P_lin`` bytes in all); a stage-boundary
checkpoint holds only the trace and RNG state.
Disk: the output (``P_out · s``), the checkpoint (learned state, ProxSparse's masks), the teacher cache and Týr's
work folder (its pre-check's own numbers): the
dense top-k cache ``N·L·k·8`` and the largest supernet, one on disk at a time,
``b · H · Σ_layers Σ_distinct levels ℓ · c`` (``ℓ`` kept units of a level ``center + kΔ``,
``k = −4..4``, clipped to ``[0, U]``; ``c`` input columns per unit: ``g·d`` per KV group, ``d``
per query head, 1 per MLP channel) plus int64 unit lists and headers; at the uniform start with
no clipping ``≈ 9 · n_l · b · H · (k_attn·c + k_mlp)``.
Time: FLOPs (``6·P·T`` a step, ``×4/3`` with recomputation; ``2·P`` a token for forwards) over a
range of sustained throughputs per device (:data:`THROUGHPUT`); a range, never a promise.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmprune.core.memory_model import (
    OVERHEAD_GIB,
    PROCESS_GIB,
    SAVE_SHARD_BYTES,
    THROUGHPUT,
    TRANSFER,
    Request,
    saved_bytes_of,
)
from llmprune.errors import WontFitError
from llmprune.pruners.base import Pruner, get_pruner_class
from llmprune.runtime import memory
from llmprune.runtime.memory import GIB


@dataclass
class Estimate:
    method: str
    settings: dict[str, Any]
    peak_device_gib: float
    peak_host_gib: float
    disk_gib: float
    time_h: tuple[float, float]
    terms: dict[str, float]  # device-memory terms (GiB), for the table
    checkpoint_writes_gib: float = 0.0
    #: The largest device term's remedy, declared by the method (``Pruner.advice``).
    method_advice: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "settings": self.settings,
            "peak_device_gib": round(self.peak_device_gib, 3),
            "peak_host_gib": round(self.peak_host_gib, 3),
            "disk_gib": round(self.disk_gib, 3),
            "time_hours": [round(t, 3) for t in self.time_h],
            "checkpoint_writes_gib": round(self.checkpoint_writes_gib, 3),
            "device_terms_gib": {k: round(v, 3) for k, v in self.terms.items()},
        }


def estimate(settings: Any, config: Any, ranks: int = 1) -> Estimate:
    """The estimate for ``settings`` (a ``PruneSettings``) on the model of ``config``; with
    ``--stream-weights auto`` the weights are streamed exactly when the estimate without
    streaming does not fit the device budget (as the run decides, :func:`streaming_needed`)."""
    pruner = get_pruner_class(settings.strategy, settings.method)
    if getattr(settings, "stream_weights", "auto") == "auto" and hasattr(settings, "model_copy"):
        mode = "on" if streaming_needed(settings, config, ranks) else "off"
        settings = settings.model_copy(update={"stream_weights": mode})
    stream = getattr(settings, "stream_weights", "off") == "on" and streams(pruner)
    q = Request.of(settings, config, ranks, stream)
    res = pruner.resources(q)
    shape = q.shape
    keep = 1.0 - settings.sparsity if settings.strategy != "semi24" else 1.0
    out_params = shape.params - shape.layers * shape.layer_linear * (1 - keep)
    disk = out_params * q.saved + res.disk
    peak_device = res.peak_device(q)
    loaded = shape.params * saved_bytes_of(config)  # the model as it loads (checkpoint dtype)
    saving = shape.params * q.saved + min(out_params * q.saved, SAVE_SHARD_BYTES)  # model + one shard's bytes
    work = max(res.host, peak_device) if q.device == "cpu" else max(res.host, loaded)
    host = PROCESS_GIB * GIB + max(work, saving)
    slow, fast = THROUGHPUT[q.device]
    time_h = (res.flops / fast / 3600 / ranks, res.flops / slow / 3600 / ranks)
    if stream and q.device == "cuda":  # every rank streams its own copy; transfers do not overlap compute here
        time_h = (time_h[0] + res.transfers / TRANSFER[1] / 3600, time_h[1] + res.transfers / TRANSFER[0] / 3600)
    shown = {
        "model": settings.model,
        "device": q.device,
        "dtype_bytes": q.b,
        "nsamples": q.nsamples,
        "seqlen": q.seqlen,
        "batch_size": q.batch,
        "ranks": ranks,
        "stream_weights": bool(stream),
        "device_budget_gib": None if q.budget is None else round(q.budget / GIB, 3),
        "device_budget_assumed": memory.budget_assumed(settings),
        **q.options,
        **res.shown,
    }
    return Estimate(
        method=f"{settings.strategy} {settings.method}",
        settings=shown,
        peak_device_gib=peak_device / GIB,
        peak_host_gib=host / GIB,
        disk_gib=disk / GIB,
        time_h=time_h,
        terms={k: v / GIB for k, v in res.terms.items()} | ({"overhead": OVERHEAD_GIB} if q.overhead else {}),
        checkpoint_writes_gib=res.writes / GIB,
        method_advice=dict(pruner.advice),
    )


def streams(pruner: type[Pruner]) -> bool:
    """Whether ``--stream-weights`` applies: methods that run whole-model forwards (layer-wise ones
    keep the model on the host anyway and move one layer at a time)."""
    return not pruner.layerwise


def streaming_needed(settings: Any, config: Any, ranks: int = 1) -> bool:
    """``--stream-weights auto`` resolved: on a GPU, stream when the estimate with the weights on
    the device (and ``--layers-per-stage auto`` chosen that way) exceeds the memory budget (on a
    machine without the GPU, an assumed :data:`~llmprune.runtime.memory.ASSUMED_GPU_GIB`); never on the CPU."""
    if memory.device_type(settings.device) != "cuda":
        return False
    budget = memory.memory_budget(settings)
    plain = estimate(settings.model_copy(update={"stream_weights": "off"}), config, ranks)
    return plain.peak_device_gib * GIB > budget


# ----- the command-line side ------------------------------------------------------------------------
def from_settings(settings: Any) -> Estimate:
    """Read only the config (a hub id downloads config.json alone) and estimate. A local folder's
    complete config.json is read as plain JSON, without transformers (``model.config_file``)."""
    from llmprune.model.config_file import read_plain_config
    from llmprune.runtime.distributed import env_world_size

    config = read_plain_config(settings.model)
    if config is None:
        from llmprune.model.loading import load_config

        config = load_config(settings.model)
    return estimate(settings, config, ranks=env_world_size())


def advice(est: Estimate, settings: Any) -> str:
    """The setting to change, named after the largest device term (the method's own remedy first)."""
    terms = {k: v for k, v in est.terms.items() if k != "overhead"}
    largest = max(terms, key=lambda k: terms[k])
    if est.method_advice and largest in est.method_advice:
        return est.method_advice[largest]
    if largest in ("activations", "loss head", "search forward"):
        return "lower --batch-size or --seqlen"
    if largest == "calibration activations":
        return "use --offload-dir or lower --nsamples"
    if largest == "weights" and not est.settings.get("stream_weights"):
        return "use --stream-weights on (decoder layers wait in host memory)"
    if est.settings["dtype_bytes"] == 4:
        return "use --dtype bfloat16"
    return "use more ranks (torchrun) or a larger device"


def preflight(settings: Any, gpu_memory_gib: float | None, force: bool) -> Estimate | None:
    """Before a real GPU run: refuse one predicted not to fit the free device memory or the disk
    (one line naming the setting to change) unless ``force``; returns the estimate (None on CPU)."""
    if force or memory.device_type(settings.device) != "cuda":
        return None
    est = from_settings(settings)
    free = gpu_memory_gib * GIB if gpu_memory_gib is not None else memory.free_device_bytes(settings.device)
    if est.peak_device_gib * GIB > free:
        raise WontFitError(
            f"predicted peak device memory {est.peak_device_gib:.1f} GiB exceeds the {free / GIB:.1f} GiB free "
            f"on {settings.device}; {advice(est, settings)} (or --force to try anyway)"
        )
    out = Path(settings.output).expanduser().resolve()
    while not out.exists():
        out = out.parent
    disk = shutil.disk_usage(out).free
    if est.disk_gib * GIB > disk:
        raise WontFitError(
            f"predicted disk use {est.disk_gib:.1f} GiB exceeds the {disk / GIB:.1f} GiB free under {out}; "
            "free space or write --output elsewhere (or --force to try anyway)"
        )
    return est


def print_estimate(est: Estimate) -> None:
    """The table ``--estimate`` prints."""
    from rich.table import Table

    from llmprune.runtime.progress import console

    table = Table(title=f"llmprune {est.method}: predicted resources ({est.settings['model']})")
    table.add_column("quantity")
    table.add_column("predicted", justify="right")
    budget = est.settings.get("device_budget_gib")
    if budget is not None:
        note = (
            f" (assumed: no {est.settings['device']} device here; --gpu-memory GIB plans for another)"
            if est.settings.get("device_budget_assumed")
            else ""
        )
        table.add_row("device budget", f"{budget:.1f} GiB{note}")
    table.add_row("peak device memory", f"{est.peak_device_gib:.2f} GiB ({est.settings['device']})")
    for name, gib in est.terms.items():
        table.add_row(f"  {name}", f"{gib:.2f} GiB")
    if "layers_per_stage" in est.settings:  # ProxSparse (auto resolved against the budget)
        table.add_row("layers per stage", str(est.settings["layers_per_stage"]))
    table.add_row("peak host memory", f"{est.peak_host_gib:.2f} GiB")
    table.add_row("disk", f"{est.disk_gib:.2f} GiB")
    lo, hi = est.time_h
    table.add_row("time", f"{_hours(lo)} – {_hours(hi)}")
    console.print(table)


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"
