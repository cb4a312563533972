"""Architecture adapters: the only place that knows where a model family keeps its parts.

Strategies ask the adapter for decoder layers, the seven prunable projections and the head
geometry; they never test model names. Adding a family means adding one entry to ``FAMILIES``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from llmprune.errors import UnsupportedArchitectureError

if TYPE_CHECKING:  # torch is imported by the code that has a model, not by the tables here
    import torch
    from torch import nn

#: Short names of the prunable projections of one decoder layer, in a fixed order.
LINEAR_KEYS: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

#: Projections whose input defines a distinct activation: k and v share q's input, up shares gate's.
INPUT_SOURCES: dict[str, str] = {"q": "q", "k": "q", "v": "q", "o": "o", "gate": "gate", "up": "gate", "down": "down"}


@dataclass(frozen=True)
class Geometry:
    """Head and width geometry of a (dense or uniformly pruned) decoder stack."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_layers: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head (``g`` in methods.md)."""
        return self.num_heads // self.num_kv_heads

    def attn_unit_count(self, attn_unit: str) -> int:
        """Number of attention units per layer: KV groups or query heads."""
        return self.num_kv_heads if attn_unit == "group" else self.num_heads

    def attn_unit_params(self, attn_unit: str) -> int:
        """Linear-weight parameters removed with one attention unit."""
        per_head = self.hidden_size * self.head_dim
        if attn_unit == "group":
            # g query heads (q rows + o columns) plus one k and one v head.
            return per_head * (2 * self.group_size + 2)
        return per_head * 2

    @property
    def mlp_unit_params(self) -> int:
        """Linear-weight parameters of one MLP channel (gate row, up row, down column)."""
        return 3 * self.hidden_size

    def layer_linear_params(self, num_heads: int, num_kv_heads: int, intermediate: int) -> int:
        """Decoder-linear parameters of one layer with the given widths."""
        d, h = self.head_dim, self.hidden_size
        attn = h * d * (2 * num_heads + 2 * num_kv_heads)
        return attn + 3 * h * intermediate

    def attn_params_kept(self, attn_unit: str, kept_units: int) -> int:
        """Attention linear parameters of one layer keeping ``kept_units`` units.

        A kept KV group keeps its g query heads and one KV head; kept query heads keep every KV
        head (none when no query head is left).
        """
        if attn_unit == "group":
            return self.layer_linear_params(kept_units * self.group_size, kept_units, 0)
        return self.layer_linear_params(kept_units, self.num_kv_heads if kept_units else 0, 0)

    @property
    def dense_layer_params(self) -> int:
        """Decoder-linear parameters of one dense layer (the per-layer sparsity denominator)."""
        return self.layer_linear_params(self.num_heads, self.num_kv_heads, self.intermediate_size)

    @property
    def dense_linear_params(self) -> int:
        """Decoder-linear parameters of the whole dense stack (the sparsity denominator)."""
        return self.num_layers * self.dense_layer_params


@dataclass(frozen=True)
class Family:
    """Static description of one model family's module layout."""

    name: str
    model_types: tuple[str, ...]
    #: model_type to re-express a config in when the family's own config class refuses the
    #: pruned geometry (transformers 5.x LlamaConfig rejects hidden % heads != 0; Mistral does not).
    fallback_model_type: str | None = None
    fallback_architecture: str | None = None
    #: Where transformers keeps the family's classes: ``transformers.models.<module>`` with
    #: ``<Prefix>Config`` and ``<Prefix>ForCausalLM`` (the heterogeneous-width export derives from them).
    transformers_module: str = ""
    class_prefix: str = ""


FAMILIES: tuple[Family, ...] = (
    Family(
        "llama",
        ("llama",),
        fallback_model_type="mistral",
        fallback_architecture="MistralForCausalLM",
        transformers_module="llama",
        class_prefix="Llama",
    ),
    Family("mistral", ("mistral",), transformers_module="mistral", class_prefix="Mistral"),
    Family("qwen2", ("qwen2",), transformers_module="qwen2", class_prefix="Qwen2"),
    Family("qwen3", ("qwen3",), transformers_module="qwen3", class_prefix="Qwen3"),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)


def family_named(name: str) -> Family | None:
    """The family called ``name`` (e.g. ``"qwen2"``), or None."""
    return next((f for f in FAMILIES if f.name == name), None)


