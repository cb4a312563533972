"""The memory model's shared terms: what a run of any method costs, from the config alone.

A method declares its own device, host and disk terms (``Pruner.resources``) from these pieces;
:mod:`llmprune.run.estimate` adds what every run has (the output on disk, the CUDA overhead, the
time range) and never knows a method's internals. Symbols (bytes; the formulas are in
``docs/scale.md`` and :mod:`llmprune.run.estimate`):

* ``b`` bytes per element of the run dtype, ``s`` of the saved dtype; ``T = batch · seqlen`` tokens a
  step sees on one rank, ``N · L`` calibration tokens, ``R`` torchrun ranks.
* parameters ``P = n_l · (P_lin + 2H) + V·H · (2 − tied) + H`` with the decoder-linear
  ``P_lin = H·d·(2·n_h + 2·n_kv) + 3·H·I`` per layer.
* activations a step saves for backward, per token and layer (:func:`activation_bytes_per_token`)::

      a = 16·H + 2·b·H + 5·b·n_h·d + 4·b·I

  without gradient checkpointing ``A = n_l · T · a``; with it ``A = n_l · T · b·H + T · a``.
* the loss head ``2·T·V·b + c·C·V·4`` (:func:`loss_head_bytes`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from types import EllipsisType
from typing import Any

from llmprune.core.distill import chunk_positions
from llmprune.runtime import memory
from llmprune.runtime.memory import GIB

#: CUDA context, allocator fragmentation and kernels' workspaces (GiB), added on GPUs only.
OVERHEAD_GIB = 2.0
#: What every run's process holds besides the model (GiB), added to the host peak: Python, torch and
#: transformers once imported (0.25 measured with the CPU wheel), a fast tokenizer (0.07) and the
#: calibration text tokenized (0.05).
PROCESS_GIB = 0.35
#: ``save_pretrained``'s shard size: safetensors serialises a shard in memory before writing it, so
#: saving holds up to one shard of the output beside the model.
SAVE_SHARD_BYTES = 5e9
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


# ----- the shared terms ----------------------------------------------------------------------------
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


def checkpointing_on(settings: Any, shape: Shape, tokens: int, b: int, params: int, budget: int | None = None) -> bool:
    """``--grad-checkpoint`` resolved (the training loop and the estimate both ask here). Auto turns
    it on only when memory asks for it: when the weights plus the activations a step would save
    without it exceed half the device budget (``budget`` bytes; without a budget, when those
    activations exceed a quarter of the weight bytes). Recomputation costs a third more compute
    per step (one more forward) and changes no gradient, so with memory to spare it stays off."""
    mode = getattr(settings, "grad_checkpoint", "auto")
    if mode != "auto":
        return bool(mode == "on")
    plain = saved_activation_bytes(shape, tokens, b, checkpointed=False)
    if budget is None:
        return plain > params * b / 4
    return params * b + plain > budget / 2


def run_bytes(dtype: str, device_type: str, config: Any) -> int:
    """``b`` for ``--dtype`` on ``device_type`` (auto: float32 on CPU, the checkpoint's on GPU)."""
    if dtype != "auto":
        return DTYPE_BYTES[dtype]
    if device_type == "cpu":
        return 4
    return saved_bytes_of(config)


def saved_bytes_of(config: Any) -> int:
    """Bytes per element of the checkpoint's dtype (its config's; bfloat16 when it says none)."""
    saved = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "bfloat16")
    return DTYPE_BYTES.get(saved.removeprefix("torch."), 2)


# ----- what a method is asked, and what it answers ------------------------------------------------
@dataclass(frozen=True)
class Request:
    """One planned run as the memory model sees it: the settings resolved against the config."""

    settings: Any  # llmprune.settings.PruneSettings (or anything with its fields)
    config: Any
    shape: Shape
    options: dict[str, Any]
    device: str  # "cuda" or "cpu"
    b: int  # bytes per element of the run dtype
    saved: int  # bytes per element of the saved dtype
    seqlen: int
    nsamples: int
    batch: int
    tokens: int  # one rank's tokens of a step
    ranks: int
    stream: bool  # the decoder layers wait on the host (--stream-weights on, for a method that streams)
    budget: int | None  # bytes the device peak must fit (--gpu-memory, free memory), None: unknown

    @classmethod
    def of(
        cls, settings: Any, config: Any, ranks: int, stream: bool, budget: int | None | EllipsisType = ...
    ) -> Request:
        """``budget``: the device budget in bytes (None: none to plan for); by default the settings'
        (:func:`llmprune.runtime.memory.memory_budget`)."""
        dev = memory.device_type(settings.device)
        b = run_bytes(settings.dtype, dev, config)
        saved = (
            run_bytes(settings.save_dtype, "cuda", config) if settings.save_dtype != "auto" else saved_bytes_of(config)
        )
        seqlen = settings.seqlen or min(2048, int(getattr(config, "max_position_embeddings", 2048) or 2048))
        batch = min(settings.batch_size, settings.nsamples)
        return cls(
            settings=settings,
            config=config,
            shape=shape_of_config(config),
            options=dict(settings.method_options),
            device=dev,
            b=b,
            saved=saved,
            seqlen=seqlen,
            nsamples=settings.nsamples,
            batch=batch,
            tokens=math.ceil(batch / ranks) * seqlen,  # each rank's shard of a step's rows
            ranks=ranks,
            stream=stream,
            budget=memory.memory_budget(settings) if isinstance(budget, EllipsisType) else budget,
        )

    @property
    def calib_tokens(self) -> int:
        return self.nsamples * self.seqlen

    @property
    def layer_bytes(self) -> int:
        """One decoder layer's weights in the run dtype."""
        return (self.shape.layer_linear + 2 * self.shape.hidden) * self.b

    @property
    def streamed_bytes(self) -> int:
        """Host-to-device traffic of one forward when the layers are streamed."""
        return self.shape.layers * self.layer_bytes if self.stream else 0

    @property
    def overhead(self) -> float:
        return OVERHEAD_GIB * GIB if self.device == "cuda" else 0.0

    def option(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)


