"""--align N / --align-heads T (issue 16): widths on a grid, budget met as closely as it allows."""

from __future__ import annotations

import pytest
from helpers import read_json, run_cli

from llmprune.core.masks import attn_params_kept, uniform_widths
from llmprune.model.alignment import Alignment, misaligned_widths
from llmprune.model.arch import Geometry
from llmprune.pruners.tyr.supernet import SupernetSpec, module_types

REF = Geometry(hidden_size=256, num_heads=8, num_kv_heads=4, head_dim=32, intermediate_size=768, num_layers=8)
WIDE = Geometry(hidden_size=512, num_heads=16, num_kv_heads=4, head_dim=16, intermediate_size=1000, num_layers=4)


def _kept(geom, attn_unit, k_attn, k_mlp):
    return attn_params_kept(geom, attn_unit, k_attn) + k_mlp * geom.mlp_unit_params


@pytest.mark.parametrize("geom", [REF, WIDE])
@pytest.mark.parametrize("attn_unit", ["group", "query"])
@pytest.mark.parametrize("align", [Alignment(32), Alignment(64, 2), Alignment(128), Alignment(1, 2)])
@pytest.mark.parametrize("sparsity", [0.2, 0.3, 0.5, 0.7])
def test_uniform_widths_on_the_grid_and_near_the_budget(geom, attn_unit, align, sparsity):
    k_attn, k_mlp = uniform_widths(geom, sparsity, attn_unit, align)
    heads, kv = (k_attn * geom.group_size, k_attn) if attn_unit == "group" else (k_attn, geom.num_kv_heads)
    assert heads == geom.num_heads or (heads * geom.head_dim % align.width == 0 and heads % align.heads == 0)
    assert kv == geom.num_kv_heads or (kv * geom.head_dim % align.width == 0 and kv % align.heads == 0)
    assert k_mlp % align.width == 0 or k_mlp == geom.intermediate_size
    if attn_unit == "query":
        assert heads % geom.num_kv_heads == 0  # balanced over KV groups
    dense = geom.layer_linear_params(geom.num_heads, geom.num_kv_heads, geom.intermediate_size)
    target = (1 - sparsity) * dense
    error = abs(_kept(geom, attn_unit, k_attn, k_mlp) - target)
    # as close as the MLP grid allows (half a step), unless the width is clipped at one step or dense
    if align.width <= k_mlp < geom.intermediate_size and k_mlp != align.width:
        assert error <= align.width * geom.mlp_unit_params / 2 + 1e-6


def test_unaligned_default_is_unchanged():
    assert uniform_widths(REF, 0.3, "group") == uniform_widths(REF, 0.3, "group", Alignment()) == (3, 525)


@pytest.mark.parametrize("attn_unit", ["group", "query"])
def test_tyr_levels_stay_on_the_grid(attn_unit):
    align = Alignment(64)
    types = module_types(REF, attn_unit, align)
    k_attn, k_mlp = uniform_widths(REF, 0.5, attn_unit, align)
    spec = SupernetSpec(
        centers={"o": [k_attn], "down": [k_mlp]}, steps={k: types[k].step(0.125) for k in types}, delta=0.125
    )
    for level in spec.levels("down", 0, REF.intermediate_size):
        assert level % 64 == 0 or level == REF.intermediate_size
    head_unit = REF.group_size if attn_unit == "group" else 1
    for level in spec.levels("o", 0, types["o"].units):
        assert (level * head_unit * REF.head_dim) % 64 == 0


def test_misaligned_widths_are_named():
    widths = [
        {"layer": 0, "heads": 6, "kv_heads": 4, "channels": 525},
        {"layer": 1, "heads": 8, "kv_heads": 4, "channels": 512},
    ]
    assert misaligned_widths(widths, head_dim=16) == ["layer 0 mlp 525"]
    assert misaligned_widths(widths, head_dim=20) == [
        "layer 0 attention 120",
        "layer 0 kv 80",
        "layer 0 mlp 525",
        "layer 1 kv 80",
    ]


def test_cli_uniform_align(tmp_path, model_dir):
    # tiny model: head_dim 16, 4 heads / 2 KV heads, 96 MLP channels
    out = tmp_path / "aligned"
    result = run_cli("uniform", model_dir, "-o", out, "--sparsity", "0.3", "--method", "magnitude", "--align", "32")
    assert result.exit_code == 0, result.output
    report = read_json(out / "llmprune_report.json")
    assert report["alignment"]["align"] == 32 and report["alignment"]["misaligned_widths"] == []
    for w in report["layer_widths"]:
        assert w["channels"] % 32 == 0 and (w["heads"] * 16) % 32 == 0 and (w["kv_heads"] * 16) % 32 == 0
    assert "not multiples of 32" not in result.output
    plain = tmp_path / "plain"
    result = run_cli("uniform", model_dir, "-o", plain, "--sparsity", "0.3", "--method", "magnitude")
    assert result.exit_code == 0, result.output
    assert "not multiples of 32" in " ".join(result.output.split())
    assert read_json(plain / "llmprune_report.json")["alignment"]["misaligned_widths"]


def test_cli_rejects_bad_align(tmp_path, model_dir):
    result = run_cli("uniform", model_dir, "-o", tmp_path / "x", "--align", "0")
    assert result.exit_code == 2 and "align" in result.output