def family_for_model_type(model_type: str | None) -> Family | None:
    """The family a config's ``model_type`` belongs to, or None when it is not supported."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


_PATHS = {
    "q": ("self_attn", "q_proj"),
    "k": ("self_attn", "k_proj"),
    "v": ("self_attn", "v_proj"),
    "o": ("self_attn", "o_proj"),
    "gate": ("mlp", "gate_proj"),
    "up": ("mlp", "up_proj"),
    "down": ("mlp", "down_proj"),
}


_KEY_OF_PATH = {f"{parent}.{child}": key for key, (parent, child) in _PATHS.items()}
_LINEAR_WEIGHT = re.compile(r"layers\.(\d+)\.(" + "|".join(map(re.escape, _KEY_OF_PATH)) + r")\.weight$")


class ArchAdapter:
    """Locates layers and projections of a supported causal LM and edits its config."""

    def __init__(self, family: Family) -> None:
        self.family = family

    # ----- lookup ---------------------------------------------------------------------------
    @classmethod
    def for_config(cls, config: Any) -> ArchAdapter:
        """Pick the adapter for a config, or fail naming the supported families."""
        model_type = getattr(config, "model_type", None)
        # Heterogeneous-width exports (llmprune.model.hetero) name the family they are built on.
        model_type = getattr(config, "llmprune_base_model_type", None) or model_type
        family = family_for_model_type(model_type)
        if family is not None:
            return cls(family)
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r}; supported model types: " + ", ".join(SUPPORTED_MODEL_TYPES)
        )

    @classmethod
    def for_model(cls, model: nn.Module) -> ArchAdapter:
        return cls.for_config(model.config)

    @classmethod
    def generic(cls) -> ArchAdapter:
        """The module layout every family shares, without a family: reads the tensor names of other
        model types that follow it (e.g. DeciLM exports) without building them."""
        return cls(Family("generic", ()))

    # ----- structure ------------------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return cast("nn.ModuleList", cast("nn.Module", model.model).layers)

    def decoder(self, model: nn.Module) -> nn.Module:
        """The backbone (embeddings, layers, final norm, rotary embedding)."""
        return cast("nn.Module", model.model)

    def attention(self, layer: nn.Module) -> nn.Module:
        return cast("nn.Module", layer.self_attn)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return cast("nn.Module", layer.mlp)

    def linear(self, layer: nn.Module, key: str) -> nn.Linear:
        parent, child = _PATHS[key]
        return getattr(getattr(layer, parent), child)

    def set_linear(self, layer: nn.Module, key: str, module: nn.Module) -> None:
        parent, child = _PATHS[key]
        setattr(getattr(layer, parent), child, module)

    def replace_attention(self, layer: nn.Module, module: nn.Module) -> None:
        layer.self_attn = module

    def replace_mlp(self, layer: nn.Module, module: nn.Module) -> None:
        layer.mlp = module

    def linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        return {key: self.linear(layer, key) for key in LINEAR_KEYS}

    def linear_name(self, layer_index: int, key: str) -> str:
        """Fully qualified parameter-free module name, e.g. ``model.layers.3.mlp.down_proj``."""
        parent, child = _PATHS[key]
        return f"model.layers.{layer_index}.{parent}.{child}"

    def parse_linear_weight(self, tensor_name: str) -> tuple[int, str] | None:
        """``(layer index, key)`` of a checkpoint tensor that is a projection's weight, else None
        (reads checkpoints without building the model, e.g. ``model.layers.3.mlp.down_proj.weight``)."""
        match = _LINEAR_WEIGHT.search(tensor_name)
        return None if match is None else (int(match.group(1)), _KEY_OF_PATH[match.group(2)])

    def geometry(self, model_or_config: Any) -> Geometry:
        config = getattr(model_or_config, "config", model_or_config)
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return Geometry(
            hidden_size=config.hidden_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
        )

    def decoder_linear_params(self, model: nn.Module) -> int:
        """Parameters in decoder-layer linear weights (biases excluded, as in methods.md §0)."""
        return sum(self.linear_params_per_layer(model))

    def linear_params_per_layer(self, model: nn.Module, nonzero: bool = False) -> list[int]:
        """Per decoder layer, the stored linear-weight parameters, or with ``nonzero`` the non-zero
        ones (what a 2:4 output keeps: its weights are stored dense with explicit zeros)."""
        counts = []
        for layer in self.layers(model):
            total = 0
            for parent, child in _PATHS.values():
                # A module pruned away entirely (surgery.NullAttention/NullMLP) has no projections.
                lin = getattr(getattr(layer, parent), child, None)
                if lin is not None:
                    total += int((lin.weight != 0).sum()) if nonzero else lin.weight.numel()
            counts.append(total)
        return counts

    # ----- editing --------------------------------------------------------------------------
    def set_attention_heads(self, layer: nn.Module, num_heads: int, num_kv_heads: int) -> None:
        """Update the attention module's cached head counts after slicing its projections."""
        attn = self.attention(layer)
        if num_kv_heads > 0:
            # torch types Module attributes as tensor or module only; a plain int is fine at runtime
            attn.num_key_value_groups = num_heads // num_kv_heads  # type: ignore[assignment]
        for name, value in (("num_heads", num_heads), ("num_key_value_heads", num_kv_heads)):
            if hasattr(attn, name):
                setattr(attn, name, value)

    def pruned_config(self, config: Any, num_heads: int, num_kv_heads: int, intermediate: int) -> Any:
        """A plain config for a uniformly pruned model, with ``head_dim`` written explicitly.

        Falls back to an equivalent family (Llama → Mistral with no sliding window) when the
        family's own config class refuses the geometry; the fallback computes identical logits.
        """
        head_dim = self.geometry(config).head_dim
        data = config.to_dict()
        data.update(
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            intermediate_size=intermediate,
            head_dim=head_dim,
        )
        try:
            return type(config).from_dict(data)
        except Exception as first_error:  # config classes raise assorted validation errors
            family = self.family
            if family.fallback_model_type is None or data.get("mlp_bias") or data.get("attention_bias"):
                raise UnsupportedArchitectureError(
                    f"{config.model_type} config refuses the pruned geometry "
                    f"({num_heads} heads, hidden {config.hidden_size}): {first_error}"
                ) from first_error
            from transformers import AutoConfig

            data.update(model_type=family.fallback_model_type, sliding_window=None)
            data["architectures"] = [family.fallback_architecture]
            for key in ("mlp_bias", "attention_bias", "pretraining_tp"):
                data.pop(key, None)
            return AutoConfig.for_model(**data)


def weight_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    import torch

    return torch.float32
