"""Block-by-block activation capture, shared by every layer-wise method.

``LayerwiseRunner`` feeds calibration samples through the decoder one layer at a time: it
captures the inputs of layer 0 once, then for each layer collects input statistics of its
projections (column norms for Wanda, ``XᵀX`` for SparseGPT/Týr) in float32, lets the method
edit the layer, and recomputes that layer's outputs as the next layer's inputs (so later layers
see the already-pruned earlier ones). Hidden states live on CPU between layers; only the current
layer sits on the compute device, so peak device memory is one layer plus one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from llmprune.arch import ArchAdapter
from llmprune.errors import NumericalError

#: Projections whose input defines a distinct activation: k and v share q's input, up shares gate's.
INPUT_SOURCES: dict[str, str] = {"q": "q", "k": "q", "v": "q", "o": "o", "gate": "gate", "up": "gate", "down": "down"}


@dataclass
class InputStats:
    """Float32 statistics of one projection input, summed over calibration tokens."""

    sq_norm: torch.Tensor  # [in] sum of x_j^2 (Wanda's ||X_j||^2)
    hessian: torch.Tensor | None = None  # [in, in] sum of x x^T
    tokens: int = 0

    @property
    def col_norm(self) -> torch.Tensor:
        return self.sq_norm.sqrt()


class _StopForward(Exception):
    pass


@dataclass
class LayerInputs:
    """Captured inputs of the current layer: hidden states per batch plus shared kwargs."""

    hidden: list[torch.Tensor]
    kwargs: dict[str, Any] = field(default_factory=dict)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


@torch.no_grad()
def capture_first_layer_inputs(
    model: nn.Module, adapter: ArchAdapter, tokens: torch.Tensor, batch_size: int, device: torch.device
) -> LayerInputs:
    """Run embeddings only and capture what layer 0 receives (hidden states and kwargs)."""
    layer0 = adapter.layers(model)[0]
    captured = LayerInputs(hidden=[])

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        captured.hidden.append(hidden.detach().to("cpu"))
        if not captured.kwargs:
            captured.kwargs = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values")}
            captured.kwargs["use_cache"] = False
        raise _StopForward

    handle = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, tokens.shape[0], batch_size):
            try:
                model(tokens[start : start + batch_size].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    captured.kwargs = {k: _to(v, torch.device("cpu")) for k, v in captured.kwargs.items()}
    return captured


def _layer_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class LayerwiseRunner:
    """Walks the decoder layer by layer with captured calibration activations."""

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchAdapter,
        tokens: torch.Tensor,
        device: torch.device,
        batch_size: int = 8,
    ) -> None:
        self.model, self.adapter, self.device, self.batch_size = model, adapter, device, batch_size
        self.inputs = capture_first_layer_inputs(model, adapter, tokens, batch_size, device)

    @torch.no_grad()
    def collect(self, layer_index: int, layer: nn.Module, keys: Iterable[str], hessian: bool) -> dict[str, InputStats]:
        """Input statistics of the requested projections of ``layer`` over all samples."""
        lin = self.adapter.linears(layer)
        sources = sorted({INPUT_SOURCES[k] for k in keys})
        stats: dict[str, InputStats] = {}
        handles = []
        for src in sources:
            width = lin[src].in_features
            stats[src] = InputStats(
                sq_norm=torch.zeros(width, dtype=torch.float32, device=self.device),
                hessian=torch.zeros(width, width, dtype=torch.float32, device=self.device) if hessian else None,
            )

            def hook(_m, args, _out, s=stats[src], name=src):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                if not torch.isfinite(x).all():
                    raise NumericalError(
                        f"non-finite activations at the input of layer {layer_index} {name} "
                        "(fp16 overflow? use --dtype float32 or bfloat16)"
                    )
                s.sq_norm += (x * x).sum(0)
                if s.hessian is not None:
                    s.hessian.addmm_(x.T, x)
                s.tokens += x.shape[0]

            handles.append(lin[src].register_forward_hook(hook))
        try:
            self._forward(layer, keep=False)
        finally:
            for h in handles:
                h.remove()
        return {k: stats[INPUT_SOURCES[k]] for k in keys}

    @torch.no_grad()
    def _forward(self, layer: nn.Module, keep: bool) -> list[torch.Tensor]:
        kwargs = {k: _to(v, self.device) for k, v in self.inputs.kwargs.items()}
        outputs = []
        for hidden in self.inputs.hidden:
            out = _layer_output(layer(hidden.to(self.device), **kwargs))
            if keep:
                outputs.append(out.to("cpu"))
        return outputs

    @torch.no_grad()
    def advance(self, layer: nn.Module) -> None:
        """Replace the captured inputs by this (possibly pruned) layer's outputs."""
        self.inputs.hidden = self._forward(layer, keep=True)

    def run(
        self,
        process: Callable[[int, nn.Module], None],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Call ``process(i, layer)`` for each layer in order, moving it to the device first."""
        layers = self.adapter.layers(self.model)
        for i, layer in enumerate(layers):
            home = next(layer.parameters()).device
            layer.to(self.device)
            process(i, layer)
            self.advance(layer)
            layer.to(home)
            if progress:
                progress(i)
