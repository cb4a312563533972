"""--export-format deci (issue 16): DeciLM / Nemotron-NAS block_configs computing the same function.

The reference forward below reads config.json and the safetensors exactly as vLLM's
DeciLMForCausalLM and llama.cpp's converter do (query heads = num_attention_heads in every
attention layer, KV heads = heads // n_heads_in_group, MLP width from ffn_mult rounded up to 256,
no_op = the sublayer and its norm are absent), independently of our modeling file.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_model, read_json, run_cli, save_tiny_model, tiny_tokenizer
from safetensors.torch import load_file

from llmprune.export.save import save_pruned
from llmprune.model.arch import ArchAdapter, Geometry
from llmprune.model.plan import LayerPlan, PrunePlan
from llmprune.model.surgery import apply_plan, apply_weights, mask_structured

TOKENS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8, 120, 64, 33, 2]])


def _ffn_width(mult: float, hidden: int) -> int:
    width = int(2 * mult * hidden / 3)
    return width if width % 256 == 0 else width + 256 - width % 256


def reference_forward(folder: Path, tokens: torch.Tensor) -> torch.Tensor:
    cfg = json.loads((folder / "config.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    head_dim = hidden // heads  # llama.cpp: key_length = hidden / heads
    eps = cfg["rms_norm_eps"]
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    T = tokens.shape[1]
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()

    def rope(x):  # [T, n, d]
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos[:, None] + rotated * sin[:, None]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    W = {k: v.double() for k, v in weights.items()}
    x = W["model.embed_tokens.weight"][tokens[0]]
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for i, block in enumerate(cfg["block_configs"]):
        p = f"model.layers.{i}."
        attn, ffn = block["attention"], block["ffn"]
        if not attn["no_op"]:
            kv = heads // attn["n_heads_in_group"]
            h = rms(x, W[p + "input_layernorm.weight"])
            q = rope((h @ W[p + "self_attn.q_proj.weight"].T).view(T, heads, head_dim))
            k = rope((h @ W[p + "self_attn.k_proj.weight"].T).view(T, kv, head_dim))
            v = (h @ W[p + "self_attn.v_proj.weight"].T).view(T, kv, head_dim)
            k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
            scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim) + mask
            out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(T, heads * head_dim)
            x = x + out @ W[p + "self_attn.o_proj.weight"].T
        else:
            assert p + "input_layernorm.weight" not in W and p + "self_attn.q_proj.weight" not in W
        if not ffn["no_op"]:
            width = _ffn_width(ffn["ffn_mult"], hidden)
            assert W[p + "mlp.gate_proj.weight"].shape == (width, hidden)
            h = rms(x, W[p + "post_attention_layernorm.weight"])
            gated = torch.nn.functional.silu(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)
            x = x + gated @ W[p + "mlp.down_proj.weight"].T
        else:
            assert p + "post_attention_layernorm.weight" not in W and p + "mlp.up_proj.weight" not in W
    x = rms(x, W["model.norm.weight"])
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return (x @ head.T).unsqueeze(0).float()


def _export(tmp_path: Path, plan_fn, **overrides):
    model = make_tiny_model("llama", num_hidden_layers=3, **overrides)
    adapter = ArchAdapter.for_model(model)
    plan = plan_fn(model, adapter)
    masked = copy.deepcopy(model)
    apply_weights(masked, plan.weights)
    mask_structured(masked, adapter, plan)
    with torch.no_grad():
        expected = masked(TOKENS).logits
    apply_plan(model, adapter, plan)
    out = tmp_path / "deci"
    report: dict = {}
    save_pruned(model, tiny_tokenizer(), plan, report, out, torch.float32, export_format="deci")
    return out, expected, report["deci"]


def _group_plan(model, adapter) -> PrunePlan:
    """4 heads / 2 KV heads: one KV group kept + partial MLP; no attention; no MLP."""
    plan = PrunePlan.dense_structured(adapter.geometry(model), "global", "test")
    plan.layers[0] = LayerPlan(index=0, heads=[2, 3], kv_heads=[1], channels=list(range(0, 96, 2)))
    plan.layers[1] = LayerPlan(index=1, heads=[], kv_heads=[], channels=list(range(10, 40)))
    plan.layers[2] = LayerPlan(index=2, heads=[0, 1, 2, 3], kv_heads=[0, 1], channels=[])
    return plan


def _uneven_plan(model, adapter) -> PrunePlan:
    """8 heads / 4 KV heads: 3 KV groups (8 % 3 != 0 → a zero KV head), and query-head pruning."""
    plan = PrunePlan.dense_structured(adapter.geometry(model), "global", "test")
    plan.layers[0] = LayerPlan(index=0, heads=[0, 1, 4, 5, 6, 7], kv_heads=[0, 2, 3], channels=list(range(96)))
    plan.layers[1] = LayerPlan(index=1, heads=[1, 2, 5, 7], kv_heads=[0, 1, 2, 3], channels=list(range(5, 77)))
    return plan


@pytest.mark.parametrize(
    "plan_fn, overrides",
    [
        (_group_plan, {}),
        (_uneven_plan, {"num_attention_heads": 8, "num_key_value_heads": 4}),
    ],
)
def test_deci_folder_computes_the_same_function(tmp_path, plan_fn, overrides):
    out, expected, deci = _export(tmp_path, plan_fn, **overrides)
    config = read_json(out / "config.json")
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["model_type"] == "nemotron-nas"
    assert len(config["block_configs"]) == 3
    torch.testing.assert_close(reference_forward(out, TOKENS), expected, atol=1e-4, rtol=1e-4)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(TOKENS).logits, expected, atol=1e-5, rtol=1e-5)
    # the padding the report states is what the weights hold beyond our kept widths
    stored = sum(
        v.numel()
        for k, v in load_file(str(out / "model.safetensors")).items()
        if k.startswith("model.layers.") and k.endswith("proj.weight")
    )
    plan = PrunePlan.load(out)
    geom = Geometry(**plan.dense)
    kept = sum(geom.layer_linear_params(len(lp.heads), len(lp.kv_heads), len(lp.channels)) for lp in plan.layers)
    assert stored == deci["params_decoder_linear_padded"] == kept + deci["padding_params"]
    assert deci["padding_params"] > 0


def test_uneven_kv_heads_are_padded_to_a_divisor(tmp_path):
    out, _, deci = _export(tmp_path, _uneven_plan, num_attention_heads=8, num_key_value_heads=4)
    blocks = read_json(out / "config.json")["block_configs"]
    assert [b["attention"]["n_heads_in_group"] for b in blocks] == [2, 2, 2]  # 3 kept KV heads → 4 in the grid
    assert [l["deci_kv_heads"] for l in deci["layers"]] == [4, 4, 4]
    assert [_ffn_width(b["ffn"]["ffn_mult"], 64) for b in blocks] == [256, 256, 256]


def test_cli_uniform_deci_and_refusals(tmp_path, model_dir, calib):
    out = tmp_path / "u"
    result = run_cli(
        "uniform", model_dir, "-o", out, "--sparsity", "0.5", "--method", "magnitude", "--export-format", "deci"
    )
    assert result.exit_code == 0, result.output
    assert read_json(out / "llmprune_report.json")["deci"]["padding_params"] >= 0
    assert (out / "modeling_decilm.py").is_file()
    qwen = save_tiny_model(tmp_path / "qwen2", "qwen2")
    result = run_cli("uniform", qwen, "-o", tmp_path / "q", "--method", "magnitude", "--export-format", "deci")
    assert result.exit_code == 4 and "deci" in result.output and not (tmp_path / "q").exists()


def test_uniform_deci_summary_states_the_padding(tmp_path, model_dir):
    """issue 30: the summary printed only the pruned counts while the deci weights were padded back
    towards the dense widths; it now states the stored count, the padding and the way to avoid it."""
    from llmprune.export.report import PruneReport
    from llmprune.run.summary import deci_padding_line

    out = tmp_path / "u"
    args = ["--sparsity", "0.3", "--method", "magnitude", "--export-format", "deci"]
    result = run_cli("uniform", model_dir, "-o", out, *args)
    assert result.exit_code == 0, result.output
    assert "stored (deci)" in result.stderr, result.stderr
    report = PruneReport.load(out)
    deci = read_json(out / "llmprune_report.json")["deci"]
    assert deci["padding_params"] > 0
    line = deci_padding_line(report)
    assert line == (
        f"{deci['params_decoder_linear_padded'] / 1e6:,.2f}M decoder linear params, "
        f"{deci['padding_params'] / 1e6:,.2f}M of them zero padding; --export-format hf stores none (a plain config)"
    )
    hf = tmp_path / "h"
    assert run_cli("uniform", model_dir, "-o", hf, *args[:-2]).exit_code == 0
    hf_report = PruneReport.load(hf)
    assert hf_report is not None and deci_padding_line(hf_report) is None


def test_tyr_deci_search_space_needs_no_padding(tmp_path, calib):
    model_dir = save_tiny_model(tmp_path / "wide", "llama", num_hidden_layers=3, intermediate_size=768)
    out = tmp_path / "g"
    result = run_cli(
        "global",
        model_dir,
        "-o",
        out,
        "--sparsity",
        "0.5",
        "--calib",
        calib,
        "--nsamples",
        "6",
        "--seqlen",
        "32",
        "--generations",
        "2",
        "--offspring",
        "4",
        "--select-tokens",
        "32,64,128",
        "--survivors",
        "2,1",
        "--iterations",
        "2",
        "--topk-logits",
        "50",
        "--budget-split",
        "free",
        "--search-space",
        "deci",
        "--export-format",
        "deci",
    )
    assert result.exit_code == 0, result.output
    report = read_json(out / "llmprune_report.json")
    for width in report["layer_widths"]:
        assert width["heads"] in (0, 4) and width["channels"] % 256 == 0
    assert report["deci"]["padding_params"] == 0
    assert report["achieved_sparsity"] > 0.3


def test_llmprune_commands_on_a_deci_folder_say_what_it_is(tmp_path, model_dir):
    out = tmp_path / "d"
    assert run_cli("uniform", model_dir, "-o", out, "--method", "magnitude", "--export-format", "deci").exit_code == 0
    result = run_cli("eval", out, "--data", "builtin", "--seqlen", "32")
    assert result.exit_code == 4 and "DeciLM" in result.output
    result = run_cli("inspect", out, "--json")
    assert result.exit_code == 0 and "DeciLM format" in result.output
