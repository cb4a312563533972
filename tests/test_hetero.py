"""Heterogeneous-width export: reloads with trust_remote_code (no llmprune) and via registration."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import make_tiny_model, tiny_tokenizer
from llmprune.arch import ArchAdapter
from llmprune.export import save_pruned
from llmprune.plan import LayerPlan, PrunePlan
from llmprune.surgery import apply_plan, apply_weights, mask_structured

TOKENS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8, 120, 64, 33, 2]])


def _plan(model, adapter) -> PrunePlan:
    """Non-uniform plan with a removed attention, a removed MLP and refit-like weights."""
    geom = adapter.geometry(model)
    plan = PrunePlan.dense_structured(geom, "global", "test")
    plan.layers[0] = LayerPlan(index=0, heads=[2, 3], kv_heads=[1], channels=list(range(0, 96, 2)))
    plan.layers[1] = LayerPlan(index=1, heads=[], kv_heads=[], channels=list(range(10, 40)))
    plan.layers[2] = LayerPlan(index=2, heads=[0, 1, 2, 3], kv_heads=[0, 1], channels=[])
    g = torch.Generator().manual_seed(3)
    for i in (0, 2):
        name = adapter.linear_name(i, "o")
        plan.weights[name] = torch.randn(adapter.linear(adapter.layers(model)[i], "o").weight.shape, generator=g) * 0.1
    return plan


def _export(tmp_path: Path, family: str):
    model = make_tiny_model(family, num_hidden_layers=3)
    adapter = ArchAdapter.for_model(model)
    plan = _plan(model, adapter)
    masked = copy.deepcopy(model)
    apply_weights(masked, plan.weights)
    mask_structured(masked, adapter, plan)
    with torch.no_grad():
        expected = masked(TOKENS).logits
    apply_plan(model, adapter, plan)
    out = tmp_path / f"out-{family}"
    save_pruned(model, tiny_tokenizer(), plan, {"strategy": "global"}, out, torch.float32)
    return out, expected, plan


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_export_reloads_through_llmprune_registration(tmp_path, family):
    from llmprune.loading import load_model

    out, expected, plan = _export(tmp_path, family)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == f"llmprune_hetero_{family}" and "auto_map" in config
    assert [w["num_attention_heads"] for w in config["layer_widths"]] == [2, 0, 4]
    assert [w["intermediate_size"] for w in config["layer_widths"]] == [48, 30, 0]
    assert (out / "modeling_llmprune.py").is_file()
    assert [len(lp["channels"]) for lp in json.loads((out / "llmprune_plan.json").read_text())["layers"]] == [48, 30, 0]
    model, adapter, _ = load_model(str(out), torch.device("cpu"), torch.float32)  # no trust_remote_code
    assert adapter.family.name == family
    with torch.no_grad():
        logits = model(TOKENS).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    layers = adapter.layers(model)
    assert layers[0].self_attn.q_proj.out_features == 2 * adapter.geometry(model).head_dim
    assert not hasattr(layers[1].self_attn, "q_proj") and not hasattr(layers[2].mlp, "down_proj")
    assert adapter.decoder_linear_params(model) == sum(p.numel() for n, p in model.named_parameters()
                                                       if n.startswith("model.layers.") and "proj" in n and n.endswith("weight"))


SCRIPT = r"""
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True, dtype=torch.float32)
assert not any(m == "llmprune" or m.startswith("llmprune.") for m in sys.modules), "llmprune was imported"
tokens = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8, 120, 64, 33, 2]])
with torch.no_grad():
    logits = model(tokens).logits
    out = model.generate(tokens[:, :4], max_new_tokens=4, do_sample=False, pad_token_id=0)
assert out.shape == (1, 8)
torch.save(logits, sys.argv[2])
"""


@pytest.mark.parametrize("family", ["llama"])
def test_export_reloads_with_trust_remote_code_in_a_clean_process(tmp_path, family):
    out, expected, _ = _export(tmp_path, family)
    script = tmp_path / "load.py"
    script.write_text(SCRIPT)
    result = tmp_path / "logits.pt"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="", HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    proc = subprocess.run([sys.executable, str(script), str(out), str(result)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch.testing.assert_close(torch.load(result), expected, atol=1e-5, rtol=1e-5)
