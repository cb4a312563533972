"""Export of heterogeneous per-layer widths (global pruning), methods.md §5.

A non-uniform plan cannot be described by a standard config. We write, beside the weights:

- ``config.json`` of a small config class derived from the family's own config class, with the
  dense geometry plus ``layer_widths`` (query heads, KV heads, MLP channels of every layer) and an
  ``auto_map`` pointing at
- ``modeling_llmprune.py``: the config class, a base-model and a causal-LM class derived from the
  family's transformers classes (``LlamaModel``, ``LlamaForCausalLM`` …) that resize each decoder
  layer's projections to its widths; a module pruned to 0 heads/channels becomes a no-op.
  ``save_pretrained`` of these classes writes the file and the ``auto_map`` again.

So ``AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)`` works in a clean process
with plain transformers. After ``import llmprune``, ``register_family`` (called lazily by the
hooks in ``llmprune.model.autoregister``, or for all families by ``register_auto_classes()``) registers
the same classes with the Auto classes, so the folder also loads without ``trust_remote_code``.
Both paths execute the same source text (``TEMPLATE``); the executed module is kept in
``sys.modules`` (``torch.compile`` looks classes up by module name).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

from llmprune.model import arch
from llmprune.model.plan import PrunePlan

MODELING_FILE = "modeling_llmprune.py"
MODEL_TYPE_PREFIX = "llmprune_hetero_"

TEMPLATE = """\
\"\"\"Heterogeneous-width {prefix} model written by llmprune (global structured pruning).

