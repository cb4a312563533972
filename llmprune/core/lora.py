"""LoRA adapters on frozen ``nn.Linear`` projections, merged into the weights before export.

``LoRALinear`` wraps a linear layer: ``y = base(x) + scale · B(A(x))`` with ``A: [r, in]``,
``B: [out, r]``, ``scale = alpha / r``; ``B`` starts at zero so the wrapped model computes
exactly the original function. Adapter parameters are float32 whatever the base dtype (the
product is cast back to the base output dtype). ``merged_weight`` returns ``W + scale · B A``
in float32, in the dense coordinates of the wrapped layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmprune.model.arch import LINEAR_KEYS, ArchAdapter


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update."""

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator, device: torch.device | None = None
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        device = device or base.weight.device  # the compute device, also when the base waits on the host
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming-uniform(a=sqrt(5)), as nn.Linear and peft
        a = (torch.rand(rank, base.in_features, generator=generator, dtype=torch.float32) * 2 - 1) * bound
        self.lora_a = nn.Parameter(a.to(device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32, device=device))

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        delta = F.linear(_UpcastLinear.apply(x, self.lora_a), self.lora_b) * self.scale
        return out + delta.to(out.dtype)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``W + scale · B A`` in float32 (dense coordinates)."""
        w = self.base.weight  # on the host when the layers are streamed (llmprune.model.streaming)
        return w.float() + (self.scale * (self.lora_b @ self.lora_a)).to(w.device)


class _UpcastLinear(torch.autograd.Function):
    """``x.to(A.dtype) @ Aᵀ`` saving ``x`` in its own dtype for backward, not its float32 copy.

    Autograd would keep the upcast input of every wrapped projection alive until backward
    (``tokens × in`` float32 each: the largest term of LoRA's memory under bfloat16). Here the copy
    is made again in backward, one projection at a time; the arithmetic is the same (the same
    matrix products, in float32), so gradients equal autograd's.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, a)
        return F.linear(x.to(a.dtype), a)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, a = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_x = grad_a = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            grad_x = (grad @ a).to(x.dtype)
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]
            g2 = grad.reshape(-1, grad.shape[-1])
            grad_a = g2.t() @ x.reshape(-1, x.shape[-1]).to(a.dtype)
        return grad_x, grad_a


def add_lora(
    model: nn.Module, adapter: ArchAdapter, rank: int, alpha: float, seed: int, keys: tuple[str, ...] = LINEAR_KEYS
) -> dict[str, LoRALinear]:
    """Wrap the ``keys`` projections of every decoder layer; returns {module name: wrapper}."""
    gen = torch.Generator().manual_seed(seed)
    wrapped: dict[str, LoRALinear] = {}
    for i, layer in enumerate(adapter.layers(model)):
        for key in keys:
            base = adapter.linear(layer, key)
            module = LoRALinear(base, rank, alpha, gen)
            adapter.set_linear(layer, key, module)
            wrapped[adapter.linear_name(i, key)] = module
    return wrapped


def remove_lora(model: nn.Module, adapter: ArchAdapter) -> None:
    """Put the original (unchanged) linear layers back."""
    for layer in adapter.layers(model):
        for key in LINEAR_KEYS:
            module = adapter.linear(layer, key)
            if isinstance(module, LoRALinear):
                adapter.set_linear(layer, key, module.base)


def lora_parameters(wrapped: dict[str, LoRALinear]) -> list[nn.Parameter]:
    return [p for m in wrapped.values() for p in (m.lora_a, m.lora_b)]


def lora_state(wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """Adapter tensors by ``<module>.lora_a`` / ``<module>.lora_b`` (for checkpoints)."""
    state = {}
    for name, m in wrapped.items():
        state[f"{name}.lora_a"] = m.lora_a.detach().cpu().clone()
        state[f"{name}.lora_b"] = m.lora_b.detach().cpu().clone()
    return state


@torch.no_grad()
def load_lora_state(wrapped: dict[str, LoRALinear], state: dict[str, torch.Tensor]) -> None:
    for name, m in wrapped.items():
        m.lora_a.copy_(state[f"{name}.lora_a"])
        m.lora_b.copy_(state[f"{name}.lora_b"])


def merged_weights(wrapped: dict[str, LoRALinear], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Merged weights of every wrapped module, keyed by module name (dense coordinates)."""
    out = {}
    for name, m in wrapped.items():
        w = m.merged_weight()
        out[name] = w.to(dtype or m.base.weight.dtype)
    return out
