"""Pre-flight estimate: peak device memory, peak host memory, disk and time of a pruning run,
from the model's config alone (no weights are read).

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
  ``C = min(T, chunk)`` positions per chunk (:mod:`llmprune.distill`) and ``c = 2`` float32
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
:mod:`llmprune.streaming`) the learned methods and Týr's search keep the decoder layers on the host
(``n_l · ℓ`` with ``ℓ = (P_lin + 2H) · b``, host memory of every rank) and hold two layers on the
device: ``P·b`` becomes ``P·b − n_l·ℓ + 2ℓ`` (+ ProxSparse's resident stage ``n_s·ℓ``); the time
range adds the host-to-device traffic (``n_l·ℓ`` a forward, twice a training step with
recomputation) over :data:`TRANSFER`.
Layer-wise methods (the one-shot baselines, Týr's supernet) keep the model on the host in its
saved dtype (``P·s``) and one layer on the device: ``2 · layer in float32`` (the layer and its
pruned copy) ``+ Hessians (SparseGPT, Týr: (2H² + (n_h·d)² + I²) · 4 + 3·max(H, n_h·d, I)²·4`` (the damped
copy, factor and inverse of the largest one, :mod:`llmprune.obs`) ``) + 2·N·L·H·4`` (a layer's
inputs and outputs, or on disk with ``--offload-dir``); on CPU the two are the same memory; Týr's search then runs
whole-model forwards (``P·b`` + one batch of activations without gradient).
Host peak: the model in its checkpoint dtype while it loads, the calibration activations of a
layer-wise pass, the teacher's top-k logits ``N·L·k·12`` and one checkpoint's serialised state.
Checkpoint writes over a run: per stage ⌊(steps − 1) / N⌋ lean checkpoints with ``--checkpoint-every N``
(steps), or ⌊stage time / D⌋ (at most steps − 1) with a duration D (the default ``10m``; the
stage time at the slow end of the time range, so a bound), each the stage's trainable state and
its two Adam moments (ProxSparse: ``n_s · P_lin · 12``; minimax: LoRA × 12); ProxSparse adds its
masks once, one file per finished stage (``n_l · P_lin`` bytes in all); a stage-boundary
checkpoint holds only the trace and RNG state.
Disk: the output (``P_out · s``), the checkpoint (learned state, ProxSparse's masks), the teacher cache and Týr's
work folder (:func:`llmprune.pruners.tyr.pruner.disk_need`, the pre-check's own numbers): the
dense top-k cache ``N·L·k·8`` and the largest supernet, one on disk at a time,
``b · H · Σ_layers Σ_distinct levels ℓ · c`` (``ℓ`` kept units of a level ``center + kΔ``,
``k = −4..4``, clipped to ``[0, U]``; ``c`` input columns per unit: ``g·d`` per KV group, ``d``
per query head, 1 per MLP channel) plus int64 unit lists and headers; at the uniform start with
no clipping ``≈ 9 · n_l · b · H · (k_attn·c + k_mlp)``.
Time: FLOPs (``6·P·T`` a step, ``×4/3`` with recomputation; ``2·P`` a token for forwards) over a
range of sustained throughputs per device (:data:`THROUGHPUT`); a range, never a promise.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmprune.cadence import DEFAULT_EVERY, parse_every
from llmprune.errors import WontFitError

GIB = 2**30
#: CUDA context, allocator fragmentation and kernels' workspaces (GiB), added on GPUs only.
OVERHEAD_GIB = 2.0
#: Sustained FLOP/s ranges (low, high) used for the time range.
THROUGHPUT = {"cuda": (150e12, 400e12), "cpu": (2e10, 2e11)}
#: Host-to-device bandwidth range (bytes/s) per rank for --stream-weights (PCIe 4/5 x16, shared).
TRANSFER = (12e9, 25e9)
#: Bytes per element of the dtypes --dtype accepts.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Shape:
    """What the memory model needs from a config."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    vocab: int
    tied: bool

    @property
    def layer_linear(self) -> int:
        h, d = self.hidden, self.head_dim
        return h * d * (2 * self.heads + 2 * self.kv_heads) + 3 * h * self.intermediate

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * (self.layer_linear + 2 * self.hidden) + embed + self.hidden


