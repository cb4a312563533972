"""llmprune remask (issue 16): a LoRA merge destroys the 2:4 pattern; remask restores it."""

from __future__ import annotations

import torch
from helpers import folder_hash, read_json, run_cli
from safetensors.torch import load_file

from llmprune.core.masks import max_nonzeros_per_group


def _merged_copy(semi24_out, folder):
    """What merge_and_unload leaves: the same model with a dense update on every weight."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(semi24_out, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(semi24_out).save_pretrained(folder)
    return folder


def test_remask_restores_the_original_pattern(tmp_path, model_dir):
    semi = tmp_path / "semi"
    assert run_cli("semi24", model_dir, "-o", semi, "--method", "magnitude").exit_code == 0
    merged = _merged_copy(semi, tmp_path / "merged")
    before = folder_hash(merged)
    targets = read_json(semi / "llmprune_sparsity.json")["targets"]
    merged_w = load_file(str(merged / "model.safetensors"))
    assert max_nonzeros_per_group(merged_w[targets[0] + ".weight"]) == 4  # the merge broke the pattern

    out = tmp_path / "fixed"
    result = run_cli("remask", merged, "-o", out, "--like", semi)
    assert result.exit_code == 0, result.output
    assert folder_hash(merged) == before  # input untouched
    original, fixed = load_file(str(semi / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for name in targets:
        key = name + ".weight"
        keep = original[key] != 0
        assert max_nonzeros_per_group(fixed[key]) <= 2
        assert torch.equal(fixed[key] != 0, keep)
        assert torch.equal(fixed[key][keep], merged_w[key][keep].to(fixed[key].dtype))  # fine-tuned values kept
    sidecar = read_json(out / "llmprune_sparsity.json")
    assert sidecar["verified"] and sidecar["targets"] == targets
    assert read_json(out / "llmprune_report.json")["zeros_restored"] > 0


def test_remask_refuses_a_like_that_is_not_a_semi24_output(tmp_path, model_dir):
    result = run_cli("remask", model_dir, "-o", tmp_path / "x", "--like", model_dir)
    assert result.exit_code == 2 and "not a 2:4 output" in result.output
    assert not (tmp_path / "x").exists()


def test_remask_accepts_string_paths(tmp_path, model_dir):
    from llmprune.run.remask import remask

    semi = tmp_path / "semi"
    assert run_cli("semi24", model_dir, "-o", semi, "--method", "magnitude").exit_code == 0
    merged = _merged_copy(semi, tmp_path / "merged")
    report = remask(str(merged), str(semi), str(tmp_path / "fixed"))
    assert report["zeros_restored"] > 0 and (tmp_path / "fixed" / "llmprune_sparsity.json").is_file()


def test_remask_keeps_the_input_dtype(tmp_path, model_dir):
    """issue 30: a bfloat16 merge was written as float32 (twice the size); auto keeps MODEL's dtype."""
    from transformers import AutoModelForCausalLM

    semi = tmp_path / "semi"
    assert run_cli("semi24", model_dir, "-o", semi, "--method", "magnitude").exit_code == 0
    merged = _merged_copy(semi, tmp_path / "merged")
    AutoModelForCausalLM.from_pretrained(merged, dtype=torch.bfloat16).save_pretrained(merged)
    assert {t.dtype for t in load_file(str(merged / "model.safetensors")).values()} == {torch.bfloat16}

    out = tmp_path / "fixed"
    result = run_cli("remask", merged, "-o", out, "--like", semi)
    assert result.exit_code == 0, result.output
    fixed = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in fixed.values()} == {torch.bfloat16}
    assert read_json(out / "config.json")["dtype"] == "bfloat16"
    assert max_nonzeros_per_group(fixed[read_json(semi / "llmprune_sparsity.json")["targets"][0] + ".weight"]) <= 2

    wide = tmp_path / "wide"
    assert run_cli("remask", merged, "-o", wide, "--like", semi, "--save-dtype", "float32").exit_code == 0
    assert {t.dtype for t in load_file(str(wide / "model.safetensors")).values()} == {torch.float32}
    bad = run_cli("remask", merged, "-o", tmp_path / "bad", "--like", semi, "--save-dtype", "int8")
    assert bad.exit_code == 2 and bad.output.startswith("error: invalid --save-dtype 'int8'"), bad.output
    assert not (tmp_path / "bad").exists()