Every decoder layer has its own number of query heads, KV heads and MLP channels
(``config.layer_widths``); a layer whose attention or MLP was pruned entirely skips it.
Load with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` (or without
``trust_remote_code`` after ``import llmprune``). Needs only torch and transformers.
\"\"\"

import os
import sys

import torch
from torch import nn
from transformers.models.{module}.configuration_{module} import {prefix}Config as _BaseConfig
from transformers.models.{module}.modeling_{module} import {prefix}ForCausalLM as _BaseForCausalLM
from transformers.models.{module}.modeling_{module} import {prefix}Model as _BaseModel

BASE_MODEL_TYPE = "{family}"
MODEL_TYPE = "{model_type}"
MODELING_FILE = "modeling_llmprune.py"
AUTO_MAP = {{
    "AutoConfig": "modeling_llmprune.LlmpruneHeteroConfig",
    "AutoModel": "modeling_llmprune.LlmpruneHeteroModel",
    "AutoModelForCausalLM": "modeling_llmprune.LlmpruneHeteroForCausalLM",
}}


class LlmpruneHeteroConfig(_BaseConfig):
    \"\"\"The family's config plus ``layer_widths``: one dict per layer with ``num_attention_heads``,
    ``num_key_value_heads`` and ``intermediate_size``.\"\"\"

    model_type = MODEL_TYPE
    llmprune_base_model_type = BASE_MODEL_TYPE


class NullAttention(nn.Module):
    \"\"\"Attention pruned to zero heads: adds nothing to the residual stream.\"\"\"

    def __init__(self, layer_idx, head_dim):
        super().__init__()
        self.layer_idx, self.head_dim = layer_idx, head_dim

    def forward(self, hidden_states, *args, past_key_values=None, **kwargs):
        if past_key_values is not None:  # keep cache lengths consistent for generation
            empty = hidden_states.new_zeros(hidden_states.shape[0], 0, hidden_states.shape[1], self.head_dim)
            past_key_values.update(empty, empty, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class NullMLP(nn.Module):
    \"\"\"MLP pruned to zero channels: adds nothing to the residual stream.\"\"\"

    def forward(self, hidden_states):
        return torch.zeros_like(hidden_states)


def _linear(old, in_features, out_features):
    return nn.Linear(in_features, out_features, bias=old.bias is not None,
                     device=old.weight.device, dtype=old.weight.dtype)


def apply_layer_widths(layers, config, widths=None):
    \"\"\"Resize the decoder layers of a freshly built dense model to ``widths`` (default
    ``config.layer_widths``).\"\"\"
    widths = widths if widths is not None else (getattr(config, "layer_widths", None) or [])
    hidden = config.hidden_size
    for index, (layer, width) in enumerate(zip(layers, widths)):
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


def register_peft_targets(model_type=MODEL_TYPE):
    \"\"\"Give PEFT's default-target tables (LoRA, IA3, ...) an entry for ``model_type``, copied
    from the base family's, so ``LoraConfig()`` without ``target_modules`` works. Only touches PEFT
    when it is already imported; ``import llmprune`` also does it when PEFT is imported later.\"\"\"
    constants = sys.modules.get("peft.utils.constants")
    if constants is None:
        return
    for name in dir(constants):
        table = getattr(constants, name)
        if name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(table, dict) and BASE_MODEL_TYPE in table:
            table.setdefault(model_type, table[BASE_MODEL_TYPE])


def _source_text():
    # Registered (``import llmprune``) path: the text is injected; remote-code path: this file.
    text = globals().get("LLMPRUNE_MODELING_SOURCE")
    if text is None:
        with open(__file__, encoding="utf-8") as handle:
            text = handle.read()
    return text


class _SavesModelingFile:
    \"\"\"``save_pretrained`` also writes this modeling file and the ``auto_map`` pointing at it, so a
    saved copy (e.g. after a LoRA merge) loads in a fresh process like the original folder.\"\"\"

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            target = os.path.join(str(save_directory), MODELING_FILE)
            if not os.path.exists(target):
                with open(target, "w", encoding="utf-8") as handle:
                    handle.write(_source_text())


class LlmpruneHeteroModel(_SavesModelingFile, _BaseModel):
    config_class = LlmpruneHeteroConfig

    def __init__(self, config):
        super().__init__(config)
        apply_layer_widths(self.layers, config)
        register_peft_targets()


class LlmpruneHeteroForCausalLM(_SavesModelingFile, _BaseForCausalLM):
    config_class = LlmpruneHeteroConfig

    def __init__(self, config):
        super().__init__(config)
        apply_layer_widths(self.model.layers, config)
        register_peft_targets()
"""


def hetero_families() -> list[str]:
    """Names of the families (``arch.FAMILIES``) whose transformers classes the export derives from."""
    return [f.name for f in arch.FAMILIES if f.transformers_module]


def family_of(model_type: str) -> str:
    """The family name (``arch.FAMILIES``) of a model type or of its heterogeneous-width export."""
    family = arch.family_for_model_type(model_type.removeprefix(MODEL_TYPE_PREFIX))
    if family is None or not family.transformers_module:
        raise ValueError(f"no heterogeneous-width export for model type {model_type!r}")
    return family.name


def modeling_source(family: str) -> str:
    spec = arch.family_named(family)
    if spec is None or not spec.transformers_module:
        raise ValueError(f"no heterogeneous-width export for family {family!r}")
    return TEMPLATE.format(
        module=spec.transformers_module, prefix=spec.class_prefix, family=family, model_type=MODEL_TYPE_PREFIX + family
    )


def is_hetero_config(config: Any) -> bool:
    """Whether ``config`` is a heterogeneous-width config (its folder needs the modeling file)."""
    return str(getattr(config, "model_type", "")).startswith(MODEL_TYPE_PREFIX)


_MODULES: dict[str, types.ModuleType] = {}


def module_name(family: str) -> str:
    """Import name of the executed modeling module (kept in ``sys.modules`` so that pickling and
    ``torch.compile``, which look classes up by ``__module__``, find it)."""
    return f"llmprune._hetero_modeling_{family}"


def family_module(family: str) -> types.ModuleType:
    """The modeling file of ``family`` executed as a module (same text as the exported file)."""
    if family not in _MODULES:
        name = module_name(family)
        module = types.ModuleType(name)
        source = modeling_source(family)
        module.__dict__["LLMPRUNE_MODELING_SOURCE"] = source  # what save_pretrained writes
        sys.modules[name] = module
        try:
            exec(compile(source, f"<{MODELING_FILE}:{family}>", "exec"), module.__dict__)
        except BaseException:
            del sys.modules[name]
            raise
        _MODULES[family] = module
    return _MODULES[family]


_REGISTERED: set[str] = set()


def register_family(family: str) -> None:
    """Register one family's heterogeneous classes with AutoConfig, AutoModel and
    AutoModelForCausalLM (and PEFT's default-target tables when PEFT is imported)."""
    if family in _REGISTERED:
        return
    _REGISTERED.add(family)
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    module = family_module(family)
    config_cls = module.LlmpruneHeteroConfig
    AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    AutoModel.register(config_cls, module.LlmpruneHeteroModel, exist_ok=True)
    AutoModelForCausalLM.register(config_cls, module.LlmpruneHeteroForCausalLM, exist_ok=True)
    module.register_peft_targets()


def register_auto_classes() -> None:
    """Register every family's heterogeneous classes now (``import llmprune`` does it lazily,
    see ``llmprune.model.autoregister``)."""
    for family in hetero_families():
        register_family(family)


def register_peft_targets(constants: types.ModuleType | None = None) -> None:
    """Default LoRA/IA3/... targets for every heterogeneous model type, copied from its family's
    (``peft.utils.constants``; nothing happens when PEFT is not imported)."""
    constants = constants or sys.modules.get("peft.utils.constants")
    if constants is None:
        return
    for name in dir(constants):
        table = getattr(constants, name)
        if name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(table, dict):
            for family in hetero_families():
                if family in table:
                    table.setdefault(MODEL_TYPE_PREFIX + family, table[family])


def layer_widths(plan: PrunePlan) -> list[dict[str, int]]:
    return [
        {
            "num_attention_heads": len(lp.heads),
            "num_key_value_heads": len(lp.kv_heads),
            "intermediate_size": len(lp.channels),
        }
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
    hetero.auto_map = dict(module.AUTO_MAP)
    return hetero


def write_modeling_file(folder: Path, config: Any) -> Path:
    """Write ``modeling_llmprune.py`` for the config's family into ``folder``."""
    family = family_of(config.model_type)
    path = Path(folder) / MODELING_FILE
    path.write_text(modeling_source(family))
    return path
