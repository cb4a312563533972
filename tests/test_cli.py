"""The command-line contract on tiny models: happy paths, exports, and every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import folder_hash, read_json
from helpers import run_cli as run
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llmprune.core.masks import max_nonzeros_per_group
from llmprune.model.arch import ArchAdapter

SMALL = ["--seqlen", "32", "--nsamples", "8", "--batch-size", "4"]


def load(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


# ----- happy paths ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["wanda", "magnitude"])
@pytest.mark.parametrize("attn_unit", ["group", "query"])
def test_uniform_baselines_export_plain_loadable_models(model_dir, calib, tmp_path, method, attn_unit):
    before = folder_hash(model_dir)
    out = tmp_path / "out"
    result = run(
        "uniform",
        model_dir,
        "-o",
        out,
        "--sparsity",
        "0.3",
        "--method",
        method,
        "--attn-unit",
        attn_unit,
        "--calib",
        calib,
        "--save-dtype",
        "float32",
        *SMALL,
    )
    assert result.exit_code == 0, result.output
    assert folder_hash(model_dir) == before, "the input model must never change"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "llmprune_plan.json",
            "llmprune_report.json",
        ]
    )
    report = read_json(out / "llmprune_report.json")
    assert abs(report["achieved_sparsity"] - 0.3) < 0.02
    assert report["method"] == method and report["seed"] == 0 and report["versions"]["torch"]
    assert len(report["layer_sparsity"]) == 2 and report["time_prune_s"] >= 0 and report["peak_rss_mib"] > 0
    model = load(out)
    adapter = ArchAdapter.for_model(model)
    widths = {
        (adapter.linear(l, "q").out_features, adapter.linear(l, "down").in_features) for l in adapter.layers(model)
    }
    assert len(widths) == 1, "uniform pruning keeps the same widths in every layer"
    assert adapter.decoder_linear_params(model) == report["params_decoder_linear"]
    config = read_json(out / "config.json")
    assert config["head_dim"] == 16 and "quantization_config" not in config
    plan = read_json(out / "llmprune_plan.json")
    assert plan["kind"] == "structured" and len(plan["layers"]) == 2


def test_uniform_baseline_keeps_explicit_widths(model_dir, calib, tmp_path):
    """--widths ATTN,MLP (e.g. minimax's learned split) replaces the even split of --sparsity."""
    out = tmp_path / "out"
    args = ["--sparsity", "0.3", "--method", "wanda", "--calib", calib, *SMALL]
    result = run("uniform", model_dir, "-o", out, *args, "--widths", "2,48")  # the same 30% budget
    assert result.exit_code == 0, result.output
    report = read_json(out / "llmprune_report.json")
    assert [(w["kv_heads"], w["channels"]) for w in report["layer_widths"]] == [(2, 48), (2, 48)]
    assert abs(report["achieved_sparsity"] - 0.3) < 0.01
    assert run("uniform", model_dir, "-o", tmp_path / "even", *args).exit_code == 0
    even = read_json(tmp_path / "even" / "llmprune_report.json")["layer_widths"][0]
    assert (even["kv_heads"], even["channels"]) == (1, 80), "the even split differs"
    for bad in ("3", "0,80", "3,80", "1,97", "1,x"):
        result = run("uniform", model_dir, "-o", tmp_path / "bad", *args, "--widths", bad)
        assert result.exit_code == 2 and result.output.startswith(f"error: --widths {bad}".replace("'", "")[:14])
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "bad").exists(), result.output


