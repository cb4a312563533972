"""uniform --method minimax on tiny models: widths, budget, export, multipliers, resume, errors."""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny_model, read_json, tiny_tokenizer
from helpers import run_cli as run
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llmprune.core.distill import precompute_teacher, topk_kl
from llmprune.core.lora import add_lora, merged_weights, remove_lora
from llmprune.core.masks import uniform_widths
from llmprune.export.save import save_pruned
from llmprune.model.arch import ArchAdapter, Geometry
from llmprune.model.surgery import apply_plan, exported_config
from llmprune.pruners import minimax
from llmprune.pruners.base import PruneContext, default_method
from llmprune.runtime.progress import Reporter
from llmprune.settings import PruneSettings
from llmprune.train import loop as training

SMALL = ["--seqlen", "32", "--nsamples", "8", "--batch-size", "4"]
FAST = ["--steps", "8", "--lora-rank", "4", "--teacher-topk", "16", "--checkpoint-every", "4"]


def dense_layer_params(geom) -> int:
    return geom.layer_linear_params(geom.num_heads, geom.num_kv_heads, geom.intermediate_size)


# ----- building blocks ------------------------------------------------------------------------
def test_minimax_is_the_default_uniform_method():
    assert default_method("uniform") == "minimax"


def test_ste_mask_is_hard_top_k_with_gradients_to_scores_and_width():
    z = torch.tensor([[0.5, 2.0, 1.0, -0.3, 0.9]], requires_grad=True)
    width = torch.tensor(2.6, requires_grad=True)
    m = minimax.ste_mask(z, width, tau=1.0)
    assert m.tolist() == [[0.0, 1.0, 1.0, 0.0, 1.0]]  # round(2.6) = 3 best scores
    (m * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).sum().backward()
    assert z.grad.tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0]]  # identity on z
    assert width.grad > 0  # widening would add units with positive value here


def test_final_widths_meet_the_budget_within_one_channel():
    geom = Geometry(hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=96, num_layers=2)
    for attn_unit in ("group", "query"):
        for sparsity in (0.1, 0.3, 0.5, 0.7):
            budget = minimax.Budget(geom, attn_unit, sparsity)
            for s_a in (0.4, 1.0, 1.6, 2.0, 3.7, 4.0):
                k_a, k_f = budget.final_widths(s_a)
                assert k_a % budget.step_a == 0 and 1 <= k_f <= geom.intermediate_size
                target = (1 - sparsity) * dense_layer_params(geom)
                assert abs(budget.kept_params(k_a, k_f) - target) <= geom.mlp_unit_params / 2 + 1e-6
            # a width equal to the baselines' attention width reproduces their split exactly
            k_ref = uniform_widths(geom, sparsity, attn_unit)
            assert budget.final_widths(float(k_ref[0])) == k_ref


def test_topk_kl_is_zero_for_the_teacher_and_full_kl_when_k_is_the_vocabulary():
    model = make_tiny_model("llama")
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(tokens).logits
    teacher = precompute_teacher(model, tokens, 300, 2.0, 2, torch.device("cpu"))
    assert float(topk_kl(logits, teacher.logp, teacher.index, teacher.log_rest, 2.0)) == pytest.approx(0, abs=1e-5)
    other = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    full = (
        torch.nn.functional.kl_div(
            torch.log_softmax(other / 2, -1), torch.log_softmax(logits / 2, -1), log_target=True, reduction="none"
        )
        .sum(-1)
        .mean()
        * 4
    )
    got = topk_kl(other, teacher.logp, teacher.index, teacher.log_rest, 2.0)
    assert float(got) == pytest.approx(float(full), rel=1e-4)
    top8 = precompute_teacher(model, tokens, 8, 2.0, 2, torch.device("cpu"))
    partial = float(topk_kl(other, top8.logp, top8.index, top8.log_rest, 2.0))
    assert 0 < partial <= float(full) + 1e-5  # coarser outcome space: smaller divergence


