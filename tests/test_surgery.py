"""Surgery equals masking, for every family and both attention units; exports reload as plain models."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import FAMILIES, make_tiny_model
from transformers import AutoModelForCausalLM

from llmprune.core.masks import select_attention_units, topk_sorted
from llmprune.model.arch import ArchAdapter
from llmprune.model.plan import LayerPlan, PrunePlan, units_to_heads
from llmprune.model.surgery import apply_plan, exported_config, mask_structured

TOKENS = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))


def random_plan(model, attn_unit: str, k_attn: int, k_mlp: int, seed: int = 0, uniform: bool = True) -> PrunePlan:
    adapter = ArchAdapter.for_model(model)
    geom = adapter.geometry(model)
    gen = torch.Generator().manual_seed(seed)
    plan = PrunePlan.dense_structured(geom, "uniform", "test", attn_unit)
    for i in range(geom.num_layers):
        ka = k_attn if uniform else max(geom.attn_unit_count(attn_unit) // (i + 1), 1)
        if attn_unit == "query" and not uniform:
            ka = geom.num_kv_heads * max(1, geom.group_size // (i + 1))
        units = select_attention_units(torch.rand(geom.attn_unit_count(attn_unit), generator=gen), ka, geom, attn_unit)
        heads, kv = units_to_heads(units, geom, attn_unit)
        km = k_mlp if uniform else k_mlp - 7 * i
        channels = topk_sorted(torch.rand(geom.intermediate_size, generator=gen), km)
        plan.layers[i] = LayerPlan(index=i, heads=heads, kv_heads=kv, channels=channels)
    return plan


def logits(model, tokens=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn_unit,k_attn", [("group", 1), ("query", 2)])
def test_slicing_equals_masking_and_reloads(family, attn_unit, k_attn, tmp_path):
    model = make_tiny_model(family)
    adapter = ArchAdapter.for_model(model)
    plan = random_plan(model, attn_unit, k_attn, k_mlp=50)
    masked = copy.deepcopy(model)
    mask_structured(masked, adapter, plan)
    dense_out, masked_out = logits(model), logits(masked)
    assert not torch.allclose(dense_out, masked_out, atol=1e-3), "the plan should change the function"

    apply_plan(model, adapter, plan)
    sliced_out = logits(model)
    torch.testing.assert_close(sliced_out, masked_out, atol=1e-5, rtol=1e-5)

    layer = adapter.layers(model)[0]
    geom = adapter.geometry(make_tiny_model(family))
    assert adapter.linear(layer, "q").out_features == len(plan.layers[0].heads) * geom.head_dim
    assert adapter.linear(layer, "k").out_features == len(plan.layers[0].kv_heads) * geom.head_dim
    assert adapter.linear(layer, "down").in_features == 50
    if family == "qwen2":
        assert adapter.linear(layer, "q").bias.shape[0] == len(plan.layers[0].heads) * geom.head_dim

    model.save_pretrained(tmp_path)
    exported_config(model, adapter, plan).save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert reloaded.config.head_dim == geom.head_dim
    torch.testing.assert_close(logits(reloaded), masked_out, atol=1e-5, rtol=1e-5)


def test_llama_with_indivisible_heads_exports_as_mistral(tmp_path):
    """transformers 5.x LlamaConfig rejects hidden % heads != 0; the export falls back to Mistral."""
    model = make_tiny_model("llama", num_attention_heads=4, num_key_value_heads=4)  # group size 1
    adapter = ArchAdapter.for_model(model)
    plan = random_plan(model, "group", k_attn=3, k_mlp=64)  # 3 heads: 64 % 3 != 0
    masked = copy.deepcopy(model)
    mask_structured(masked, adapter, plan)
    apply_plan(model, adapter, plan)
    config = exported_config(model, adapter, plan)
    assert config.model_type == "mistral" and config.sliding_window is None
    model.save_pretrained(tmp_path)
    config.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(reloaded).__name__ == "MistralForCausalLM"
    assert reloaded.config.num_attention_heads == 3 and reloaded.config.head_dim == 16
    torch.testing.assert_close(logits(reloaded), logits(masked), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_plan_is_a_noop(family):
    model = make_tiny_model(family)
    adapter = ArchAdapter.for_model(model)
    before = logits(model)
    plan = PrunePlan.dense_structured(adapter.geometry(model), "uniform", "test")
    apply_plan(model, adapter, plan)
    assert torch.equal(logits(model), before)
    assert exported_config(model, adapter, plan).num_attention_heads == adapter.geometry(model).num_heads


def test_non_uniform_plan_slices_each_layer_and_matches_masking():
    model = make_tiny_model("qwen3", num_hidden_layers=3)
    adapter = ArchAdapter.for_model(model)
    plan = random_plan(model, "group", k_attn=0, k_mlp=80, uniform=False)
    assert not plan.is_uniform
    masked = copy.deepcopy(model)
    mask_structured(masked, adapter, plan)
    apply_plan(model, adapter, plan)
    widths = [adapter.linear(layer, "down").in_features for layer in adapter.layers(model)]
    assert widths == [80, 73, 66]
    torch.testing.assert_close(logits(model), logits(masked), atol=1e-5, rtol=1e-5)


def test_module_removed_entirely_becomes_noop():
    model = make_tiny_model("llama")
    adapter = ArchAdapter.for_model(model)
    geom = adapter.geometry(model)
    plan = PrunePlan.dense_structured(geom, "global", "test")
    plan.layers[1] = LayerPlan(index=1, heads=[], kv_heads=[], channels=[])
    masked = copy.deepcopy(model)
    mask_structured(masked, adapter, plan)
    apply_plan(model, adapter, plan)
    torch.testing.assert_close(logits(model), logits(masked), atol=1e-5, rtol=1e-5)


def test_query_units_must_stay_balanced_across_groups():
    geom = ArchAdapter.for_model(make_tiny_model("llama")).geometry(make_tiny_model("llama"))
    with pytest.raises(ValueError, match="same number of heads per KV group"):
        units_to_heads([0, 1, 2], geom, "query")
    assert units_to_heads([0, 2], geom, "query") == ([0, 2], [0, 1])
    assert units_to_heads([1], geom, "group") == ([2, 3], [1])
