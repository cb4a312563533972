"""Decoder layers' weights streamed from host memory: a layer's frozen weights are on the device
only while that layer computes.

Why: a learned method (minimax, ProxSparse, recovery) and Týr's search run whole-model forwards,
so today every rank holds the whole model on its GPU: 140 GB at 70B in bf16, more than an 80 GB
device. A step touches one decoder layer at a time, so the layers' weights can live on the host
(every rank's host copy, in the compute dtype) and be copied to the device just before the layer
runs; the copy is dropped when nothing references it any more. With gradient checkpointing
(:func:`llmprune.train.loop.layer_checkpointing`, whose recomputation calls the streamed forward
again) the backward pass recomputes a layer from a fresh copy, and that copy dies with the layer's
backward: at most a layer or two of weights is on the device besides what stays there (embeddings,
final norm, head, every trainable tensor, and the layers a method keeps resident, e.g. ProxSparse's
stage). The cost is host-to-device traffic: the streamed layers' bytes once per forward, twice per
training step (forward and recomputation).

Rules a method follows under streaming:
* trainable tensors live on the device and are never streamed: LoRA factors are created there (they
  take the compute device, not their base weight's); the loaded weights are frozen by
  :func:`streamed`, so a weight that requires a gradient is one a method trains;
* a method that trains a layer's own weights (ProxSparse, full fine-tuning) keeps that layer
  resident (:meth:`WeightStream.keep`) for as long as it trains it, and releases it after;
* code that reads a streamed weight outside a forward sees the host tensor (``weight.device`` is
  the host): combine it with device tensors by moving one of them explicitly.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from llmprune.model.layer_forward import wrapped_forwards
from llmprune.runtime.memory import memory_budget

HOST = torch.device("cpu")


class WeightStream:
    """Streams ``layers`` (decoder layers) to ``device``; the rest of the model is placed by
    :func:`place_outside_layers`. ``copies`` (bytes of streamed copies still alive: in use, or kept
    by autograd for a backward pass) and ``peak_copies`` say what streaming holds on the device.

    On the CPU (tests, ``--stream-weights on``) host and device are one, and every frozen tensor
    is copied anyway, so the mechanism runs exactly as on a GPU."""

    def __init__(self, layers: Sequence[nn.Module], device: torch.device) -> None:
        self.layers = list(layers)
        self.device = device
        self.resident: set[int] = set()
        self.copies = 0
        self.peak_copies = 0
        self.fetches = 0

    # ----- residency ------------------------------------------------------------------------------
    def keep(self, indices: Iterable[int]) -> None:
        """Move these layers to the device and stop streaming them (a method trains their weights)."""
        for i in indices:
            if i not in self.resident:
                self.layers[i].to(self.device)
                self.resident.add(i)

    def release(self, indices: Iterable[int]) -> None:
        """Send these layers back to the host and stream them again."""
        for i in indices:
            if i in self.resident:
                self.layers[i].to(HOST)
                self.resident.discard(i)

    # ----- the streamed forward -------------------------------------------------------------------
    @contextlib.contextmanager
    def installed(self) -> Iterator[WeightStream]:
        """Every decoder layer's ``forward`` streams its weights while the block runs.

        The wrapper is the innermost one on ``layer.forward``: gradient checkpointing, installed
        later, wraps it, so the recomputation in backward streams again."""
        with wrapped_forwards(self.layers, self._streamed):
            yield self

    def _streamed(self, index: int, forward: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            if index in self.resident:
                return forward(*args, **kwargs)
            with self._fetched(self.layers[index]):
                return forward(*args, **kwargs)

        return run

    @contextlib.contextmanager
    def _fetched(self, layer: nn.Module) -> Iterator[None]:
        """Device copies of the layer's frozen host tensors in place of the originals for the
        duration of the call. The originals are put back after; autograd keeps the copies it saved
        (as new tensor objects, not the host parameters), so a backward pass sees device weights."""
        swapped: list[tuple[dict[str, Any], str, torch.Tensor]] = []
        for module in layer.modules():
            tables: tuple[dict[str, Any], ...] = (module._parameters, module._buffers)
            for table in tables:
                for name, t in table.items():
                    if t is None or (t.device == self.device and self.device != HOST):
                        continue  # already there (e.g. moved by the layer-wise runner)
                    if t.requires_grad:  # trained: on the device already (created there, or kept)
                        continue
                    copy = t.to(self.device, copy=True)
                    self._count(copy)
                    swapped.append((table, name, t))
                    table[name] = nn.Parameter(copy, requires_grad=False) if isinstance(t, nn.Parameter) else copy
        self.fetches += 1
        try:
            yield
        finally:
            for table, name, original in swapped:
                table[name] = original

    def _count(self, copy: torch.Tensor) -> None:
        nbytes = copy.untyped_storage().nbytes()
        self.copies += nbytes
        self.peak_copies = max(self.peak_copies, self.copies)
        weakref.finalize(copy.untyped_storage(), self._freed, nbytes)

    def _freed(self, nbytes: int) -> None:
        self.copies -= nbytes


def place_outside_layers(model: nn.Module, layers: Sequence[nn.Module], device: torch.device) -> None:
    """Move every parameter and buffer of ``model`` that is not inside ``layers`` to ``device``
    (embeddings, final norm, head, rotary tables); the layers stay where they are (the host)."""
    inside = {id(t) for layer in layers for t in (*layer.parameters(), *layer.buffers())}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for t in table.values():
                if t is not None and id(t) not in inside:
                    t.data = t.data.to(device)


def streaming_on(settings: Any, device: torch.device, fits: Callable[[], bool]) -> bool:
    """``--stream-weights``: on, off, or auto, which streams on a GPU when the run's estimate
    without streaming does not fit the device (``fits`` asks; on CPU host and device are one)."""
    mode = getattr(settings, "stream_weights", "auto")
    if mode == "on":
        return True
    if mode == "off" or device.type == "cpu":
        return False
    return not fits()


def streamed(model: nn.Module, layers: Sequence[nn.Module], device: torch.device, dtype: torch.dtype) -> WeightStream:
    """Prepare a host-resident ``model`` for streaming: everything in ``dtype``, all but the
    decoder layers on ``device``; returns the stream (install it around the work)."""
    model.to(dtype=dtype)
    model.requires_grad_(False)  # loaded weights are frozen; a method turns on what it trains (and keeps it)
    place_outside_layers(model, layers, device)
    return WeightStream(layers, device)


def active(stream: WeightStream | None) -> contextlib.AbstractContextManager[Any]:
    """The stream installed around a block, or nothing without one."""
    return stream.installed() if stream is not None else contextlib.nullcontext()


def weights_fit(weight_bytes: int, settings: Any) -> bool:
    """For runs without a per-method estimate (recovery): do the weights take at most half the
    device budget (``--gpu-memory`` or the free GPU memory)? The other half is for activations,
    the loss head and the trainable state."""
    budget = memory_budget(settings)
    return weight_bytes <= budget / 2
