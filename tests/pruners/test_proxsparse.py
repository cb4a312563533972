"""semi24 --method proxsparse on tiny models: exact 2:4 on original weights, nothing else changed,
plain-transformers reload, stages, init masks, bf16 masters, resume, errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import read_json, save_tiny_model
from helpers import run_cli as run
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llmprune.core.prox import share_24
from llmprune.pruners.base import default_method
from llmprune.pruners.proxsparse import ProxSparsePruner, ProxSparseTraining
from llmprune.train import loop as training

SMALL = ["--seqlen", "32", "--nsamples", "8", "--batch-size", "4"]
# A strong λ₁ and a large step so that a few steps visibly move the masks away from magnitude.
FAST = ["--steps", "6", "--lr", "0.02", "--lambda1", "0.3", "--checkpoint-every", "2"]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def check_semi24_of_original(model_dir: Path, out: Path) -> dict[str, torch.Tensor]:
    """Every targeted matrix is exactly 2:4 and equals the original weights where kept; every other
    tensor is bitwise unchanged. Returns the masks."""
    before = load_file(model_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    masks = {}
    for key, w0 in before.items():
        w = after[key]
        if key.endswith(".weight") and any(t in key for t in TARGETS):
            groups = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
            assert bool((groups == 2).all()), f"{key} is not exactly 2:4"
            mask = w != 0
            assert torch.equal(w[mask], w0.to(w.dtype)[mask]), f"{key}: kept weights differ from the original"
            masks[key] = mask
        else:
            assert torch.equal(w, w0.to(w.dtype)), f"{key} changed"  # embeddings, norms, lm_head
    return masks


def test_proxsparse_is_the_default_semi24_method():
    assert default_method("semi24") == "proxsparse"


def test_exact_24_on_original_weights_nothing_else_changed_and_plain_reload(model_dir, calib, tmp_path):
    out = tmp_path / "out"
    result = run("semi24", model_dir, "-o", out, "--calib", calib, *SMALL, *FAST)
    assert result.exit_code == 0, result.output
    masks = check_semi24_of_original(model_dir, out)
    assert len(masks) == 2 * 7
    # the learned masks are not simply the magnitude masks: training moved some of them
    before = load_file(model_dir / "model.safetensors")
    from llmprune.core.masks import nm_mask

    differ = sum(int((m != nm_mask(before[k].abs())).sum()) for k, m in masks.items())
    assert differ > 0
    # plain transformers reload, finite logits, no quantization_config, sidecar present
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.randint(0, 300, (1, 16))).logits
    assert torch.isfinite(logits).all()
    assert "quantization_config" not in read_json(out / "config.json")
    report = read_json(out / "llmprune_report.json")
    assert report["method"] == "proxsparse" and report["achieved_sparsity"] == pytest.approx(0.5)
    trace = read_json(out / "proxsparse_trace.json")["trace"]
    assert len(trace) == 6 and {"loss", "reg", "share24", "lr", "stage"} <= set(trace[0])
    assert trace[-1]["share24"] > trace[0]["share24"], "the prox drives groups towards 2:4"
    assert trace[-1]["lr"] < trace[1]["lr"], "linear decay"
    assert (out / "proxsparse_trace.png").stat().st_size > 1000
    assert not (out.parent / (out.name + ".llmprune-work")).exists()


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_other_families_biases_and_qk_norms_untouched(family, calib, tmp_path):
    model_dir = save_tiny_model(tmp_path / family, family)
    out = tmp_path / "out"
    result = run("semi24", model_dir, "-o", out, "--calib", calib, *SMALL, "--steps", "2", "--lr", "0.02")
    assert result.exit_code == 0, result.output
    assert len(check_semi24_of_original(model_dir, out)) == 2 * 7


def test_prox_runs_after_every_step_without_the_learning_rate(model_dir, calib, tmp_path):
    """With a tiny learning rate the optimiser barely moves the weights; a large λ₁ alone must still
    make every group 2:4 after the first step (λ₁ is not scaled by the learning rate)."""
    out = tmp_path / "out"
    result = run(
        "semi24", model_dir, "-o", out, "--calib", calib, *SMALL, "--steps", "2", "--lr", "1e-9", "--lambda1", "200"
    )
    assert result.exit_code == 0, result.output
    trace = read_json(out / "proxsparse_trace.json")["trace"]
    assert trace[0]["share24"] == 1.0 and trace[0]["reg"] == 0.0


@pytest.mark.parametrize(
    "extra",
    [
        ["--layers-per-stage", "1"],
        ["--init-mask", "wanda", "--metric", "wanda", "--lambda2", "0.5"],
        ["--init-mask", "sparsegpt", "--init-shrink", "0"],
    ],
)
def test_stages_metrics_and_init_masks_give_exact_24(model_dir, calib, tmp_path, extra):
    out = tmp_path / "out"
    result = run("semi24", model_dir, "-o", out, "--calib", calib, *SMALL, *FAST, *extra)
    assert result.exit_code == 0, result.output
    check_semi24_of_original(model_dir, out)
    report = read_json(out / "llmprune_report.json")["proxsparse"]
    trace = read_json(out / "proxsparse_trace.json")["trace"]
    if "--layers-per-stage" in extra:
        assert report["stages"] == 2 and len(trace) == 12 and {r["stage"] for r in trace} == {1, 2}
    else:
        assert "share_weights_differing_from_init_mask" in report
    if "--lambda2" in extra:
        assert trace[-1]["anchor"] > 0


def test_init_mask_with_zero_learning_signal_reproduces_the_wanda_mask(model_dir, calib, tmp_path):
    """init from the Wanda mask (shrink 0 → already 2:4), λ₁ = 0 and a negligible step: the learned
    mask is the Wanda mask (computed on dense activations)."""
    out = tmp_path / "out"
    result = run(
        "semi24",
        model_dir,
        "-o",
        out,
        "--calib",
        calib,
        *SMALL,
        "--steps",
        "1",
        "--lr",
        "1e-12",
        "--lambda1",
        "0",
        "--init-mask",
        "wanda",
        "--init-shrink",
        "0",
    )
    assert result.exit_code == 0, result.output
    assert read_json(out / "llmprune_report.json")["proxsparse"]["share_weights_differing_from_init_mask"] == 0.0


def test_bfloat16_compute_trains_float32_masters(model_dir, calib, tmp_path, monkeypatch):
    # After every optimiser step + prox, record what the masters are: float32 tensors apart from the
    # model's bf16 weights that carry values bf16 cannot represent (bf16 masters would lose the small
    # AdamW updates to rounding).
    seen: list[tuple[set[torch.dtype], bool, float]] = []
    update = ProxSparseTraining.update

    def spy(self, batch, means):
        record = update(self, batch, means)
        masters = self.masters
        dtypes = {m.dtype for m in masters.values()}
        aliased = any(m.data_ptr() == self.targets[n].weight.data_ptr() for n, m in masters.items())
        finer = sum(int((m != m.to(torch.bfloat16).float()).sum()) for m in masters.values())
        seen.append((dtypes, aliased, finer / sum(m.numel() for m in masters.values())))
        return record

    monkeypatch.setattr(ProxSparseTraining, "update", spy)
    out = tmp_path / "out"
    result = run(
        "semi24",
        model_dir,
        "-o",
        out,
        "--calib",
        calib,
        *SMALL,
        *FAST,
        "--dtype",
        "bfloat16",
        "--save-dtype",
        "float32",
    )
    assert result.exit_code == 0, result.output
    after = load_file(out / "model.safetensors")
    before = load_file(model_dir / "model.safetensors")
    for key, w in after.items():
        if any(t in key for t in TARGETS):
            assert share_24(w) == 1.0
            mask = w != 0
            assert torch.equal(w[mask], before[key].to(torch.bfloat16).float()[mask])
    assert len(seen) == 6  # every step of FAST
    for dtypes, aliased, finer in seen:
        assert dtypes == {torch.float32} and not aliased
        assert finer > 0.1, "the masters hold values a bf16 tensor cannot: they are float32 in substance"


@pytest.mark.parametrize("stop_at", [3, 7])  # inside stage 1; inside stage 2 (after a stage boundary)
def test_resume_after_an_interruption_equals_an_uninterrupted_run(model_dir, calib, tmp_path, stop_at):
    args = ["--calib", calib, *SMALL, *FAST, "--layers-per-stage", "1"]
    full = tmp_path / "full"
    assert run("semi24", model_dir, "-o", full, *args).exit_code == 0

    part = tmp_path / "part"
    with training.step_callback(training.interrupt_after(stop_at)):
        result = run("semi24", model_dir, "-o", part, *args)
    assert result.exit_code != 0 and not part.exists()
    result = run("semi24", model_dir, "-o", part, *args, "--resume")
    assert result.exit_code == 0, result.output

    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    trace_a = read_json(full / "proxsparse_trace.json")["trace"]
    trace_b = read_json(part / "proxsparse_trace.json")["trace"]
    assert [r["loss"] for r in trace_a] == pytest.approx([r["loss"] for r in trace_b], abs=1e-6)


def test_resume_with_changed_options_is_refused(model_dir, calib, tmp_path):
    args = ["--calib", calib, *SMALL, *FAST]
    part = tmp_path / "part"

    with training.step_callback(training.interrupt_after(3)):
        assert run("semi24", model_dir, "-o", part, *args).exit_code != 0
    result = run("semi24", model_dir, "-o", part, *args, "--lambda1", "0.7", "--resume")
    assert result.exit_code != 0 and "different settings" in result.output


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--init-mask", "bogus"], "init_mask"),
        (["--metric", "l3"], "metric"),
        (["--lambda1", "-1"], "lambda1"),
        (["--warmup", "1.5"], "warmup"),
        (["--steps", "0"], "steps"),
    ],
)
def test_bad_options_fail_with_one_line(model_dir, calib, tmp_path, extra, needle):
    result = run("semi24", model_dir, "-o", tmp_path / "o", "--calib", calib, *SMALL, *extra)
    assert result.exit_code != 0
    assert needle in result.output and "Traceback" not in result.output


def test_lr_schedule_warms_up_then_decays_linearly():
    f = [training.LRSchedule(0.2).factor(s, 10) for s in range(10)]
    assert f[:2] == [0.5, 1.0] and f[2] == 1.0 and f[-1] == pytest.approx(0.125)
    assert all(a >= b for a, b in zip(f[1:], f[2:]))
    assert training.LRSchedule(0.0).factor(0, 10) == 1.0


def test_obs_with_a_given_mask_reproduces_sparsegpt_for_its_own_mask():
    from llmprune.core.obs import obs_prune, sparsegpt_prune

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g)
    x = torch.randn(300, 64, generator=g)
    hessian = x.t() @ x
    ref = sparsegpt_prune(w, hessian, blocksize=32)
    torch.testing.assert_close(obs_prune(w, hessian, mask=ref != 0, blocksize=32), ref, rtol=0, atol=1e-6)


def test_refit_obs_keeps_the_learned_mask_and_updates_kept_weights(model_dir, calib, tmp_path):
    out = tmp_path / "out"
    result = run("semi24", model_dir, "-o", out, "--calib", calib, *SMALL, *FAST, "--refit", "obs")
    assert result.exit_code == 0, result.output
    before, after = load_file(model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    updated = 0
    for key, w in after.items():
        if any(t in key for t in TARGETS):
            assert bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all())
            updated += int((w[w != 0] != before[key][w != 0]).sum())
        else:
            assert torch.equal(w, before[key])
    assert updated > 0


def test_lambda_is_scale_free_per_matrix():
    """λ = λ₁ / rms(W₀) in the prox metric: a matrix and the same matrix ×10 get λ's in the ratio
    10 : 1, and one training step's prox gives ×10 the weights (the same masks)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 32, generator=g)
    targets = {"a": torch.nn.Linear(32, 8, bias=False), "b": torch.nn.Linear(32, 8, bias=False)}
    w0 = {"a": w.clone(), "b": 10.0 * w}
    col = torch.rand(32, generator=g) + 0.5  # activation norms (--metric wanda), normalised to rms 1
    scales = {n: col / col.pow(2).mean().sqrt() for n in targets}
    ctx = SimpleNamespace(
        adapter=SimpleNamespace(layers=lambda model: [None]), model=None, device=torch.device("cpu"), stream=None
    )
    pruner = ProxSparsePruner({"lambda1": 0.5, "steps": 4})
    method = ProxSparseTraining(pruner, ctx, targets, {"a": 0, "b": 0}, w0, scales, None, [], {}, per_stage=1)
    for name in targets:
        assert method.lam[name] == pytest.approx(0.5 / float((w0[name] * scales[name]).pow(2).mean().sqrt()))
    assert method.lam["a"] == pytest.approx(10.0 * method.lam["b"], rel=1e-6)

    method.begin_stage(0, None)
    batch = training.Batch(
        stage=0, step=0, rows=torch.arange(1), tokens=torch.zeros(1, 2, dtype=torch.long), global_rows=1
    )
    method.step(batch, lambda tokens: torch.zeros(1, 2, 5))  # no gradient reaches the weights: the prox alone
    method.update(batch, {"loss": 0.0})
    a, b = method.masters["a"].detach(), method.masters["b"].detach()
    assert not torch.allclose(a, w, atol=1e-3)  # the prox moved the weights
    torch.testing.assert_close(b, 10.0 * a, rtol=1e-4, atol=1e-4)
    method.end_stage(0)
    assert torch.equal(method.masks["a"], method.masks["b"])
