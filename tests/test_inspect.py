"""`llmprune inspect` and stacking (structured, then 2:4)."""

from __future__ import annotations

import json

import torch
from helpers import read_json, save_tiny_model
from helpers import run_cli as run
from transformers import AutoModelForCausalLM


def test_inspect_and_stacking_uniform_then_semi24(tmp_path):
    dense = save_tiny_model(tmp_path / "dense", "qwen2")
    uniform, stacked = tmp_path / "uniform", tmp_path / "stacked"
    assert run("uniform", dense, "-o", uniform, "--method", "magnitude", "--sparsity", "0.3").exit_code == 0
    result = run("semi24", uniform, "-o", stacked, "--method", "magnitude", "--save-dtype", "float32")
    assert result.exit_code == 0, result.output

    info = json.loads(run("inspect", stacked, "--json").output)
    assert info["strategy"] == "semi24" and info["semi24"] and info["uniform_widths"]
    assert info["history"][0]["strategy"] == "uniform" and info["history"][0]["model"] == str(dense)
    widths = read_json(uniform / "llmprune_report.json")["layer_widths"][0]
    assert info["layers"][0] == {
        "layer": 0,
        "heads": widths["heads"],
        "kv_heads": widths["kv_heads"],
        "channels": widths["channels"],
    }
    assert info["loads_without_custom_code"] is True
    model = AutoModelForCausalLM.from_pretrained(stacked, dtype=torch.float32)
    assert info["params_total"] == sum(p.numel() for p in model.parameters())

    report = read_json(stacked / "llmprune_report.json")
    down = model.model.layers[0].mlp.down_proj
    if down.in_features % 4:  # a width that cannot carry 2:4 stays dense, and is reported
        assert "model.layers.0.mlp.down_proj" in report["semi24_skipped"]
        assert (down.weight != 0).all()
    q = model.model.layers[0].self_attn.q_proj.weight
    assert (q != 0).reshape(q.shape[0], -1, 4).sum(-1).eq(2).all()

    table = run("inspect", stacked)
    assert table.exit_code == 0 and "applied before" in table.output and "2:4" in table.output


def test_inspect_bad_folder(tmp_path):
    result = run("inspect", tmp_path / "missing")
    assert result.exit_code == 3 and result.output.startswith("error: not a model folder")
    (tmp_path / "empty").mkdir()
    result = run("inspect", tmp_path / "empty")
    assert result.exit_code == 3 and "no config.json" in result.output
