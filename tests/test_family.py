"""One family table (arch.FAMILIES): the heterogeneous-width export, inspect's projection names
and the capture's shared inputs all come from it; one function decides the exported config."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_tiny_model, tiny_tokenizer

from llmprune.model import arch, hetero
from llmprune.model.arch import LINEAR_KEYS, ArchAdapter, Family
from llmprune.model.plan import LayerPlan, PrunePlan


def _non_uniform_plan(model, adapter) -> PrunePlan:
    geom = adapter.geometry(model)
    plan = PrunePlan.dense_structured(geom, "global", "test")
    plan.layers[0] = LayerPlan(index=0, heads=[0, 1], kv_heads=[0], channels=list(range(40)))
    return plan


def test_every_family_has_its_heterogeneous_export_from_the_family_table():
    for family in arch.FAMILIES:
        assert hetero.family_of(family.name) == family.name
        assert hetero.family_of(hetero.MODEL_TYPE_PREFIX + family.name) == family.name
        source = hetero.modeling_source(family.name)
        assert (
            f"from transformers.models.{family.transformers_module}.modeling_{family.transformers_module} "
            f"import {family.class_prefix}ForCausalLM" in source
        )
    with pytest.raises(ValueError, match="gpt2"):
        hetero.family_of("gpt2")


def test_a_family_added_to_arch_is_known_to_the_heterogeneous_export(monkeypatch):
    """Adding a family is one entry in arch.FAMILIES: hetero has no table of its own."""
    extra = Family("mylm", ("mylm",), transformers_module="mistral", class_prefix="Mistral")
    monkeypatch.setattr(arch, "FAMILIES", (*arch.FAMILIES, extra))
    assert hetero.family_of("llmprune_hetero_mylm") == "mylm"
    assert "MistralForCausalLM" in hetero.modeling_source("mylm")
    assert hetero.family_module("mylm").LlmpruneHeteroConfig.model_type == "llmprune_hetero_mylm"


def test_projection_names_come_from_the_adapter():
    adapter = ArchAdapter.for_config(make_tiny_model("qwen2").config)
    for i in (0, 11):
        for key in LINEAR_KEYS:
            assert adapter.parse_linear_weight(adapter.linear_name(i, key) + ".weight") == (i, key)
    for name in (
        "model.layers.0.self_attn.q_proj.bias",
        "model.layers.0.input_layernorm.weight",
        "lm_head.weight",
        "model.embed_tokens.weight",
        "model.layers.0.mlp.down_proj.weight_scale",
    ):
        assert adapter.parse_linear_weight(name) is None


def test_capture_uses_the_shared_inputs_of_arch():
    from llmprune.data import capture

    assert capture.INPUT_SOURCES is arch.INPUT_SOURCES
    assert set(arch.INPUT_SOURCES) == set(LINEAR_KEYS)


def test_inspect_reads_the_widths_of_a_heterogeneous_export(tmp_path):
    from llmprune.export.save import save_pruned
    from llmprune.model.surgery import apply_plan
    from llmprune.run.inspection import inspect_folder

    model = make_tiny_model("llama")
    adapter = ArchAdapter.for_model(model)
    plan = _non_uniform_plan(model, adapter)
    apply_plan(model, adapter, plan)
    save_pruned(model, tiny_tokenizer(), plan, {"strategy": "global"}, tmp_path / "out", torch.float32)
    info = inspect_folder(str(tmp_path / "out"))
    assert [(row["heads"], row["kv_heads"], row["channels"]) for row in info["layers"]] == [(2, 1, 40), (4, 2, 96)]
    assert info["params_decoder_linear"] == adapter.decoder_linear_params(model)
    assert not info["uniform_widths"] and info["strategy"] == "global"


def test_exported_config_decides_every_case(tmp_path):
    """surgery.exported_config is the one decision; save_pruned without a config uses it too."""
    from llmprune.export.save import save_pruned
    from llmprune.model.surgery import apply_plan, exported_config

    model = make_tiny_model("llama")
    adapter = ArchAdapter.for_model(model)
    plan = _non_uniform_plan(model, adapter)
    apply_plan(model, adapter, plan)
    config = exported_config(model, adapter, plan)
    assert hetero.is_hetero_config(config) and config.layer_widths[0]["num_attention_heads"] == 2
    a, b = tmp_path / "a", tmp_path / "b"
    save_pruned(model, None, plan, {}, a, torch.float32, config=config)
    save_pruned(model, None, plan, {}, b, torch.float32)
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    assert (a / hetero.MODELING_FILE).read_text() == (b / hetero.MODELING_FILE).read_text()
    # Uniform and 2:4 plans: no heterogeneous config, no modeling file.
    uniform = PrunePlan.dense_structured(adapter.geometry(model), "uniform", "test")
    assert not hetero.is_hetero_config(exported_config(make_tiny_model("llama"), adapter, uniform))
    semi = PrunePlan(kind="semi24", strategy="semi24", method="test")
    dense = make_tiny_model("llama")
    assert exported_config(dense, adapter, semi) is dense.config


def test_families_are_described_completely():
    for family in arch.FAMILIES:
        assert family.transformers_module and family.class_prefix, family
        assert arch.family_named(family.name) == family
        for model_type in family.model_types:
            assert arch.family_for_model_type(model_type) == family
    assert arch.family_for_model_type("gpt2") is None and arch.family_named("gpt2") is None