def shape_of_config(config: Any) -> Shape:
    heads = int(config.num_attention_heads)
    return Shape(
        hidden=int(config.hidden_size),
        heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
        intermediate=int(config.intermediate_size),
        layers=int(config.num_hidden_layers),
        vocab=int(config.vocab_size),
        tied=bool(getattr(config, "tie_word_embeddings", False)),
    )


def shape_of_model(model: Any, layers: int) -> Shape:
    """The shape of a loaded model (its config, with the layer count it actually has)."""
    shape = shape_of_config(model.config)
    return Shape(**{**asdict(shape), "layers": layers})


# ----- the terms -----------------------------------------------------------------------------------
def activation_bytes_per_token(shape: Shape, b: int) -> int:
    """``a``: bytes one decoder layer saves for backward per token (see the module docstring)."""
    h, i = shape.hidden, shape.intermediate
    return 16 * h + 2 * b * h + 5 * b * shape.heads * shape.head_dim + 4 * b * i


def saved_activation_bytes(shape: Shape, tokens: int, b: int, checkpointed: bool) -> int:
    """``A``: activations a step keeps for backward."""
    a = activation_bytes_per_token(shape, b)
    if checkpointed:
        return shape.layers * tokens * b * shape.hidden + tokens * a
    return shape.layers * tokens * a


def loss_head_bytes(shape: Shape, tokens: int, b: int, kl: bool) -> int:
    """Logits and their gradient in the run dtype plus the loss's float32 chunk work."""
    from llmprune.distill import chunk_positions

    chunk = min(tokens, chunk_positions(shape.vocab))
    blocks = (4 if kl else 2) + (1 if b < 4 else 0)  # + the float32 copy of low-precision logits
    return 2 * tokens * shape.vocab * b + blocks * chunk * shape.vocab * 4


def weight_terms(weights: int, layers: int, layer_bytes: int, stream: bool) -> dict[str, int]:
    """The model's weights on the device: all of them, or (streamed) all but the decoder layers
    plus two layers' copies at a time."""
    if not stream:
        return {"weights": weights}
    return {
        "weights outside the layers": weights - layers * layer_bytes,
        "streamed layers (two at a time)": 2 * layer_bytes,
    }


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


def run_bytes(dtype: str, device_type: str, config: Any) -> int:
    """``b`` for ``--dtype`` on ``device_type`` (auto: float32 on CPU, the checkpoint's on GPU)."""
    if dtype != "auto":
        return DTYPE_BYTES[dtype]
    if device_type == "cpu":
        return 4
    saved = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "bfloat16")
    return DTYPE_BYTES.get(saved.removeprefix("torch."), 2)