def test_lora_merge_equals_the_adapted_forward():
    model = make_tiny_model("qwen2")
    adapter = ArchAdapter.for_model(model)
    tokens = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    wrapped = add_lora(model, adapter, rank=3, alpha=6.0, seed=0)
    with torch.no_grad():
        for m in wrapped.values():
            m.lora_b.normal_(0, 0.1)
        adapted = model(tokens).logits
    merged = merged_weights(wrapped)
    remove_lora(model, adapter)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, w in merged.items():
            modules[name].weight.copy_(w)
        torch.testing.assert_close(model(tokens).logits, adapted, atol=1e-4, rtol=1e-4)


# ----- end to end ------------------------------------------------------------------------------
@pytest.mark.parametrize("attn_unit", ["group", "query"])
def test_uniform_widths_in_every_layer_and_budget_met(model_dir, calib, tmp_path, attn_unit):
    out = tmp_path / "out"
    result = run(
        "uniform", model_dir, "-o", out, "--sparsity", "0.5", "--attn-unit", attn_unit, "--calib", calib, *SMALL, *FAST
    )
    assert result.exit_code == 0, result.output
    report = read_json(out / "llmprune_report.json")
    assert report["method"] == "minimax"
    widths = {(w["heads"], w["kv_heads"], w["channels"]) for w in report["layer_widths"]}
    assert len(widths) == 1, "every layer keeps the same widths"
    heads, kv, channels = widths.pop()
    config = read_json(out / "config.json")
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (
        heads,
        kv,
        channels,
    )
    model = make_tiny_model("llama")
    geom = ArchAdapter.for_model(model).geometry(model)
    # achieved sparsity equals the request up to one MLP channel per layer
    tolerance = geom.mlp_unit_params / dense_layer_params(geom)
    assert abs(report["achieved_sparsity"] - 0.5) <= tolerance / 2 + 1e-9
    assert report["achieved_sparsity"] == pytest.approx(
        1 - geom.layer_linear_params(heads, kv, channels) / dense_layer_params(geom)
    )
    trace = read_json(out / "minimax_trace.json")["trace"]
    assert len(trace) == 8 and (out / "minimax_trace.png").stat().st_size > 1000
    assert {"loss", "kl", "s_attn", "s_mlp", "violation", "y_resource"} <= set(trace[0])


