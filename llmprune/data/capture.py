"""Block-by-block activation capture, shared by every layer-wise method.

``LayerwiseRunner`` feeds calibration samples through the decoder one layer at a time: it
captures the inputs of layer 0 once, then for each layer collects input statistics of its
projections (column norms for Wanda, ``XᵀX`` for SparseGPT/Týr) in float32, lets the method
edit the layer, and recomputes that layer's outputs as the next layer's inputs (so later layers
see the already-pruned earlier ones). Hidden states live on CPU between layers; only the current
layer sits on the compute device, so peak device memory is one layer plus one batch.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmprune.errors import NumericalError
from llmprune.model.arch import INPUT_SOURCES, ArchAdapter
from llmprune.runtime import distributed


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


class ActivationStore:
    """Hidden states of the calibration batches, in memory or offloaded to disk (``--offload-dir``).

    Behaves like the list it replaces: ``append``, iteration, indexing and ``len``.
    """

    _ids = itertools.count()

    def __init__(self, offload_dir: Path | None = None) -> None:
        # Under torchrun, ranks sharing an --offload-dir get their own folders.
        suffix = f"-rank{distributed.rank()}" if distributed.is_enabled() else ""
        self.folder = None if offload_dir is None else Path(offload_dir) / f"activations-{next(self._ids)}{suffix}"
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self._items: list[torch.Tensor | Path] = []

    def append(self, tensor: torch.Tensor) -> None:
        if self.folder is None:
            self._items.append(tensor)
            return
        path = self.folder / f"batch-{len(self._items):05d}.pt"
        torch.save(tensor.contiguous(), path)
        self._items.append(path)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self._items[index]
        return torch.load(item, weights_only=True) if isinstance(item, Path) else item

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self._items)))

    def __len__(self) -> int:
        return len(self._items)

    def release(self) -> None:
        """Delete offloaded files (the store is empty afterwards)."""
        self._items = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _cast(value: Any, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return value
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    return value


@dataclass
class LayerInputs:
    """Captured inputs of the current layer: hidden states per batch plus shared kwargs."""

    hidden: ActivationStore
    kwargs: dict[str, Any] = field(default_factory=dict)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


@torch.no_grad()
def capture_first_layer_inputs(
    model: nn.Module,
    adapter: ArchAdapter,
    tokens: torch.Tensor,
    batch_size: int,
    device: torch.device,
    compute_dtype: torch.dtype | None = None,
    offload_dir: Path | None = None,
) -> LayerInputs:
    """Run embeddings only and capture what layer 0 receives (hidden states and kwargs).

    The embeddings run where they live (``device`` is where the model's first parameters are);
    captured tensors are kept on CPU (or on disk) in ``compute_dtype``.
    """
    layer0 = adapter.layers(model)[0]
    captured = LayerInputs(hidden=ActivationStore(offload_dir))

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        captured.hidden.append(_cast(hidden.detach().to("cpu"), compute_dtype))
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
    captured.kwargs = {k: _cast(_to(v, torch.device("cpu")), compute_dtype) for k, v in captured.kwargs.items()}
    return captured


def _layer_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class LayerwiseRunner:
    """Walks the decoder layer by layer with captured calibration activations.

    With ``compute_dtype``, ``run`` casts each layer to it while the layer is processed (so a
    bf16 model kept on CPU is pruned in float32 one layer at a time) and back afterwards.
    With ``offload_dir``, hidden states between layers live on disk instead of in memory.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchAdapter,
        tokens: torch.Tensor,
        device: torch.device,
        batch_size: int = 8,
        compute_dtype: torch.dtype | None = None,
        offload_dir: Path | None = None,
    ) -> None:
        self.model, self.adapter, self.device, self.batch_size = model, adapter, device, batch_size
        self.compute_dtype, self.offload_dir = compute_dtype, offload_dir
        # Under torchrun each rank walks its shard of the samples; ``collect`` all-reduces the sums.
        tokens = distributed.shard_rows(tokens)
        embed_device = next(model.parameters()).device
        self.inputs = capture_first_layer_inputs(
            model, adapter, tokens, batch_size, embed_device, compute_dtype, offload_dir
        )

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
        error: NumericalError | None = None
        try:
            self._forward(layer, keep=False)
        except NumericalError as err:
            if not distributed.is_enabled():
                raise
            error = err
        finally:
            for h in handles:
                h.remove()
        if distributed.is_enabled():
            self._all_reduce(layer_index, stats, error)
        return {k: stats[INPUT_SOURCES[k]] for k in keys}

    @staticmethod
    def _all_reduce(layer_index: int, stats: dict[str, InputStats], error: NumericalError | None) -> None:
        """Sum every rank's statistics (each rank saw its shard), so all ranks hold the totals."""
        if distributed.any_rank(error is not None):
            raise error or NumericalError(f"non-finite activations at the input of layer {layer_index} on another rank")
        for src in sorted(stats):
            s = stats[src]
            distributed.all_reduce_sum(s.sq_norm)
            if s.hessian is not None:
                distributed.all_reduce_sum(s.hessian)
            s.tokens = int(distributed.all_reduce_floats([s.tokens])[0])

    @torch.no_grad()
    def _forward(self, layer: nn.Module, keep: bool) -> ActivationStore | None:
        kwargs = {k: _to(v, self.device) for k, v in self.inputs.kwargs.items()}
        outputs = ActivationStore(self.offload_dir) if keep else None
        for hidden in self.inputs.hidden:
            out = _layer_output(layer(hidden.to(self.device), **kwargs))
            if outputs is not None:
                outputs.append(out.to("cpu"))
        return outputs

    @torch.no_grad()
    def advance(self, layer: nn.Module) -> None:
        """Replace the captured inputs by this (possibly pruned) layer's outputs."""
        outputs = self._forward(layer, keep=True)
        assert outputs is not None  # keep=True always returns the store
        self.inputs.hidden.release()
        self.inputs.hidden = outputs

    def run(
        self,
        process: Callable[[int, nn.Module], None],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Call ``process(i, layer)`` for each layer in order, moving it to the device first."""
        layers = self.adapter.layers(self.model)
        for i, layer in enumerate(layers):
            first = next(layer.parameters())
            home_device, home_dtype = first.device, first.dtype
            layer.to(device=self.device, dtype=self.compute_dtype or home_dtype)
            process(i, layer)
            self.advance(layer)
            layer.to(device=home_device, dtype=home_dtype)
            if progress:
                progress(i)
        self.inputs.hidden.release()
