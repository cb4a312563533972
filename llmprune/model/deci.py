"""``--export-format deci``: write a structured output as a DeciLM / Nemotron-NAS folder.

vLLM (``DeciLMForCausalLM``, ``nemotron_nas.py``) and llama.cpp (``convert_hf_to_gguf.py``, arch
``deci``) serve models whose layers differ, described by ``config.block_configs``: per layer,

- ``attention``: ``no_op`` (no attention, no input norm), or ``n_heads_in_group`` — the layer has
  ``num_attention_heads`` query heads (the same in every layer) and
  ``num_attention_heads // n_heads_in_group`` KV heads;
- ``ffn``: ``no_op`` (no MLP, no post-attention norm), or ``ffn_mult`` — the MLP width is
  ``int(2·ffn_mult·hidden/3)`` rounded *up* to a multiple of 256.

Our layers keep any number of query heads, KV heads and channels, so the export pads with zeros
where the format cannot express a width, which computes exactly the same function:

- query heads: every kept KV head gets ``H / k'`` query-head slots (``k'`` = the smallest divisor
  of ``H`` that is ≥ the kept KV heads, extra KV heads are zero); kept query heads fill their KV
  head's slots, the other slots have zero ``q`` rows and zero ``o_proj`` columns (their attention
  output is multiplied by zero);
- MLP: zero ``gate``/``up`` rows and zero ``down`` columns up to the next multiple of 256
  (``silu(0)·0 = 0``).

The report's ``deci.padding_params`` says what the padding costs; ``--align 256`` (MLP) and
keeping whole KV groups avoid most of it. The folder also carries ``modeling_decilm.py`` (our
own, built on the family's transformers classes) so it loads in transformers with
``trust_remote_code=True``. The format has one head size (``hidden / heads`` in llama.cpp) and no
projection biases, so only bias-free models with ``head_dim · heads == hidden`` are exported.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from llmprune.errors import NumericalError, UnsupportedArchitectureError
from llmprune.model.alignment import DECI_FFN_MULTIPLE
from llmprune.model.plan import PrunePlan

MODELING_FILE = "modeling_decilm.py"
MODEL_TYPE = "nemotron-nas"
ARCHITECTURE = "DeciLMForCausalLM"
FFN_MULTIPLE = DECI_FFN_MULTIPLE

APPENDIX = '''

# ----- DeciLM / Nemotron-NAS block_configs (written by llmprune --export-format deci) -----------

DECI_FFN_MULTIPLE = {ffn_multiple}


class _Section(dict):
    """A dict that also reads as attributes (``block.attention.no_op``), as vLLM expects, and is
    saved as plain JSON."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def deci_ffn_width(ffn_mult, hidden_size):
    """MLP width of an ``ffn_mult`` (the DeciLM rule vLLM and llama.cpp use)."""
    width = int(2 * ffn_mult * hidden_size / 3)
    return width if width % DECI_FFN_MULTIPLE == 0 else width + DECI_FFN_MULTIPLE - width % DECI_FFN_MULTIPLE


class DeciLMConfig(_BaseConfig):
    """The family config plus ``block_configs`` (one ``{{attention, ffn}}`` per layer)."""

    model_type = "{deci_model_type}"

    def __init__(self, block_configs=None, **kwargs):
        super().__init__(**kwargs)
        self.block_configs = [
            _Section({{key: _Section(value) if isinstance(value, dict) else value for key, value in block.items()}})
            for block in (block_configs or [])
        ]

    def deci_layer_widths(self):
        """Per layer (query heads, KV heads, MLP channels); 0 for a no-op."""
        widths = []
        for block in self.block_configs:
            attn, ffn = block["attention"], block["ffn"]
            if attn.get("no_op") or attn.get("n_heads_in_group") is None:
                heads = kv_heads = 0
            else:
                heads = self.num_attention_heads
                kv_heads = heads // attn["n_heads_in_group"]
            no_ffn = ffn.get("no_op") or ffn.get("ffn_mult") is None
            channels = 0 if no_ffn else deci_ffn_width(ffn["ffn_mult"], self.hidden_size)
            widths.append({{"num_attention_heads": heads, "num_key_value_heads": kv_heads,
                           "intermediate_size": channels}})
        return widths


