"""Apply a PrunePlan to a model: zero removed units (masking) or slice them away (surgery).

Masking keeps shapes and is what strategies use while they search; slicing produces the smaller
dense model that is exported. For a structured plan both compute the same function: a removed
head's query rows and output columns are zero, so its (uniform) attention contributes nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from llmprune.model.arch import ArchAdapter
from llmprune.model.plan import LayerPlan, PrunePlan


def _rows(head_indices: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + r for h in head_indices for r in range(head_dim)], dtype=torch.long)


def _complement(kept: list[int], total: int) -> list[int]:
    keep = set(kept)
    return [i for i in range(total) if i not in keep]


class NullAttention(nn.Module):
    """An attention block pruned to 0 heads: contributes nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class NullMLP(nn.Module):
    """An MLP pruned to 0 channels: contributes nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


@torch.no_grad()
def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` (0 = output rows, 1 = input columns)."""
    weight = linear.weight.index_select(dim, index.to(linear.weight.device)).clone()
    bias: torch.Tensor | None = linear.bias
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index.to(bias.device)).clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    return new


@torch.no_grad()
def mask_layer(layer: nn.Module, adapter: ArchAdapter, lp: LayerPlan, geom) -> None:
    """Zero the weights of the units ``lp`` removes, in place (shapes unchanged)."""
    d = geom.head_dim
    lin = adapter.linears(layer)
    dropped_heads = _complement(lp.heads, geom.num_heads)
    dropped_kv = _complement(lp.kv_heads, geom.num_kv_heads)
    dropped_ch = _complement(lp.channels, geom.intermediate_size)
    if dropped_heads:
        rows = _rows(dropped_heads, d)
        lin["q"].weight[rows] = 0
        if lin["q"].bias is not None:
            lin["q"].bias[rows] = 0
        lin["o"].weight[:, rows] = 0
    if dropped_kv:
        rows = _rows(dropped_kv, d)
        for key in ("k", "v"):
            lin[key].weight[rows] = 0
            if lin[key].bias is not None:
                lin[key].bias[rows] = 0
    if dropped_ch:
        ch = torch.tensor(dropped_ch, dtype=torch.long)
        lin["gate"].weight[ch] = 0
        lin["up"].weight[ch] = 0
        lin["down"].weight[:, ch] = 0
        for key in ("gate", "up"):
            if lin[key].bias is not None:
                lin[key].bias[ch] = 0


def mask_structured(model: nn.Module, adapter: ArchAdapter, plan: PrunePlan) -> None:
    """Zero every unit the plan removes, in every layer."""
    geom = adapter.geometry(model)
    layers = adapter.layers(model)
    for lp in plan.layers:
        mask_layer(layers[lp.index], adapter, lp, geom)


@torch.no_grad()
def apply_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy replacement weights (dense coordinates) into the named modules' ``weight``."""
    modules = dict(model.named_modules())
    for name, value in weights.items():
        target = modules[name].weight
        target.copy_(value.to(device=target.device, dtype=target.dtype))


@torch.no_grad()
def slice_layer(layer: nn.Module, adapter: ArchAdapter, lp: LayerPlan, head_dim: int) -> None:
    """Physically remove the units ``lp`` drops from one decoder layer."""
    lin = adapter.linears(layer)
    if not lp.heads:
        adapter.replace_attention(layer, NullAttention())
    else:
        q_rows, kv_rows = _rows(lp.heads, head_dim), _rows(lp.kv_heads, head_dim)
        for key, index, dim in (("q", q_rows, 0), ("k", kv_rows, 0), ("v", kv_rows, 0), ("o", q_rows, 1)):
            adapter.set_linear(layer, key, slice_linear(lin[key], index, dim))
        adapter.set_attention_heads(layer, len(lp.heads), len(lp.kv_heads))
    if not lp.channels:
        adapter.replace_mlp(layer, NullMLP())
    else:
        ch = torch.tensor(lp.channels, dtype=torch.long)
        for key, dim in (("gate", 0), ("up", 0), ("down", 1)):
            adapter.set_linear(layer, key, slice_linear(lin[key], ch, dim))
        mlp = adapter.mlp(layer)
        if hasattr(mlp, "intermediate_size"):
            # torch types Module attributes as tensor or module only; a plain int is fine at runtime
            mlp.intermediate_size = len(lp.channels)  # type: ignore[assignment]


def slice_structured(model: nn.Module, adapter: ArchAdapter, plan: PrunePlan) -> None:
    """Slice every layer per the plan (replacement weights first, in dense coordinates).

    The in-memory config keeps the dense values (modules infer head counts from shapes and the
    attention modules' cached counts are updated); ``exported_config`` builds the config to save.
    """
    geom = adapter.geometry(model)
    if plan.weights:
        apply_weights(model, plan.weights)
    layers = adapter.layers(model)
    for lp in plan.layers:
        slice_layer(layers[lp.index], adapter, lp, geom.head_dim)


def exported_config(model: nn.Module, adapter: ArchAdapter, plan: PrunePlan):
    """The config written for the model after ``apply_plan`` (the one place that decides it).

    Uniform structured plans get a plain config with updated head counts and width, ``head_dim``
    explicit (methods.md §5); non-uniform plans the heterogeneous-width config of
    ``llmprune.model.hetero`` (per-layer widths, modeling file beside the weights); 2:4 and identity
    plans keep the original config.
    """
    if plan.kind != "structured" or not plan.layers:
        return model.config
    if not plan.is_uniform:
        from llmprune.model.hetero import hetero_config

        return hetero_config(model.config, plan)
    first = plan.layers[0]
    return adapter.pruned_config(model.config, len(first.heads), len(first.kv_heads), len(first.channels))


@torch.no_grad()
def apply_semi24(model: nn.Module, plan: PrunePlan) -> None:
    """Apply replacement weights, then in-memory 2:4 masks, to the named modules."""
    if plan.weights:
        apply_weights(model, plan.weights)
    modules = dict(model.named_modules())
    for name, mask in plan.masks.items():
        weight = modules[name].weight
        weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


def apply_plan(model: nn.Module, adapter: ArchAdapter, plan: PrunePlan) -> None:
    """Turn the model into its pruned form: slice (structured) or mask (2:4)."""
    if plan.kind == "structured":
        slice_structured(model, adapter, plan)
    else:
        apply_semi24(model, plan)
