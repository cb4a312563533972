"""Export of heterogeneous per-layer widths (global pruning), methods.md §5.

A non-uniform plan cannot be described by a standard config. We write, beside the weights:

- ``config.json`` of a small config class derived from the family's own config class, with the
  dense geometry plus ``layer_widths`` (query heads, KV heads, MLP channels of every layer) and an
  ``auto_map`` pointing at
- ``modeling_llmprune.py``: the config class and a causal-LM class derived from the family's
  transformers classes (``LlamaForCausalLM`` …) that resizes each decoder layer's projections to
  its widths; a module pruned to 0 heads/channels becomes a no-op.

So ``AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)`` works in a clean process
with plain transformers. When ``llmprune`` is installed, ``register_auto_classes()`` (called
lazily by ``llmprune.loading``) registers the same classes with the Auto classes, so the folder
also loads without ``trust_remote_code``. Both paths execute the same source text (``TEMPLATE``).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from llmprune import arch
from llmprune.plan import PrunePlan

MODELING_FILE = "modeling_llmprune.py"
MODEL_TYPE_PREFIX = "llmprune_hetero_"

TEMPLATE = '''\
"""Heterogeneous-width {prefix} model written by llmprune (global structured pruning).

Every decoder layer has its own number of query heads, KV heads and MLP channels
(``config.layer_widths``); a layer whose attention or MLP was pruned entirely skips it.
Load with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.
Needs only torch and transformers.
"""

import torch
from torch import nn
from transformers.models.{module}.configuration_{module} import {prefix}Config as _BaseConfig
from transformers.models.{module}.modeling_{module} import {prefix}ForCausalLM as _BaseForCausalLM

BASE_MODEL_TYPE = "{family}"


class LlmpruneHeteroConfig(_BaseConfig):
    """The family's config plus ``layer_widths``: one dict per layer with ``num_attention_heads``,
    ``num_key_value_heads`` and ``intermediate_size``."""

    model_type = "{model_type}"
    llmprune_base_model_type = BASE_MODEL_TYPE


class NullAttention(nn.Module):
    """Attention pruned to zero heads: adds nothing to the residual stream."""

    def __init__(self, layer_idx, head_dim):
        super().__init__()
        self.layer_idx, self.head_dim = layer_idx, head_dim

    def forward(self, hidden_states, *args, past_key_values=None, **kwargs):
        if past_key_values is not None:  # keep cache lengths consistent for generation
            empty = hidden_states.new_zeros(hidden_states.shape[0], 0, hidden_states.shape[1], self.head_dim)
            past_key_values.update(empty, empty, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class NullMLP(nn.Module):
    """MLP pruned to zero channels: adds nothing to the residual stream."""

    def forward(self, hidden_states):
        return torch.zeros_like(hidden_states)


def _linear(old, in_features, out_features):
    return nn.Linear(in_features, out_features, bias=old.bias is not None,
                     device=old.weight.device, dtype=old.weight.dtype)


def apply_layer_widths(model, config):
    """Resize every decoder layer of a freshly built dense model to ``config.layer_widths``."""
    widths = getattr(config, "layer_widths", None) or []
    hidden = config.hidden_size
    for index, (layer, width) in enumerate(zip(model.model.layers, widths)):
        heads, kv_heads = width["num_attention_heads"], width["num_key_value_heads"]
        channels = width["intermediate_size"]
        attn = layer.self_attn
        head_dim = attn.head_dim
        if heads == 0:
            layer.self_attn = NullAttention(index, head_dim)
        elif (heads, kv_heads) != (config.num_attention_heads, config.num_key_value_heads):
            attn.q_proj = _linear(attn.q_proj, hidden, heads * head_dim)
            attn.k_proj = _linear(attn.k_proj, hidden, kv_heads * head_dim)
            attn.v_proj = _linear(attn.v_proj, hidden, kv_heads * head_dim)
            attn.o_proj = _linear(attn.o_proj, heads * head_dim, hidden)
            attn.num_key_value_groups = heads // kv_heads
        mlp = layer.mlp
        if channels == 0:
            layer.mlp = NullMLP()
        elif channels != config.intermediate_size:
            mlp.gate_proj = _linear(mlp.gate_proj, hidden, channels)
            mlp.up_proj = _linear(mlp.up_proj, hidden, channels)
            mlp.down_proj = _linear(mlp.down_proj, channels, hidden)
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = channels


class LlmpruneHeteroForCausalLM(_BaseForCausalLM):
    config_class = LlmpruneHeteroConfig

    def __init__(self, config):
        super().__init__(config)
        apply_layer_widths(self, config)
'''


def family_of(model_type: str) -> str:
    """The family name (``arch.FAMILIES``) of a model type or of its heterogeneous-width export."""
    family = arch.family_for_model_type(model_type.removeprefix(MODEL_TYPE_PREFIX))
    if family is None or not family.transformers_module:
        raise ValueError(f"no heterogeneous-width export for model type {model_type!r}")
    return family.name


def modeling_source(family: str) -> str:
    spec = arch.family_named(family)
    if spec is None:
        raise ValueError(f"no heterogeneous-width export for family {family!r}")
    return TEMPLATE.format(module=spec.transformers_module, prefix=spec.class_prefix, family=family,
                           model_type=MODEL_TYPE_PREFIX + family)


_MODULES: dict[str, types.ModuleType] = {}


def family_module(family: str) -> types.ModuleType:
    """The modeling file of ``family`` executed as a module (same text as the exported file)."""
    if family not in _MODULES:
        module = types.ModuleType(f"llmprune_hetero_{family}")
        exec(compile(modeling_source(family), f"<{MODELING_FILE}:{family}>", "exec"), module.__dict__)
        _MODULES[family] = module
    return _MODULES[family]


_registered = False


def register_auto_classes() -> None:
    """Register every family's heterogeneous config/model with AutoConfig/AutoModelForCausalLM."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    for family in (f.name for f in arch.FAMILIES if f.transformers_module):
        module = family_module(family)
        try:
            AutoConfig.register(module.LlmpruneHeteroConfig.model_type, module.LlmpruneHeteroConfig, exist_ok=True)
            AutoModelForCausalLM.register(module.LlmpruneHeteroConfig, module.LlmpruneHeteroForCausalLM, exist_ok=True)
        except TypeError:  # older transformers without exist_ok
            AutoConfig.register(module.LlmpruneHeteroConfig.model_type, module.LlmpruneHeteroConfig)
            AutoModelForCausalLM.register(module.LlmpruneHeteroConfig, module.LlmpruneHeteroForCausalLM)
    _registered = True