def device_type(device: str) -> str:
    """``cuda`` or ``cpu`` for ``--device`` (auto: cuda when this machine has one)."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def estimate(settings: Any, config: Any, ranks: int = 1) -> Estimate:
    """The estimate for ``settings`` (a ``PruneSettings``) on the model of ``config``; with
    ``--stream-weights auto`` the weights are streamed exactly when the estimate without
    streaming does not fit the device budget (as the run decides, :func:`streaming_needed`)."""
    if getattr(settings, "stream_weights", "auto") == "auto" and hasattr(settings, "model_copy"):
        mode = "on" if streaming_needed(settings, config, ranks) else "off"
        settings = settings.model_copy(update={"stream_weights": mode})
    shape = shape_of_config(config)
    o = dict(settings.method_options)
    method, strategy = settings.method, settings.strategy
    dev = device_type(settings.device)
    b = run_bytes(settings.dtype, dev, config)
    saved = run_bytes(settings.save_dtype, "cuda", config) if settings.save_dtype != "auto" else saved_bytes_of(config)
    seqlen = settings.seqlen or min(2048, int(getattr(config, "max_position_embeddings", 2048) or 2048))
    n = settings.nsamples
    batch = min(settings.batch_size, n)
    tokens = math.ceil(batch / ranks) * seqlen  # each rank's shard of a step's rows
    calib_tokens = n * seqlen
    P, H = shape.params, shape.hidden
    overhead = OVERHEAD_GIB * GIB if dev == "cuda" else 0.0
    terms: dict[str, float] = {}
    shown_extra: dict[str, Any] = {}  # resolved settings (--layers-per-stage auto)
    writes = 0.0  # checkpoint bytes written over the whole run
    host = 0.0
    disk = 0.0
    flops = 0.0
    transfers = 0.0  # host-to-device bytes of weight streaming over the run
    keep = 1.0 - settings.sparsity if strategy != "semi24" else 1.0
    out_params = P - shape.layers * shape.layer_linear * (1 - keep)
    disk += out_params * saved
    stream = getattr(settings, "stream_weights", "off") == "on" and (
        method in ("minimax", "proxsparse") or strategy == "global"
    )
    layer_bytes = (shape.layer_linear + 2 * H) * b
    streamed_bytes = 0  # host-to-device traffic of one forward
    if stream:  # the layers wait on the host (each rank's copy, run dtype); two at a time on the device
        host += P * b if strategy != "global" else max(0, P * b - P * saved)  # Týr: counted below
        streamed_bytes = shape.layers * layer_bytes
    if method in ("minimax", "proxsparse"):
        recompute = checkpointing_on(settings, shape, tokens, b, P)
        terms.update(weight_terms(P * b, shape.layers, layer_bytes, stream))
        terms["activations"] = saved_activation_bytes(shape, tokens, b, recompute)
        terms["loss head"] = loss_head_bytes(shape, tokens, b, kl=method == "minimax" and o.get("distill", True))
        steps = int(o.get("steps", 1000))
        step_flops = 6 * P * tokens * (4 / 3 if recompute else 1)
        stage_hours = steps * step_flops / THROUGHPUT[dev][0] / 3600 / ranks  # the slow end of the range
        every = str(o.get("checkpoint_every", DEFAULT_EVERY))
        if method == "minimax":
            rank = int(o.get("lora_rank", 0))
            qd, kvd = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
            io = 2 * (H + qd) + 2 * (H + kvd) + 3 * (H + shape.intermediate)  # Σ in + out of the 7
            lora = shape.layers * rank * io
            terms["learned state"] = lora * 16
            k = int(o.get("teacher_topk", 64))
            teacher = calib_tokens * (k * 12 + 4) if o.get("distill", True) else 0
            host += teacher
            disk += teacher + lora * 12
            writes = checkpoints_per_stage(every, steps, stage_hours) * lora * 12  # LoRA + two Adam moments
        else:
            per_stage = stage_layers(settings, config, ranks)
            shown_extra["layers_per_stage"] = per_stage
            per_param = 4 + 8 + (4 if float(o.get("lambda2", 0.0)) > 0 else 0) + (4 + b if b < 4 else 4)
            state = per_stage * shape.layer_linear * per_param
            terms["learned state"] = state
            if stream:  # the stage's layers stay on the device while they train
                terms["resident stage layers"] = per_stage * layer_bytes
            per_ckpt = per_stage * shape.layer_linear * 12  # the stage's fp32 masters + two Adam moments
            masks = shape.layers * shape.layer_linear  # finished stages' masks, one byte a weight, once
            host += per_ckpt + masks  # one checkpoint being serialised; finished stages' masks
            if dev == "cpu":  # the masks wait in host memory, which is the device's here
                terms["finished stages' masks"] = masks
            disk += per_ckpt + masks
            n_stages = math.ceil(shape.layers / per_stage)
            writes = n_stages * checkpoints_per_stage(every, steps, stage_hours) * per_ckpt + masks
            steps *= n_stages
        flops = steps * step_flops
        transfers = steps * streamed_bytes * (2 if recompute else 1)  # forward, and recomputation
        if method == "minimax":
            flops += 2 * P * calib_tokens  # the teacher pass
            transfers += math.ceil(n / ranks / max(batch, 1)) * streamed_bytes
    else:
        layer_f32 = (shape.layer_linear + 2 * H) * 4
        qd = shape.heads * shape.head_dim
        hessians = (2 * H**2 + qd**2 + shape.intermediate**2) * 4 if method in ("sparsegpt", "tyr") else 0
        # factorising the largest Hessian: its damped copy, factor and inverse (llmprune.obs)
        inverse = 3 * max(H, qd, shape.intermediate) ** 2 * 4 if hessians else 0
        acts = 2 * calib_tokens * H * 4
        offload = settings.offload_dir is not None
        terms["one layer and its pruned copy (float32)"] = 2 * layer_f32
        if hessians:
            terms["hessians"] = hessians
            terms["Hessian inverse (working copies)"] = inverse
        terms["calibration activations"] = 0 if offload else acts
        if dev == "cpu":  # the model waits in host memory in its saved dtype: the same memory
            terms["model (saved dtype)"] = P * saved
        host += P * saved + (acts if not offload else 0)
        disk += acts if offload else 0
        flops = 2 * P * calib_tokens * 2
        if strategy == "global":  # Týr: whole-model forwards while searching, and the supernet
            terms = {
                **weight_terms(P * b, shape.layers, layer_bytes, stream),
                "search forward": batch * seqlen * (activation_bytes_per_token(shape, b) + 2 * shape.vocab * 4),
            }
            # the search's dense o/down weights (to put variants back), next to the model's weights
            dense_copies = shape.layers * (shape.heads * shape.head_dim + shape.intermediate) * H * b
            if stream:
                host += dense_copies
            else:
                terms["dense o/down copies"] = dense_copies
            terms["one layer (float32)"] = layer_f32
            terms["hessians"] = hessians
            terms["Hessian inverse (working copies)"] = inverse
            iterations = int(o.get("iterations", 4))
            disk += sum(tyr_disk_terms(settings, shape, b, n, seqlen))
            gens, offspring = int(o.get("generations", 8)), int(o.get("offspring", 16))
            flops += iterations * gens * offspring * 2 * P * calib_tokens / 4
            if o.get("final_prune", "supernet") == "sequential":  # o's and down's statistics, advance
                flops += 3 * 2 * P * calib_tokens
            forwards = iterations * gens * offspring * math.ceil(n / 4 / max(batch, 1))
            transfers = forwards * streamed_bytes
    peak_device = sum(terms.values()) + overhead
    if dev == "cpu":
        host = max(host, peak_device)
    else:
        host = max(host, P * saved_bytes_of(config))
    time_h = (flops / THROUGHPUT[dev][1] / 3600 / ranks, flops / THROUGHPUT[dev][0] / 3600 / ranks)
    if stream and dev == "cuda":  # every rank streams its own copy; transfers do not overlap compute here
        time_h = (time_h[0] + transfers / TRANSFER[1] / 3600, time_h[1] + transfers / TRANSFER[0] / 3600)
    shown = {
        "model": settings.model,
        "device": dev,
        "dtype_bytes": b,
        "nsamples": n,
        "seqlen": seqlen,
        "batch_size": batch,
        "ranks": ranks,
        "stream_weights": bool(stream),
        **o,
        **shown_extra,
    }
    return Estimate(
        method=f"{strategy} {method}",
        settings=shown,
        peak_device_gib=peak_device / GIB,
        peak_host_gib=host / GIB,
        disk_gib=disk / GIB,
        time_h=time_h,
        terms={k: v / GIB for k, v in terms.items()} | ({"overhead": OVERHEAD_GIB} if overhead else {}),
        checkpoint_writes_gib=writes / GIB,
    )


def checkpoints_per_stage(every: str, steps: int, stage_hours: float) -> int:
    """Checkpoints written inside one stage of ``steps`` steps: ``⌊(steps − 1) / N⌋`` every N
    steps; every duration D, ``⌊stage time / D⌋`` with the stage time at the slow end of the
    predicted range (so an upper bound), at most ``steps − 1`` (none after the last step)."""
    cadence = parse_every(every)
    if cadence.steps is not None:
        return (steps - 1) // cadence.steps
    assert cadence.seconds is not None
    return min(steps - 1, int(stage_hours * 3600 // cadence.seconds))


def streaming_needed(settings: Any, config: Any, ranks: int = 1) -> bool:
    """``--stream-weights auto`` resolved: on a GPU, stream when the estimate with the weights on
    the device (and ``--layers-per-stage auto`` chosen that way) exceeds the memory budget; never
    on the CPU or without a budget to plan for (``--estimate --device cuda`` without ``--gpu-memory``)."""
    if device_type(settings.device) != "cuda":
        return False
    budget = memory_budget(settings)
    if budget is None:
        return False
    plain = estimate(settings.model_copy(update={"stream_weights": "off"}), config, ranks)
    return plain.peak_device_gib * GIB > budget


# ----- --layers-per-stage auto --------------------------------------------------------------------
def stage_layers(settings: Any, config: Any, ranks: int = 1, budget: int | None = None) -> int:
    """ProxSparse's layers per stage: the given number (0: all layers), or for ``auto`` the largest
    number whose predicted peak device memory fits ``budget`` bytes (default :func:`memory_budget`;
    all layers when there is no budget to plan for, one when not even one layer fits)."""
    n_layers = shape_of_config(config).layers
    value = str(dict(settings.method_options).get("layers_per_stage", "auto"))
    if value != "auto":
        return int(value) or n_layers
    budget = memory_budget(settings) if budget is None else budget
    if budget is None:
        return n_layers
    for k in range(n_layers, 0, -1):  # the peak grows with k: the first that fits is the largest
        fixed = settings.model_copy(update={"method_options": {**settings.method_options, "layers_per_stage": str(k)}})
        if estimate(fixed, config, ranks).peak_device_gib * GIB <= budget:
            return k
    return 1


def memory_budget(settings: Any, in_use: int = 0) -> int | None:
    """Bytes the predicted peak must fit: ``--gpu-memory`` if given, else the free memory of the
    CUDA device (None when this machine has none, e.g. ``--estimate --device cuda`` on a laptop),
    else (CPU) the available host RAM. ``in_use``: bytes of what the estimate counts that is
    already loaded (the model's weights, during a run), added back to the free memory."""
    if device_type(settings.device) == "cuda":
        gib = getattr(settings, "gpu_memory", None)
        if gib is not None:
            return int(gib * GIB)
        import torch

        if not torch.cuda.is_available():
            return None
        return free_device_bytes(settings.device) + in_use
    return available_host_bytes() + in_use


def available_host_bytes() -> int:
    """Host RAM a new allocation can get (``MemAvailable``; total RAM where /proc is absent)."""
    import os

    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def tyr_disk_terms(settings: Any, shape: Shape, b: int, nsamples: int, seqlen: int) -> tuple[int, int]:
    """Týr's peak work-folder disk, (largest supernet, dense top-k cache): the pruner's own
    ``disk_need`` at the uniform start widths, the supernet compact in the run dtype."""
    import torch

    from llmprune.arch import Geometry
    from llmprune.pruners.tyr.pruner import TyrOptions, disk_need, start_widths

    options = TyrOptions(**dict(settings.method_options))
    geom = Geometry(shape.hidden, shape.heads, shape.kv_heads, shape.head_dim, shape.intermediate, shape.layers)
    types, k_attn, k_mlp = start_widths(settings, options, geom)
    dtype = torch.float32 if b == 4 else torch.bfloat16  # 2-byte dtypes take the same space
    rows = nsamples if options.search_nsamples is None else min(options.search_nsamples, nsamples)
    return disk_need(options, types, k_attn, k_mlp, dtype, rows * seqlen, shape.vocab)


def saved_bytes_of(config: Any) -> int:
    """Bytes per element of the checkpoint's dtype (its config's; bfloat16 when it says none)."""
    saved = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "bfloat16")
    return DTYPE_BYTES.get(saved.removeprefix("torch."), 2)