def test_bad_widths_are_refused_before_the_weights_are_read(model_dir, calib, tmp_path, monkeypatch):
    from llmprune.run import pipeline

    loads: list[str] = []
    monkeypatch.setattr(pipeline, "load_model", lambda name, *a, **k: loads.append(name))
    args = ["--sparsity", "0.3", "--method", "wanda", "--calib", calib, *SMALL, "--widths", "3,80"]
    result = run("uniform", model_dir, "-o", tmp_path / "bad", *args)
    assert result.exit_code == 2 and "--widths 3,80" in result.output and loads == []


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_semi24_exports_exact_pattern_and_leaves_the_rest(model_dir, calib, tmp_path, method):
    out = tmp_path / "out"
    result = run(
        "semi24", model_dir, "-o", out, "--method", method, "--calib", calib, "--save-dtype", "float32", *SMALL
    )
    assert result.exit_code == 0, result.output
    dense, pruned = load(model_dir), load(out)
    adapter = ArchAdapter.for_model(pruned)
    sidecar = read_json(out / "llmprune_sparsity.json")
    assert sidecar["pattern"] == "2:4" and len(sidecar["targets"]) == 14
    assert "quantization_config" not in read_json(out / "config.json")
    targeted = set(sidecar["targets"])
    dense_params = dict(dense.named_parameters())
    for name, param in pruned.named_parameters():
        module = name.rsplit(".", 1)[0]
        if module in targeted and name.endswith("weight"):
            groups = (param != 0).reshape(param.shape[0], -1, 4).sum(-1)
            assert groups.eq(2).all(), f"{name} is not exactly 2:4"
            if method != "sparsegpt":  # masks only: the kept weights are the original ones
                kept = param != 0
                assert torch.equal(param[kept], dense_params[name][kept])
        else:
            assert torch.equal(param, dense_params[name]), f"{name} must be untouched"
    assert max_nonzeros_per_group(adapter.linear(adapter.layers(pruned)[0], "down").weight) == 2


def test_eval_reports_the_contract_keys(model_dir, calib, tmp_path):
    report_path = tmp_path / "r.json"
    result = run(
        "eval", model_dir, "--data", calib, "--seqlen", "32", "--json", report_path, "--speed", "--speed-repeats", "1"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    for key in (
        "perplexity",
        "seqlen",
        "eval_tokens",
        "params_total",
        "params_decoder_linear",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
    ):
        assert key in report, key
    assert report["seqlen"] == 32 and report["eval_tokens"] % 32 == 0
    assert report["perplexity"] > 1 and report["prefill_tokens_per_s"] > 0


def test_sparsity_zero_changes_nothing(model_dir, calib, tmp_path):
    out = tmp_path / "out"
    result = run(
        "uniform",
        model_dir,
        "-o",
        out,
        "--sparsity",
        "0",
        "--method",
        "wanda",
        "--calib",
        calib,
        "--save-dtype",
        "float32",
        *SMALL,
    )
    assert result.exit_code == 0, result.output
    tokens = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load(out)(tokens).logits, load(model_dir)(tokens).logits)


def test_overwrite_replaces_only_when_asked(model_dir, calib, tmp_path):
    out = tmp_path / "out"
    args = ["uniform", model_dir, "-o", out, "--method", "magnitude", "--sparsity", "0.5"]
    assert run(*args).exit_code == 0
    stamp = (out / "llmprune_report.json").stat().st_mtime_ns
    again = run(*args)
    assert again.exit_code == 6 and "exists" in again.output
    assert (out / "llmprune_report.json").stat().st_mtime_ns == stamp
    assert run(*args, "--overwrite").exit_code == 0
    assert not list(tmp_path.glob(".out.llmprune-*")), "no staging folders left behind"