def layer_widths(plan: PrunePlan) -> list[dict[str, int]]:
    return [
        {"num_attention_heads": len(lp.heads), "num_key_value_heads": len(lp.kv_heads),
         "intermediate_size": len(lp.channels)}
        for lp in plan.layers
    ]


def hetero_config(config: Any, plan: PrunePlan) -> Any:
    """A heterogeneous-width config for ``plan`` built from the dense model's ``config``."""
    base_type = getattr(config, "llmprune_base_model_type", None) or config.model_type
    family = family_of(base_type)
    module = family_module(family)
    data = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "layer_widths"):
        data.pop(key, None)
    hetero = module.LlmpruneHeteroConfig(**data)
    hetero.layer_widths = layer_widths(plan)
    hetero.architectures = ["LlmpruneHeteroForCausalLM"]
    hetero.auto_map = {
        "AutoConfig": f"{MODELING_FILE[:-3]}.LlmpruneHeteroConfig",
        "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.LlmpruneHeteroForCausalLM",
    }
    return hetero


def is_hetero_config(config: Any) -> bool:
    """Whether ``config`` is a heterogeneous-width config (its folder needs the modeling file)."""
    return str(getattr(config, "model_type", "")).startswith(MODEL_TYPE_PREFIX)


def write_modeling_file(folder: Path, config: Any) -> Path:
    """Write ``modeling_llmprune.py`` for the config's family into ``folder``."""
    family = family_of(config.model_type)
    path = Path(folder) / MODELING_FILE
    path.write_text(modeling_source(family))
    return path