def checkpointing_on(settings: Any, shape: Shape, tokens: int, b: int, params: int) -> bool:
    """``--grad-checkpoint`` resolved the way :func:`llmprune.training.use_layer_checkpointing` does."""
    mode = getattr(settings, "grad_checkpoint", "auto")
    if mode != "auto":
        return bool(mode == "on")
    return saved_activation_bytes(shape, tokens, b, checkpointed=False) > params * b / 4


# ----- the command-line side ------------------------------------------------------------------------
def from_settings(settings: Any) -> Estimate:
    """Read only the config (a hub id downloads config.json alone) and estimate."""
    from llmprune.distributed import env_world_size
    from llmprune.loading import load_config

    return estimate(settings, load_config(settings.model), ranks=env_world_size())


def free_device_bytes(device: str) -> int:
    """Free memory of a CUDA device (what the pre-flight check compares with)."""
    import os

    import torch

    dev = torch.device(device if device not in ("auto", "cuda") else f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    return int(torch.cuda.mem_get_info(dev)[0])


def advice(est: Estimate, settings: Any) -> str:
    """The setting to change, named after the largest device term."""
    terms = {k: v for k, v in est.terms.items() if k != "overhead"}
    largest = max(terms, key=lambda k: terms[k])
    if largest == "learned state" and settings.method == "proxsparse":
        return "lower --layers-per-stage"
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
    if force or device_type(settings.device) != "cuda":
        return None
    est = from_settings(settings)
    free = gpu_memory_gib * GIB if gpu_memory_gib is not None else free_device_bytes(settings.device)
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

    from llmprune.progress import console

    table = Table(title=f"llmprune {est.method}: predicted resources ({est.settings['model']})")
    table.add_column("quantity")
    table.add_column("predicted", justify="right")
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
