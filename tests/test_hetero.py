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

from llmprune.export.save import save_pruned
from llmprune.model.arch import ArchAdapter
from llmprune.model.plan import LayerPlan, PrunePlan
from llmprune.model.surgery import apply_plan, apply_weights, mask_structured

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
    from llmprune.model.loading import load_model

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
    assert adapter.decoder_linear_params(model) == sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.startswith("model.layers.") and "proj" in n and n.endswith("weight")
    )


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
    proc = subprocess.run(
        [sys.executable, str(script), str(out), str(result)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch.testing.assert_close(torch.load(result), expected, atol=1e-5, rtol=1e-5)


# ----- plain transformers after `import llmprune`, in fresh processes (issue 16) ------------------
REGISTERED_SCRIPT = r"""
import json, os, sys
import llmprune
assert "torch" not in sys.modules and "transformers" not in sys.modules, "import llmprune must stay cheap"
import torch
from transformers import AutoModel, AutoModelForCausalLM
out, saved, report = sys.argv[1:4]
tokens = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8, 120, 64, 33, 2]])
results = {}
def check(name, fn):
    try:
        results[name] = fn()
    except Exception as err:
        results[name] = f"{type(err).__name__}: {err}"
model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
with torch.no_grad():
    torch.save(model(tokens).logits, os.path.join(os.path.dirname(report), "plain.pt"))
results["plain_class"] = type(model).__name__
def compiled():
    fn = torch.compile(model, backend="eager", fullgraph=False)
    with torch.no_grad():
        torch.save(fn(tokens).logits, os.path.join(os.path.dirname(report), "compiled.pt"))
    return "ok"
check("compile", compiled)
check("automodel", lambda: type(AutoModel.from_pretrained(out, dtype=torch.float32)).__name__)
def saved_copy():
    model.save_pretrained(saved)
    return sorted(os.listdir(saved))
check("save_pretrained", saved_copy)
def peft_default():
    from peft import LoraConfig, get_peft_model
    peft_model = get_peft_model(model, LoraConfig(r=2))
    return sorted({n.split(".")[-4] for n, _ in peft_model.named_parameters() if "lora_A" in n})
try:
    import peft  # noqa: F401
    check("peft", peft_default)
except ImportError:
    results["peft"] = "not installed"
json.dump(results, open(report, "w"))
"""

SAVED_SCRIPT = r"""
import json, sys, torch
from transformers import AutoModel, AutoModelForCausalLM
saved, report = sys.argv[1:3]
tokens = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8, 120, 64, 33, 2]])
model = AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=True, dtype=torch.float32)
base = AutoModel.from_pretrained(saved, trust_remote_code=True, dtype=torch.float32)
assert not any(m == "llmprune" or m.startswith("llmprune.") for m in sys.modules), "llmprune was imported"
with torch.no_grad():
    torch.save(model(tokens).logits, report + ".pt")
json.dump({"class": type(model).__name__, "base": type(base).__name__}, open(report, "w"))
"""


def _run(script: str, tmp_path: Path, *args, pythonpath: str) -> None:
    path = tmp_path / f"script{abs(hash(script))}.py"
    path.write_text(script)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=pythonpath, HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    proc = subprocess.run(
        [sys.executable, str(path), *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def registered_run(tmp_path_factory):
    """One global-style output, used in a fresh process after `import llmprune` only."""
    tmp_path = tmp_path_factory.mktemp("registered")
    out, expected, _ = _export(tmp_path, "llama")
    report = tmp_path / "report.json"
    repo = str(Path(__file__).resolve().parents[1])
    _run(REGISTERED_SCRIPT, tmp_path, out, tmp_path / "saved", report, pythonpath=repo)
    return tmp_path, expected, json.loads(report.read_text())


def test_plain_from_pretrained_after_import_llmprune(registered_run):
    tmp_path, expected, results = registered_run
    assert results["plain_class"] == "LlmpruneHeteroForCausalLM"
    torch.testing.assert_close(torch.load(tmp_path / "plain.pt"), expected, atol=1e-5, rtol=1e-5)


def test_torch_compile_of_a_registered_load(registered_run):
    tmp_path, expected, results = registered_run
    assert results["compile"] == "ok", results["compile"]
    torch.testing.assert_close(torch.load(tmp_path / "compiled.pt"), expected, atol=1e-5, rtol=1e-5)


def test_automodel_loads_the_backbone(registered_run):
    assert registered_run[2]["automodel"] == "LlmpruneHeteroModel"


def test_peft_default_targets(registered_run):
    results = registered_run[2]
    if results["peft"] == "not installed":
        pytest.skip("peft is not installed")
    assert results["peft"] == ["q_proj", "v_proj"], results["peft"]


def test_save_pretrained_copy_loads_in_a_fresh_process_without_llmprune(registered_run):
    tmp_path, expected, results = registered_run
    assert "modeling_llmprune.py" in results["save_pretrained"], results["save_pretrained"]
    auto_map = json.loads((tmp_path / "saved" / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    report = tmp_path / "saved.json"
    _run(SAVED_SCRIPT, tmp_path, tmp_path / "saved", report, pythonpath="")
    assert json.loads(report.read_text()) == {"class": "LlmpruneHeteroForCausalLM", "base": "LlmpruneHeteroModel"}
    torch.testing.assert_close(torch.load(str(report) + ".pt"), expected, atol=1e-5, rtol=1e-5)