def test_export_reloads_with_plain_transformers_and_matches_the_masked_model(model_dir, calib, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = ArchAdapter.for_model(model)
    tokenizer = tiny_tokenizer()
    settings = PruneSettings(
        strategy="uniform",
        method="minimax",
        model=str(model_dir),
        output=tmp_path / "o",
        sparsity=0.4,
        seqlen=32,
        nsamples=8,
        batch_size=4,
        calib=str(calib),
    )
    from llmprune.data.text import calibration_samples

    tokens = calibration_samples(tokenizer, str(calib), 8, 32, 0)
    pruner = minimax.MinimaxPruner({"steps": 10, "lora_rank": 4, "teacher_topk": 16, "lora_lr": 1e-2})
    work = tmp_path / "work"
    work.mkdir()
    ctx = PruneContext(
        model=model,
        adapter=adapter,
        tokenizer=tokenizer,
        calib=tokens,
        settings=settings,
        device=torch.device("cpu"),
        work_dir=work,
        progress=Reporter(False),
    )
    events = []
    with training.step_callback(events.append):
        result = pruner.prune(ctx)
    plan = result.plan
    assert plan.is_uniform and plan.weights, "LoRA weights are merged into the plan"
    changed = [n for n, w in plan.weights.items() if not torch.allclose(w, original[n + ".weight"])]
    assert changed, "LoRA training changed the kept weights"
    assert result.report["minimax"]["merge_check_max_abs_logit_diff"] < 1e-4
    apply_plan(model, adapter, plan)
    save_pruned(
        model,
        tokenizer,
        plan,
        {"ok": True},
        tmp_path / "export",
        torch.float32,
        config=exported_config(model, adapter, plan),
    )
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    (probe,) = [e.data for e in events if e.kind == "student"]  # the trained student's logits
    with torch.no_grad():
        got = reloaded(probe["tokens"]).logits
    torch.testing.assert_close(got, probe["logits"], atol=1e-4, rtol=1e-4)


def test_multipliers_increase_while_the_constraint_is_violated(model_dir, calib, tmp_path):
    out = tmp_path / "out"
    result = run(
        "uniform",
        model_dir,
        "-o",
        out,
        "--sparsity",
        "0.6",
        "--calib",
        calib,
        *SMALL,
        *FAST,
        "--ramp",
        "0.5",
        "--finetune",
        "0",
        "--lora-rank",
        "0",
        "--width-lr",
        "0.005",
    )
    assert result.exit_code == 0, result.output
    trace = read_json(out / "minimax_trace.json")["trace"]
    violated = [(prev, cur) for prev, cur in zip(trace, trace[1:]) if cur["violation"] > 1e-9]
    assert violated, "the ramp with a slow width step must violate the budget for a while"
    for prev, cur in violated:
        assert cur["y_resource"] > prev["y_resource"]
    for prev, cur in zip(trace, trace[1:]):
        if cur["layer_violation_mlp"] > 0:
            assert cur["y_layer_mlp"] > prev["y_layer_mlp"]
        if cur["violation"] < 0 and cur["y_resource"] > 0:
            assert cur["y_resource"] < prev["y_resource"]


def test_resume_after_an_interruption_equals_an_uninterrupted_run(model_dir, calib, tmp_path):
    args = ["--sparsity", "0.4", "--calib", calib, *SMALL, *FAST]
    full = tmp_path / "full"
    assert run("uniform", model_dir, "-o", full, *args).exit_code == 0

    part = tmp_path / "part"
    with training.step_callback(training.interrupt_after(6)):
        result = run("uniform", model_dir, "-o", part, *args)
    assert result.exit_code == 130 and "--resume" in result.output
    assert not part.exists()
    result = run("uniform", model_dir, "-o", part, *args, "--resume")
    assert result.exit_code == 0, result.output

    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    assert read_json(full / "llmprune_plan.json") == read_json(part / "llmprune_plan.json")
    trace_a = read_json(full / "minimax_trace.json")["trace"]
    trace_b = read_json(part / "minimax_trace.json")["trace"]
    assert [r["loss"] for r in trace_a] == pytest.approx([r["loss"] for r in trace_b], abs=1e-6)


def test_fixed_widths_ablation_uses_the_uniform_split(model_dir, calib, tmp_path):
    out = tmp_path / "out"
    result = run(
        "uniform",
        model_dir,
        "-o",
        out,
        "--sparsity",
        "0.5",
        "--calib",
        calib,
        *SMALL,
        *FAST,
        "--no-learn-widths",
        "--no-distill",
        "--lora-rank",
        "0",
    )
    assert result.exit_code == 0, result.output
    report = read_json(out / "llmprune_report.json")["minimax"]
    model = make_tiny_model("llama")
    k_a, k_f = uniform_widths(ArchAdapter.for_model(model).geometry(model), 0.5, "group")
    assert (report["k_attn"], report["k_mlp"]) == (k_a, k_f)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--steps", "0"], "steps"),
        (["--lora-rank", "-1"], "lora_rank"),
        (["--ramp", "1.5"], "ramp"),
        (["--ramp", "0.6", "--finetune", "0.5"], "--ramp 0.6 + --finetune 0.5"),
        (["--no-distill", "--lm-weight", "0"], "--lm-weight"),
        (["--temperature", "0"], "temperature"),
        (["--teacher-topk", "0"], "teacher_topk"),
        (["--lr", "-1"], "lr"),
        (["--steps", "many"], "steps"),
    ],
)
def test_bad_options_give_one_clear_line(model_dir, calib, tmp_path, extra, needle):
    result = run("uniform", model_dir, "-o", tmp_path / "o", "--calib", calib, *SMALL, *extra)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert needle in result.output and "Traceback" not in result.output
    if extra != ["--steps", "many"]:  # typer's own parse errors are framed in a box
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert not (tmp_path / "o").exists()