def apply_block_configs(layers, config):
    """Resize a freshly built dense stack to ``config.block_configs``."""
    widths = config.deci_layer_widths()
    apply_layer_widths(layers, config, widths)
    for layer, width in zip(layers, widths):
        if width["num_attention_heads"] == 0:  # the format has no input norm for a no-op attention
            layer.input_layernorm = nn.Identity()
        if width["intermediate_size"] == 0:
            layer.post_attention_layernorm = nn.Identity()
    register_peft_targets(DeciLMConfig.model_type)


class DeciLMModel(_BaseModel):
    config_class = DeciLMConfig

    def __init__(self, config):
        super().__init__(config)
        apply_block_configs(self.layers, config)


class DeciLMForCausalLM(_BaseForCausalLM):
    config_class = DeciLMConfig

    def __init__(self, config):
        super().__init__(config)
        apply_block_configs(self.model.layers, config)
'''


def check_exportable(config: Any) -> None:
    """Refuse configs the DeciLM format cannot carry (before any pruning work is done)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    problems = []
    if head_dim * heads != config.hidden_size:
        problems.append(f"head_dim {head_dim} × {heads} heads != hidden size {config.hidden_size}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("projection biases")
    base = getattr(config, "llmprune_base_model_type", None) or config.model_type
    if base not in ("llama", "mistral"):
        problems.append(f"{base} blocks (only Llama-layout blocks without q/k norms or biases)")
    if getattr(config, "sliding_window", None):
        problems.append("sliding-window attention")
    if problems:
        raise UnsupportedArchitectureError("--export-format deci cannot express this model: " + "; ".join(problems))


def deci_modeling_source(family: str) -> str:
    from llmprune.model.hetero import modeling_source

    return modeling_source(family) + APPENDIX.format(ffn_multiple=FFN_MULTIPLE, deci_model_type=MODEL_TYPE)


_MODULES: dict[str, types.ModuleType] = {}


def deci_module(family: str) -> types.ModuleType:
    """``modeling_decilm.py`` of ``family`` executed in this process (the same text as written)."""
    if family not in _MODULES:
        name = f"llmprune._deci_modeling_{family}"
        module = types.ModuleType(name)
        sys.modules[name] = module
        exec(compile(deci_modeling_source(family), f"<{MODELING_FILE}:{family}>", "exec"), module.__dict__)
        _MODULES[family] = module
    return _MODULES[family]


def ffn_width(ffn_mult: float, hidden: int) -> int:
    width = int(2 * ffn_mult * hidden / 3)
    return width if width % FFN_MULTIPLE == 0 else width + FFN_MULTIPLE - width % FFN_MULTIPLE


def ffn_mult_for(channels: int, hidden: int) -> float:
    """An ``ffn_mult`` whose DeciLM width is ``channels`` (a multiple of 256)."""
    mult = round(1.5 * channels / hidden, 12)
    if ffn_width(mult, hidden) != channels:
        raise NumericalError(f"no ffn_mult gives {channels} MLP channels at hidden size {hidden}")
    return mult


@dataclass(frozen=True)
class DeciLayer:
    """How one of our layers sits in the DeciLM grid."""

    heads: int  # kept query heads (ours)
    kv_heads: int  # kept KV heads (ours)
    channels: int  # kept MLP channels (ours)
    deci_kv_heads: int  # KV heads in the format (k' ≥ kv_heads, divides H); 0 = no-op
    deci_channels: int  # MLP width in the format (multiple of 256); 0 = no-op

    def block_config(self, num_heads: int, hidden: int) -> dict[str, Any]:
        attention = (
            {"no_op": True, "n_heads_in_group": None, "replace_with_linear": False}
            if self.deci_kv_heads == 0
            else {"no_op": False, "n_heads_in_group": num_heads // self.deci_kv_heads, "replace_with_linear": False}
        )
        ffn = (
            {"no_op": True, "ffn_mult": None, "replace_with_linear": False}
            if self.deci_channels == 0
            else {"no_op": False, "ffn_mult": ffn_mult_for(self.deci_channels, hidden), "replace_with_linear": False}
        )
        return {"attention": attention, "ffn": ffn}


def layout(plan: PrunePlan) -> list[DeciLayer]:
    """The DeciLM widths of every layer of a structured plan."""
    num_heads = plan.dense["num_heads"]
    layers = []
    for lp in plan.layers:
        h, k, c = len(lp.heads), len(lp.kv_heads), len(lp.channels)
        deci_kv = 0 if h == 0 else next(d for d in range(k, num_heads + 1) if num_heads % d == 0)
        if h and h // k > num_heads // deci_kv:
            raise NumericalError(f"layer {lp.index}: {h} query heads on {k} KV heads do not fit the DeciLM grid")
        deci_c = 0 if c == 0 else -(-c // FFN_MULTIPLE) * FFN_MULTIPLE
        layers.append(DeciLayer(h, k, c, deci_kv, deci_c))
    return layers


def padding_params(plan: PrunePlan, layers: list[DeciLayer]) -> int:
    """Decoder-linear parameters the zero padding adds (q rows, o columns, k/v rows, MLP channels)."""
    hidden, head_dim, num_heads = plan.dense["hidden_size"], plan.dense["head_dim"], plan.dense["num_heads"]
    total = 0
    for layer in layers:
        if layer.deci_kv_heads:
            total += 2 * hidden * head_dim * ((num_heads - layer.heads) + (layer.deci_kv_heads - layer.kv_heads))
        total += 3 * hidden * (layer.deci_channels - layer.channels)
    return total


@torch.no_grad()
def deci_state_dict(
    model: nn.Module, adapter: Any, plan: PrunePlan, layers: list[DeciLayer]
) -> dict[str, torch.Tensor]:
    """Weights of the sliced model ``model`` laid out (and zero-padded) in the DeciLM grid."""
    num_heads, head_dim = plan.dense["num_heads"], plan.dense["head_dim"]
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("model.layers.")}
    for i, (layer, spec) in enumerate(zip(adapter.layers(model), layers)):
        prefix = f"model.layers.{i}."
        if spec.deci_kv_heads:
            q, k, v, o = (adapter.linear(layer, key).weight for key in ("q", "k", "v", "o"))
            slots, per_kv = num_heads // spec.deci_kv_heads, spec.heads // spec.kv_heads
            new_q = q.new_zeros(num_heads * head_dim, q.shape[1])
            new_o = o.new_zeros(o.shape[0], num_heads * head_dim)
            for t in range(spec.heads):  # our query head t belongs to our KV head t // per_kv
                slot = (t // per_kv) * slots + t % per_kv
                rows, dst = slice(t * head_dim, (t + 1) * head_dim), slice(slot * head_dim, (slot + 1) * head_dim)
                new_q[dst] = q[rows]
                new_o[:, dst] = o[:, rows]
            new_k = k.new_zeros(spec.deci_kv_heads * head_dim, k.shape[1])
            new_v = v.new_zeros(spec.deci_kv_heads * head_dim, v.shape[1])
            new_k[: k.shape[0]], new_v[: v.shape[0]] = k, v
            for name, value in (("q_proj", new_q), ("k_proj", new_k), ("v_proj", new_v), ("o_proj", new_o)):
                state[f"{prefix}self_attn.{name}.weight"] = value
            state[f"{prefix}input_layernorm.weight"] = layer.input_layernorm.weight.detach()
        if spec.deci_channels:
            gate, up, down = (adapter.linear(layer, key).weight for key in ("gate", "up", "down"))
            width = spec.deci_channels
            for name, value in (("gate_proj", gate), ("up_proj", up)):
                padded = value.new_zeros(width, value.shape[1])
                padded[: value.shape[0]] = value
                state[f"{prefix}mlp.{name}.weight"] = padded
            padded = down.new_zeros(down.shape[0], width)
            padded[:, : down.shape[1]] = down
            state[f"{prefix}mlp.down_proj.weight"] = padded
            state[f"{prefix}post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight.detach()
    return state


def deci_config(config: Any, plan: PrunePlan, layers: list[DeciLayer], family: str) -> Any:
    """The DeciLM config: the dense geometry plus ``block_configs``."""
    module = deci_module(family)
    data = config.to_dict()
    for key in (
        "model_type",
        "transformers_version",
        "architectures",
        "auto_map",
        "layer_widths",
        "llmprune_base_model_type",
        "block_configs",
    ):
        data.pop(key, None)
    dense = plan.dense
    data.update(
        num_attention_heads=dense["num_heads"],
        num_key_value_heads=dense["num_kv_heads"],
        intermediate_size=dense["intermediate_size"],
        head_dim=dense["head_dim"],
        hidden_size=dense["hidden_size"],
        num_hidden_layers=len(layers),
    )
    deci = module.DeciLMConfig(
        block_configs=[l.block_config(dense["num_heads"], dense["hidden_size"]) for l in layers], **data
    )
    deci.architectures = [ARCHITECTURE]
    deci.auto_map = {
        "AutoConfig": f"{MODELING_FILE[:-3]}.DeciLMConfig",
        "AutoModel": f"{MODELING_FILE[:-3]}.DeciLMModel",
        "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{ARCHITECTURE}",
    }
    return deci


def base_family(config: Any) -> str:
    return getattr(config, "llmprune_base_model_type", None) or config.model_type


@torch.no_grad()
def write_deci(
    folder: Path, model: nn.Module, plan: PrunePlan, save_dtype: torch.dtype, max_shard_size: str
) -> dict[str, Any]:
    """Write the DeciLM weights, config and modeling file of the sliced ``model`` into ``folder``;
    check that the DeciLM model computes the same logits on a short sequence. Returns the report
    entry (layout and padding cost)."""
    from llmprune.model.arch import ArchAdapter

    config = model.config  # the in-memory config keeps the dense geometry
    adapter = ArchAdapter.for_model(model)
    check_exportable(config)
    family = base_family(config)
    layers = layout(plan)
    deci_cfg = deci_config(config, plan, layers, family)
    module = deci_module(family)
    deci_cfg.dtype = save_dtype
    deci_cfg.use_cache = True
    deci_model = module.DeciLMForCausalLM(deci_cfg).to(dtype=save_dtype)
    state = deci_state_dict(model, adapter, plan, layers)
    missing, unexpected = deci_model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and getattr(deci_cfg, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise NumericalError(f"DeciLM export: missing {missing[:3]}, unexpected {unexpected[:3]}")
    deci_model.eval()
    _check_same_function(model, deci_model)
    deci_model.save_pretrained(folder, max_shard_size=max_shard_size)
    deci_cfg.save_pretrained(folder)
    (Path(folder) / MODELING_FILE).write_text(deci_modeling_source(family))
    padding = padding_params(plan, layers)
    return {
        "format": "deci",
        "architecture": ARCHITECTURE,
        "padding_params": padding,
        "params_decoder_linear_padded": sum(
            p.numel()
            for n, p in deci_model.named_parameters()
            if n.startswith("model.layers.") and n.endswith("proj.weight")
        ),
        "layers": [
            {
                "heads": l.heads,
                "kv_heads": l.kv_heads,
                "channels": l.channels,
                "deci_heads": plan.dense["num_heads"] if l.deci_kv_heads else 0,
                "deci_kv_heads": l.deci_kv_heads,
                "deci_channels": l.deci_channels,
            }
            for l in layers
        ],
    }


def _check_same_function(model: nn.Module, deci_model: nn.Module, length: int = 16) -> None:
    """The padded layout must not change the function: compare logits on a fixed sequence."""
    vocab = cast(Any, model.config).vocab_size  # a transformers config, not a tensor or module
    tokens = (torch.arange(length) * 7919 % vocab).unsqueeze(0).to(next(model.parameters()).device)
    deci_model.to(next(model.parameters()).device)
    ref_dtype = next(model.parameters()).dtype
    expected = model(tokens).logits.float()
    got = deci_model.to(ref_dtype)(tokens).logits.float()
    scale = float(expected.abs().max().clamp_min(1.0))
    # zero padding only changes summation order: float32 agrees to rounding, 16-bit to its precision
    tol = 1e-4 if ref_dtype == torch.float32 else 5e-2
    if not torch.allclose(got, expected, atol=tol * scale, rtol=tol):
        diff = float((got - expected).abs().max())
        raise NumericalError(f"DeciLM export changed the model's logits (max difference {diff:.3g})")


def read_block_configs(folder: Path) -> list[dict[str, Any]]:
    return json.loads((Path(folder) / "config.json").read_text())["block_configs"]