@dataclass
class Resources:
    """A method's answer (bytes and FLOPs over the whole run): its device terms (summed into the
    peak), host memory, disk, compute, host-to-device traffic, checkpoint writes, and resolved
    settings worth showing (``--layers-per-stage auto``)."""

    terms: dict[str, float] = field(default_factory=dict)
    host: float = 0.0
    disk: float = 0.0
    flops: float = 0.0
    transfers: float = 0.0
    writes: float = 0.0
    shown: dict[str, Any] = field(default_factory=dict)

    def peak_device(self, request: Request) -> float:
        return sum(self.terms.values()) + request.overhead


def learned_resources(q: Request, steps: int, kl: bool) -> tuple[Resources, bool, float]:
    """What every whole-model training method pays: the weights (streamed or not), the activations
    a step saves, the loss head, the host copy of streamed layers, ``steps`` steps of compute and
    traffic. Returns the resources, whether recomputation is on, and one step's FLOPs."""
    P = q.shape.params
    recompute = checkpointing_on(q.settings, q.shape, q.tokens, q.b, P, q.budget)
    res = Resources(host=P * q.b if q.stream else 0.0)
    res.terms.update(weight_terms(P * q.b, q.shape.layers, q.layer_bytes, q.stream))
    res.terms["activations"] = saved_activation_bytes(q.shape, q.tokens, q.b, recompute)
    res.terms["loss head"] = loss_head_bytes(q.shape, q.tokens, q.b, kl=kl)
    step_flops = 6 * P * q.tokens * (4 / 3 if recompute else 1)
    res.flops = steps * step_flops
    res.transfers = steps * q.streamed_bytes * (2 if recompute else 1)  # forward, and recomputation
    return res, recompute, step_flops


def stage_hours(q: Request, steps: int, step_flops: float) -> float:
    """One stage's time at the slow end of the range (checkpoint counts are bounds)."""
    return steps * step_flops / THROUGHPUT[q.device][0] / 3600 / q.ranks


def hessian_bytes(shape: Shape) -> tuple[int, int]:
    """(the four Hessians of a layer in float32, the working copies of factorising the largest:
    its damped copy, factor and inverse; :mod:`llmprune.core.obs`)."""
    qd = shape.heads * shape.head_dim
    hessians = (2 * shape.hidden**2 + qd**2 + shape.intermediate**2) * 4
    return hessians, 3 * max(shape.hidden, qd, shape.intermediate) ** 2 * 4


def layerwise_resources(q: Request, hessians: bool) -> Resources:
    """One-shot layer-wise methods: the model on the host in its saved dtype, one layer and its
    pruned copy in float32 on the device, the layer's calibration inputs and outputs (or on disk
    with ``--offload-dir``), the Hessians of OBS methods; two forward passes over the calibration."""
    shape, P = q.shape, q.shape.params
    layer_f32 = (shape.layer_linear + 2 * shape.hidden) * 4
    acts = 2 * q.calib_tokens * shape.hidden * 4
    offload = q.settings.offload_dir is not None
    res = Resources()
    res.terms["one layer and its pruned copy (float32)"] = 2 * layer_f32
    if hessians:
        h, inverse = hessian_bytes(shape)
        res.terms["hessians"] = h
        res.terms["Hessian inverse (working copies)"] = inverse
    res.terms["calibration activations"] = 0 if offload else acts
    if q.device == "cpu":  # the model waits in host memory in its saved dtype: the same memory
        res.terms["model (saved dtype)"] = P * q.saved
    res.host = P * q.saved + (acts if not offload else 0)
    res.disk = acts if offload else 0
    res.flops = 2 * P * q.calib_tokens * 2
    return res