# ----- bad input ------------------------------------------------------------------------------
def unsupported_model(tmp_path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(folder)
    return folder


BAD_CASES = {
    "missing model": (lambda d, c, t: ["uniform", t / "nope", "-o", t / "o"], 3, "not found"),
    "model is a file": (lambda d, c, t: ["uniform", c, "-o", t / "o"], 3, "not a folder"),
    "unsupported arch": (lambda d, c, t: ["uniform", unsupported_model(t), "-o", t / "o"], 4, "supported model types"),
    "sparsity 1": (lambda d, c, t: ["uniform", d, "-o", t / "o", "--sparsity", "1"], 2, "sparsity"),
    "sparsity negative": (lambda d, c, t: ["uniform", d, "-o", t / "o", "--sparsity", "-0.1"], 2, "sparsity"),
    "sparsity nan": (lambda d, c, t: ["uniform", d, "-o", t / "o", "--sparsity", "nan"], 2, "sparsity"),
    "semi24 sparsity": (lambda d, c, t: ["semi24", d, "-o", t / "o", "--sparsity", "0.3"], 2, "half"),
    "unknown method": (
        lambda d, c, t: ["uniform", d, "-o", t / "o", "--method", "bogus"],
        7,
        "known methods: magnitude",
    ),
    "nsamples 0": (lambda d, c, t: ["uniform", d, "-o", t / "o", "--nsamples", "0", "--calib", c], 2, "nsamples"),
    "bad dtype": (lambda d, c, t: ["uniform", d, "-o", t / "o", "--dtype", "int8", "--calib", c], 2, "dtype"),
    "seqlen too long": (
        lambda d, c, t: ["uniform", d, "-o", t / "o", "--calib", c, "--seqlen", "4096", "--method", "wanda"],
        2,
        "context",
    ),
    "missing calib": (
        lambda d, c, t: ["uniform", d, "-o", t / "o", "--calib", t / "none.txt", "--method", "wanda", *SMALL],
        5,
        "not found",
    ),
    "too little calib": (
        lambda d, c, t: [
            "uniform",
            d,
            "-o",
            t / "o",
            "--calib",
            c,
            "--method",
            "wanda",
            "--seqlen",
            "64",
            "--nsamples",
            "5000",
        ],
        5,
        "windows of 64",
    ),
    "output is input": (lambda d, c, t: ["uniform", d, "-o", d, "--method", "magnitude"], 6, "overlaps the input"),
    "output is a file": (lambda d, c, t: ["uniform", d, "-o", c, "--method", "magnitude"], 6, "is a file"),
    "bad attn unit": (
        lambda d, c, t: ["uniform", d, "-o", t / "o", "--attn-unit", "heads", "--method", "magnitude"],
        2,
        "attn-unit",
    ),
    "bad final prune": (
        lambda d, c, t: ["global", d, "-o", t / "o", "--final-prune", "dense", "--calib", c],
        2,
        "final_prune",
    ),
    "bad first order": (
        lambda d, c, t: ["global", d, "-o", t / "o", "--first-order", "signed", "--calib", c],
        2,
        "first_order",
    ),
    "mlp rounds 0": (
        lambda d, c, t: ["global", d, "-o", t / "o", "--mlp-rounds", "0", "--calib", c],
        2,
        "mlp_rounds",
    ),
    "eval missing data": (lambda d, c, t: ["eval", d, "--data", t / "none.txt", "--seqlen", "32"], 5, "not found"),
    # A device this machine lacks, named once where the options are resolved (was a traceback).
    **{
        f"{strategy} device {device}": (
            lambda d, c, t, s=strategy, v=device: [s, d, "-o", t / "o", "--device", v, "--calib", c, *SMALL],
            2,
            f"--device {device}",
        )
        for strategy in ("uniform", "global", "semi24")
        for device in (["cuda", "cuda:1", "mps"] if not torch.cuda.is_available() else ["cuda:99"])
    },
    "device unknown kind": (lambda d, c, t: ["uniform", d, "-o", t / "o", "--device", "xla", "--calib", c], 2, "xla"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_one_clear_line(case, model_dir, calib, tmp_path):
    make_args, code, message = BAD_CASES[case]
    before = folder_hash(model_dir)
    result = run(*make_args(model_dir, calib, tmp_path))
    assert result.exit_code == code, (case, result.exit_code, result.output)
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().startswith("error:"), result.output
    assert folder_hash(model_dir) == before
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o.llmprune-*"))


def test_subprocess_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "llmprune", "uniform", str(tmp_path / "missing"), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3
    assert proc.stderr.strip().startswith("error: model folder not found")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_hub_ids_go_through_from_pretrained(model_dir, tmp_path, monkeypatch):
    """A hub id is passed to transformers as is (here redirected to a local folder, offline)."""
    import transformers

    seen = []
    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained.__func__

        def redirect(klass, name, *args, _original=original, **kwargs):
            seen.append(name)
            return _original(klass, str(model_dir) if name == "someorg/tiny-llama" else name, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(redirect))
    result = run("uniform", "someorg/tiny-llama", "-o", tmp_path / "o", "--method", "magnitude", "--sparsity", "0.25")
    assert result.exit_code == 0, result.output
    assert seen.count("someorg/tiny-llama") >= 3  # config, weights, tokenizer
    assert read_json(tmp_path / "o" / "llmprune_report.json")["settings"]["model"] == "someorg/tiny-llama"


def test_unreachable_hub_id_is_a_clear_error(tmp_path):
    result = run("uniform", "someorg/not-cached-anywhere", "-o", tmp_path / "o")
    assert result.exit_code == 3
    assert result.output.startswith("error: cannot load model config 'someorg/not-cached-anywhere'")


def test_exported_model_equals_the_plan_applied_as_masks(model_dir, calib, tmp_path):
    """Reload the plan JSON, mask the dense model with it: same logits as the sliced export."""
    from llmprune.model.plan import PrunePlan
    from llmprune.model.surgery import mask_structured

    out = tmp_path / "out"
    result = run(
        "uniform", model_dir, "-o", out, "--sparsity", "0.4", "--method", "magnitude", "--save-dtype", "float32"
    )
    assert result.exit_code == 0, result.output
    plan = PrunePlan.load(out)
    assert PrunePlan.model_validate_json(plan.model_dump_json()) == plan  # JSON round-trip
    masked = load(model_dir)
    mask_structured(masked, ArchAdapter.for_model(masked), plan)
    tokens = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(load(out)(tokens).logits, masked(tokens).logits, atol=1e-5, rtol=1e-5)


def test_large_outputs_are_sharded(model_dir, tmp_path):
    out = tmp_path / "out"
    result = run(
        "uniform", model_dir, "-o", out, "--method", "magnitude", "--sparsity", "0.2", "--max-shard-size", "100KB"
    )
    assert result.exit_code == 0, result.output
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    assert load(out).config.num_hidden_layers == 2


def test_bfloat16_compute_still_gives_exact_24(model_dir, calib, tmp_path):
    out = tmp_path / "out"
    result = run(
        "semi24", model_dir, "-o", out, "--method", "sparsegpt", "--dtype", "bfloat16", "--calib", calib, *SMALL
    )
    assert result.exit_code == 0, result.output
    report = read_json(out / "llmprune_report.json")
    assert report["compute_dtype"] == "bfloat16" and report["achieved_sparsity"] == pytest.approx(0.5)
    # The pattern itself, in every targeted matrix of the exported file (not only the overall figure).
    targets = read_json(out / "llmprune_sparsity.json")["targets"]
    tensors = load_file(out / "model.safetensors")
    assert len(targets) == 14 and all(f"{t}.weight" in tensors for t in targets)
    for target in targets:
        w = tensors[f"{target}.weight"]
        groups = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert bool(groups.eq(2).all()), f"{target} is not exactly 2:4 ({int(groups.ne(2).sum())} groups differ)"


def test_config_recipe_with_flag_override(model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("sparsity: 0.5\nmethod: magnitude\nattn-unit: query\n")
    out = tmp_path / "a"
    assert run("uniform", model_dir, "-o", out, "--config", recipe).exit_code == 0
    settings = read_json(out / "llmprune_report.json")["settings"]
    assert (settings["sparsity"], settings["method"], settings["attn_unit"]) == (0.5, "magnitude", "query")
    out = tmp_path / "b"
    assert run("uniform", model_dir, "-o", out, "--config", recipe, "--sparsity", "0.2").exit_code == 0
    assert read_json(out / "llmprune_report.json")["settings"]["sparsity"] == 0.2
    as_json = tmp_path / "recipe.json"
    as_json.write_text('{"sparsity": 0.25, "method": "magnitude"}')
    assert run("uniform", model_dir, "-o", tmp_path / "c", "--config", as_json).exit_code == 0


def test_bad_config_recipes(model_dir, tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("sparsity: 0.3\nlearning_rate_typo: 1\n")
    result = run("uniform", model_dir, "-o", tmp_path / "o", "--config", unknown)
    assert result.exit_code == 2 and "unknown option(s) learning_rate_typo" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("sparsity: [0.3\n")
    result = run("uniform", model_dir, "-o", tmp_path / "o", "--config", broken)
    assert result.exit_code == 2 and "not valid YAML/JSON" in result.output
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("sparsity: 2\nmethod: magnitude\n")
    result = run("uniform", model_dir, "-o", tmp_path / "o", "--config", bad_value)
    assert result.exit_code == 2 and "sparsity" in result.output
    result = run("uniform", model_dir, "-o", tmp_path / "o", "--config", tmp_path / "missing.yaml")
    assert result.exit_code == 2 and "not found" in result.output
    assert not (tmp_path / "o").exists()


def test_eval_speed_against_a_baseline(model_dir, calib, tmp_path):
    out = tmp_path / "pruned"
    assert run("uniform", model_dir, "-o", out, "--method", "magnitude", "--sparsity", "0.5").exit_code == 0
    report_path = tmp_path / "r.json"
    result = run(
        "eval",
        out,
        "--data",
        calib,
        "--seqlen",
        "32",
        "--speed",
        "--speed-repeats",
        "1",
        "--baseline",
        model_dir,
        "--json",
        report_path,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["baseline"] == str(model_dir)
    assert report["speedup_prefill"] == pytest.approx(
        report["prefill_tokens_per_s"] / report["baseline_prefill_tokens_per_s"]
    )
    result = run("eval", out, "--data", calib, "--baseline", model_dir)
    assert result.exit_code == 2 and "add --speed" in result.output


@pytest.mark.parametrize(
    "recipe", sorted((Path(__file__).parents[1] / "examples" / "recipes").glob("*.yaml")), ids=lambda p: p.name
)
def test_example_recipes_use_only_known_options(recipe):
    """Every shipped recipe parses and names only options its command has."""
    import yaml

    from llmprune.pruners.base import cli_options, methods
    from llmprune.settings import PruneSettings

    strategy = recipe.stem.rsplit("-", 1)[1]
    allowed = set(PruneSettings.model_fields) | {o.name for o in cli_options(strategy)}
    data = {k.replace("-", "_"): v for k, v in yaml.safe_load(recipe.read_text()).items()}
    assert set(data) <= allowed, set(data) - allowed
    assert data["method"] in methods(strategy)


# ----- method options: declared once (pydantic Options), flags generated ---------------------
def test_a_flag_of_another_method_is_a_usage_error(model_dir, tmp_path):
    before = folder_hash(model_dir)
    result = run("uniform", model_dir, "-o", tmp_path / "o", "--method", "wanda", "--lora-rank", "8")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --lora-rank is an option of minimax, not of uniform --method wanda")
    assert len(result.output.strip().splitlines()) == 1
    # Given explicitly, even with the default value, it is still a flag wanda does not use.
    result = run("uniform", model_dir, "-o", tmp_path / "o", "--method", "magnitude", "--steps", "100")
    assert result.exit_code == 2 and "--steps is an option of minimax" in result.output
    result = run("semi24", model_dir, "-o", tmp_path / "o", "--method", "sparsegpt", "--no-distill")
    assert result.exit_code == 2  # --distill is not a semi24 flag at all (click's own usage error)
    result = run("semi24", model_dir, "-o", tmp_path / "o", "--method", "sparsegpt", "--lambda1", "0.2")
    assert result.exit_code == 2 and "--lambda1 is an option of proxsparse" in result.output
    assert folder_hash(model_dir) == before and not (tmp_path / "o").exists()


def test_a_recipe_key_of_another_method_is_a_usage_error(model_dir, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: wanda\nlora_rank: 8\n")
    result = run("uniform", model_dir, "-o", tmp_path / "o", "--config", recipe)
    assert result.exit_code == 2, result.output
    assert "lora_rank is an option of minimax, not of uniform --method wanda" in result.output
    assert str(recipe) in result.output and not (tmp_path / "o").exists()
    # The method given on the command line decides: the same key is fine for minimax.
    recipe.write_text("lora_rank: 8\n")
    result = run("uniform", model_dir, "-o", tmp_path / "o", "--config", recipe, "--method", "magnitude")
    assert result.exit_code == 2 and "lora_rank is an option of minimax" in result.output


@pytest.fixture
def captured_settings(monkeypatch):
    """Run the CLI up to the pipeline: the validated settings are captured instead of pruning."""
    import llmprune.run.pipeline
    import llmprune.run.summary

    seen = []
    monkeypatch.setattr(llmprune.run.pipeline, "run_prune", lambda settings: seen.append(settings) or {})
    monkeypatch.setattr(llmprune.run.summary, "print_prune_summary", lambda report: None)
    return seen


def test_method_options_reach_the_method_with_its_defaults(tmp_path, captured_settings):
    from llmprune.pruners.minimax import MinimaxOptions

    assert run("uniform", "m", "-o", tmp_path / "o").exit_code == 0
    assert run("uniform", "m", "-o", tmp_path / "o", "--lora-rank", "4", "--no-distill").exit_code == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lora_rank: 2\nsteps: 7\n")
    assert run("uniform", "m", "-o", tmp_path / "o", "--config", recipe, "--steps", "9").exit_code == 0
    assert run("uniform", "m", "-o", tmp_path / "o", "--method", "wanda").exit_code == 0
    defaults, flags, recipe_run, wanda = (s.method_options for s in captured_settings)
    assert defaults == MinimaxOptions().model_dump()
    assert flags == {**defaults, "lora_rank": 4, "distill": False}
    assert recipe_run == {**defaults, "lora_rank": 2, "steps": 9}  # the flag overrides the recipe
    assert wanda == {"widths": ""}  # wanda's own option only: nothing of minimax's rides along


def _fake_methods(monkeypatch, first: dict, second: dict):
    """Register two throw-away uniform methods whose Options have the given fields."""
    from pydantic import create_model

    from llmprune.pruners import base

    classes = {}
    for name, fields in (("fake_a", first), ("fake_b", second)):
        options = create_model(f"{name}_options", **fields)
        classes[name] = type(
            name,
            (base.Pruner,),
            {
                "strategy": "uniform",
                "method": name,
                "Options": options,
                "prune": lambda self, ctx: None,
                "summary": name,
            },
        )
        monkeypatch.setitem(base._REGISTRY["uniform"], name, classes[name])
    return classes


def test_a_name_shared_by_two_methods_keeps_each_methods_default(monkeypatch, tmp_path, captured_settings):
    from pydantic import Field
    from typer.testing import CliRunner

    from llmprune.cli import _prune_command
    from llmprune.pruners.base import cli_options

    _fake_methods(
        monkeypatch,
        {"rounds": (int, Field(5, description="rounds of a"))},
        {"rounds": (int, Field(7, description="rounds of b")), "only_b": (bool, Field(True, description="b only"))},
    )
    (rounds,) = [o for o in cli_options("uniform") if o.name == "rounds"]
    assert rounds.methods == ("fake_a", "fake_b") and rounds.default is None and not rounds.shared_default
    app = typer_app(_prune_command("uniform"))
    invoke = lambda *args: CliRunner().invoke(app, [str(a) for a in args], env=WIDE)  # noqa: E731
    help_text = " ".join(invoke("--help").output.split())
    assert "fake_a: rounds of a" in help_text and "fake_b: rounds of b" in help_text
    assert "fake_a 5, fake_b 7" in help_text
    for method, expected in (("fake_a", 5), ("fake_b", 7)):
        assert invoke("m", "-o", tmp_path / "o", "--method", method).exit_code == 0
        assert captured_settings[-1].method_options["rounds"] == expected
        assert invoke("m", "-o", tmp_path / "o", "--method", method, "--rounds", "3").exit_code == 0
        assert captured_settings[-1].method_options["rounds"] == 3
    result = invoke("m", "-o", tmp_path / "o", "--method", "fake_a", "--no-only-b")
    assert result.exit_code == 2 and "--only-b is an option of fake_b, not of uniform --method fake_a" in result.output


#: A terminal wide enough that --help never wraps a line.
WIDE = {"COLUMNS": "4000", "TERMINAL_WIDTH": "4000"}


def typer_app(command):
    import typer

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    return app


def test_a_name_shared_with_two_types_or_without_help_is_refused(monkeypatch):
    from pydantic import Field

    from llmprune.pruners.base import cli_options

    _fake_methods(
        monkeypatch, {"rounds": (int, Field(5, description="a"))}, {"rounds": (float, Field(7.0, description="b"))}
    )
    with pytest.raises(TypeError, match="rounds.*float.*int"):
        cli_options("uniform")
    _fake_methods(monkeypatch, {"rounds": (int, Field(5, description="a"))}, {"rounds": (int, 5)})
    with pytest.raises(TypeError, match="description"):
        cli_options("uniform")


@pytest.mark.parametrize("strategy", ["uniform", "global", "semi24"])
def test_help_shows_every_method_option_with_its_description(strategy):
    from typer.testing import CliRunner

    from llmprune.cli import app
    from llmprune.pruners.base import cli_options, methods

    result = CliRunner().invoke(app, [strategy, "--help"], env=WIDE)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    declared = {(m, n) for m, cls in methods(strategy).items() for n in cls.Options.model_fields}
    assert {(m, o.name) for o in cli_options(strategy) for m in o.methods} == declared
    for opt in cli_options(strategy):
        assert opt.flag in text
        texts = {m: methods(strategy)[m].Options.model_fields[opt.name].description for m in opt.methods}
        for method, description in texts.items():  # methods sharing a description are listed together
            sharing = ", ".join(m for m in opt.methods if texts[m] == description)
            assert " ".join(f"{sharing}: {description}".split()) in text, (opt.name, method)


def test_an_option_the_method_does_not_declare_is_refused_by_the_pruner():
    from llmprune.errors import UsageError
    from llmprune.pruners.base import get_pruner_class

    with pytest.raises(UsageError, match="lora_rank"):
        get_pruner_class("uniform", "wanda")({"lora_rank": 8})
    with pytest.raises(UsageError, match="lora_rnak"):
        get_pruner_class("uniform", "minimax")({"lora_rnak": 8})


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_global_has_uniform_width_baselines(model_dir, calib, tmp_path, method):
    """`global --method wanda|magnitude`: the uniform-width scores, the reference a searched
    distribution (tyr) is compared with; same weights as `uniform --method ...`, recorded as global."""
    outs = {}
    for strategy in ("global", "uniform"):
        outs[strategy] = tmp_path / strategy
        result = run(
            strategy, model_dir, "-o", outs[strategy], "--method", method, "--sparsity", "0.4", "--calib", calib, *SMALL
        )
        assert result.exit_code == 0, result.output
    report = read_json(outs["global"] / "llmprune_report.json")
    assert (report["strategy"], report["method"]) == ("global", method)
    assert len({(w["heads"], w["kv_heads"], w["channels"]) for w in report["layer_widths"]}) == 1, "uniform widths"
    assert (outs["global"] / "model.safetensors").read_bytes() == (outs["uniform"] / "model.safetensors").read_bytes()


# ----- clean edges (issue 30) -------------------------------------------------------------------------
def _cli_subprocess(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmprune", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "args,message",
    [
        (["uniform", "{model}", "-o", "{tmp}/o", "--sparsity", "abc"], "Invalid value for '--sparsity'"),
        (["uniform"], "Missing argument 'model'"),
        (["bogus"], "No such command 'bogus'"),
    ],
)
def test_parser_usage_errors_are_one_line(args, message, model_dir, tmp_path):
    """The argument parser's errors are one ``error:`` line and exit 2, like every other usage error."""
    proc = _cli_subprocess(*(a.format(model=model_dir, tmp=tmp_path) for a in args))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr


@pytest.mark.parametrize("command", ["uniform", "recover", "remask"])
def test_an_empty_output_path_is_refused(command, model_dir, tmp_path):
    """``-o ""`` (a script's unset $OUT) was read as ``.``: with --overwrite it replaced the working folder."""
    work = tmp_path / "work"
    work.mkdir()
    extra = {"uniform": ["--method", "wanda"], "recover": ["--teacher", model_dir], "remask": ["--like", model_dir]}
    proc = _cli_subprocess(command, model_dir, "-o", "", *extra[command], "--overwrite", cwd=work)
    assert proc.returncode == 2 and "must not be empty" in proc.stderr, proc.stderr
    assert work.is_dir() and not list(work.iterdir())


def test_estimate_json_under_a_file_is_one_line(model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("uniform", model_dir, "--estimate", "--json", blocker / "plan.json")
    assert result.exit_code == 6 and "is a file" in result.output and "Traceback" not in result.output


def test_inspect_of_a_folder_whose_config_is_not_json_is_one_line(model_dir, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(model_dir, folder)
    (folder / "config.json").write_text("{not json")
    result = run("inspect", folder)
    assert result.exit_code == 3 and "not valid JSON" in result.output and "Traceback" not in result.output


def test_recover_help_does_not_mention_estimate():
    assert "--estimate" not in run("recover", "--help").output