def test_resume_refuses_a_checkpoint_from_other_options(model_dir, calib, tmp_path):
    args = ["--sparsity", "0.4", "--calib", calib, *SMALL, *FAST]
    with training.step_callback(training.interrupt_after(5)):
        assert run("uniform", model_dir, "-o", tmp_path / "o", *args).exit_code == 130
    result = run("uniform", model_dir, "-o", tmp_path / "o", *args, "--lm-weight", "0.9", "--resume")
    assert result.exit_code == 9 and "different settings" in result.output


def test_prox_soft_thresholds_the_pruned_scores_by_hand():
    """One ``update`` with no score gradient: Adam leaves the scores alone, so only the proximal step
    of ``(λ + y_ℓ)·‖z outside the kept set‖₁`` moves them: pruned scores shrink towards 0 by
    ``lr·(λ + y_ℓ)`` (sign kept, clamped at 0), kept scores are untouched."""
    model = make_tiny_model("llama")
    adapter = ArchAdapter.for_model(model)
    geom = adapter.geometry(model)  # 2 layers, 2 KV groups, 96 MLP channels
    settings = PruneSettings(strategy="uniform", method="minimax", model="tiny", output="o", sparsity=0.4)
    ctx = PruneContext(
        model=model,
        adapter=adapter,
        tokenizer=None,
        calib=None,
        settings=settings,
        device=torch.device("cpu"),
        work_dir=None,
    )
    pruner = minimax.MinimaxPruner({"lr": 0.1, "prox": 0.5, "lora_rank": 0, "steps": 10})
    z_a = torch.tensor([[0.3, -0.4], [0.1, 0.9]])
    z_f = torch.stack([torch.full((96,), 0.25), torch.full((96,), -0.02)])
    scores = {"z_a": z_a, "z_f": z_f, "prior_a": z_a.clone(), "prior_f": z_f.clone()}
    method = minimax.MinimaxTraining(pruner, ctx, geom, None, scores, {})
    method.begin_stage(0, None)
    try:
        # per-layer multipliers y_ℓ (attention row, MLP row): thresholds lr·(λ + y_ℓ)
        method.y_layer.copy_(torch.tensor([[0.0, 1.0], [0.5, 0.0]]))  # attn 0.05, 0.15; MLP 0.1, 0.05
        m_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view_as(method.z_a)
        m_f = torch.zeros(2, 96)
        m_f[:, :48] = 1.0
        method.current = {
            "sa": torch.tensor(1.0),
            "sf": torch.tensor(48.0),
            "m_a": m_a,
            "m_f": m_f.view_as(method.z_f),
            "frac": 0.6,
            "violation": 0.0,
            "layer_viol": torch.zeros(2, 2),
        }
        batch = training.Batch(
            stage=0, step=0, rows=torch.arange(1), tokens=torch.zeros(1, 2, dtype=torch.long), global_rows=1
        )
        method.update(batch, {"loss": 0.0, "kl": 0.0, "lm": 0.0})
    finally:
        method.hooks.remove()
    # attention: kept 0.3 and 0.9; pruned −0.4 → −(0.4 − 0.05) = −0.35; pruned 0.1 − 0.15 < 0 → 0
    torch.testing.assert_close(method.z_a.detach().flatten(1), torch.tensor([[0.3, -0.35], [0.0, 0.9]]))
    zf = method.z_f.detach().flatten(1)
    torch.testing.assert_close(zf[0, :48], torch.full((48,), 0.25))  # kept
    torch.testing.assert_close(zf[0, 48:], torch.full((48,), 0.15))  # 0.25 − 0.1
    torch.testing.assert_close(zf[1, :48], torch.full((48,), -0.02))  # kept
    assert torch.equal(zf[1, 48:], torch.zeros(48))  # |−0.02| < 0.05: exactly 0
