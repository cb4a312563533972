"""The recovery stage (llmprune.train.recovery, ``llmprune recover``, ``--recover``): 2:4 zeros stay zero,
widths stay, resume equals an uninterrupted run, the objective goes down, bad inputs fail in one
line; and (slow) a recovered 50% structured reference model beats the unrecovered one on held-out
calibration text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import CALIB, REFMODEL, make_tiny_model, read_json, requires_refmodel, save_tiny_model, tiny_tokenizer
from helpers import run_cli as run
from safetensors.torch import load_file

from llmprune.export.save import save_pruned
from llmprune.model.arch import ArchAdapter
from llmprune.model.plan import LayerPlan, PrunePlan
from llmprune.model.surgery import apply_plan
from llmprune.train import loop as training

SMALL = ["--seqlen", "32", "--nsamples", "8", "--batch-size", "4", "--seed", "0", "--device", "cpu"]
RECOVER = ["--steps", "6", "--lora-rank", "4", "--teacher-topk", "16", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def pruned(model_dir: Path, calib: Path, tmp_path_factory) -> dict[str, Path]:
    """The tiny model pruned two ways: uniform 40% (Wanda-sp) and 2:4 (Wanda)."""
    root = tmp_path_factory.mktemp("pruned")
    out = {"uniform": root / "uniform", "semi24": root / "semi24"}
    assert (
        run(
            "uniform",
            model_dir,
            "-o",
            out["uniform"],
            "--method",
            "wanda",
            "--sparsity",
            "0.4",
            "--calib",
            calib,
            *SMALL,
        ).exit_code
        == 0
    )
    assert run("semi24", model_dir, "-o", out["semi24"], "--method", "wanda", "--calib", calib, *SMALL).exit_code == 0
    return out


def _recover(src: Path, out: Path, teacher: Path, calib: Path, *extra: str):
    return run("recover", src, "-o", out, "--teacher", teacher, "--calib", calib, *SMALL, *RECOVER, *extra)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_semi24_zeros_stay_exactly_zero(pruned, model_dir, calib, tmp_path, mode):
    """Every weight the 2:4 output zeroed is still exactly zero; the others changed; the sidecar stays."""
    out = tmp_path / "r"
    result = _recover(pruned["semi24"], out, model_dir, calib, "--recover-mode", mode, "--lr", "1e-2")
    assert result.exit_code == 0, result.output
    before, after = load_file(pruned["semi24"] / "model.safetensors"), load_file(out / "model.safetensors")
    targets = read_json(out / "llmprune_sparsity.json")["targets"]
    assert targets == read_json(pruned["semi24"] / "llmprune_sparsity.json")["targets"]
    changed = 0
    for name in targets:
        w0, w1 = before[f"{name}.weight"], after[f"{name}.weight"]
        assert w1.shape == w0.shape
        assert torch.equal(w1[w0 == 0], torch.zeros_like(w1[w0 == 0])), name
        changed += int((w1 != w0).sum())
    assert changed > 0  # the kept weights trained
    report = read_json(out / "llmprune_report.json")["recovery"]
    assert report["zeros_checked"] == sum(int((before[f"{n}.weight"] == 0).sum()) for n in targets)


def test_structured_widths_stay(pruned, model_dir, calib, tmp_path):
    """LoRA merged: the same tensors with the same shapes, a plain config, and changed weights."""
    out = tmp_path / "r"
    assert _recover(pruned["uniform"], out, model_dir, calib).exit_code == 0
    before, after = load_file(pruned["uniform"] / "model.safetensors"), load_file(out / "model.safetensors")
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert read_json(out / "config.json") == read_json(pruned["uniform"] / "config.json")
    assert read_json(out / "llmprune_plan.json") == read_json(pruned["uniform"] / "llmprune_plan.json")


def _hetero_output(tmp_path: Path) -> tuple[Path, Path]:
    """A dense tiny model and a heterogeneous-width output of it (one layer without attention, one
    without MLP), exported as `global` exports: custom config + modeling file."""
    model = make_tiny_model("llama", num_hidden_layers=3)
    dense = tmp_path / "dense"
    model.save_pretrained(dense)
    tiny_tokenizer().save_pretrained(dense)
    adapter = ArchAdapter.for_model(model)
    plan = PrunePlan.dense_structured(adapter.geometry(model), "global", "test")
    plan.layers[0] = LayerPlan(index=0, heads=[2, 3], kv_heads=[1], channels=list(range(0, 96, 2)))
    plan.layers[1] = LayerPlan(index=1, heads=[], kv_heads=[], channels=list(range(10, 40)))
    plan.layers[2] = LayerPlan(index=2, heads=[0, 1, 2, 3], kv_heads=[0, 1], channels=[])
    apply_plan(model, adapter, plan)
    out = tmp_path / "hetero"
    save_pruned(model, tiny_tokenizer(), plan, {"strategy": "global"}, out, torch.float32)
    return dense, out


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_heterogeneous_output_keeps_its_widths_config_and_modeling_file(calib, tmp_path, mode):
    """Per-layer widths (with a removed attention and a removed MLP) recover with the same shapes,
    the same per-layer config and the modeling file."""
    dense, hetero = _hetero_output(tmp_path)
    out = tmp_path / "r"
    result = _recover(hetero, out, dense, calib, "--recover-mode", mode)
    assert result.exit_code == 0, result.output
    config = read_json(out / "config.json")
    assert config["layer_widths"] == read_json(hetero / "config.json")["layer_widths"]
    assert config["model_type"] == read_json(hetero / "config.json")["model_type"]
    assert sorted(p.name for p in hetero.glob("*.py")) == sorted(p.name for p in out.glob("*.py")) != []
    before, after = load_file(hetero / "model.safetensors"), load_file(out / "model.safetensors")
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resume_equals_an_uninterrupted_run(pruned, model_dir, calib, tmp_path):
    """Interrupted after step 3 (checkpoint at step 2), resumed: bitwise the same weights and curve."""
    straight, part = tmp_path / "straight", tmp_path / "part"
    assert _recover(pruned["uniform"], straight, model_dir, calib).exit_code == 0
    with training.step_callback(training.interrupt_after(3)):
        result = _recover(pruned["uniform"], part, model_dir, calib)
    assert result.exit_code == 130 and "--resume" in result.output and not part.exists()
    result = _recover(pruned["uniform"], part, model_dir, calib, "--resume")
    assert result.exit_code == 0, result.output
    a, b = load_file(straight / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curve_a = read_json(straight / "recovery_curve.json")["trace"]
    curve_b = read_json(part / "recovery_curve.json")["trace"]
    assert [r["loss"] for r in curve_a] == [r["loss"] for r in curve_b]


def test_objective_goes_down_on_the_calibration_text(pruned, model_dir, calib, tmp_path):
    """The report's objective over every calibration sequence is lower after recovery than before,
    and the report carries the teacher, tokens seen, steps and the curve (JSON + PNG)."""
    out = tmp_path / "r"
    result = _recover(pruned["uniform"], out, model_dir, calib, "--steps", "12", "--lr", "1e-2")
    assert result.exit_code == 0, result.output
    r = read_json(out / "llmprune_report.json")["recovery"]
    assert r["objective_after"]["loss"] < 0.9 * r["objective_before"]["loss"]
    assert r["objective_after"]["kl"] < r["objective_before"]["kl"]
    assert r["teacher"] == str(model_dir) and r["steps"] == 12 and len(r["loss_curve"]) == 12
    assert r["tokens_seen"] == 12 * 4 * 32
    assert (out / "recovery_curve.png").stat().st_size > 0
    assert len(read_json(out / "recovery_curve.json")["trace"]) == 12


def test_recover_flag_runs_the_stage_after_pruning(model_dir, calib, tmp_path):
    """`semi24 --recover` = the stage right after pruning, teacher the input; still exactly 2:4."""
    out = tmp_path / "o"
    result = run(
        "semi24",
        model_dir,
        "-o",
        out,
        "--method",
        "magnitude",
        "--calib",
        calib,
        *SMALL,
        "--recover",
        "--recover-steps",
        "4",
        "--recover-lora-rank",
        "2",
        "--recover-teacher-topk",
        "8",
    )
    assert result.exit_code == 0, result.output
    report = read_json(out / "llmprune_report.json")
    assert report["recovery"]["teacher"] == str(model_dir) and report["recovery"]["steps"] == 4
    weights = load_file(out / "model.safetensors")
    for name in read_json(out / "llmprune_sparsity.json")["targets"]:
        groups = (weights[f"{name}.weight"] != 0).reshape(-1, 4).sum(-1)
        assert int(groups.max()) <= 2, name


def test_recover_flag_on_a_one_shot_method_resumes_to_the_same_bytes(model_dir, calib, tmp_path):
    """`uniform --method wanda --recover` interrupted inside the stage keeps its checkpoint (the
    one-shot pruner has none of its own) and --resume ends with the uninterrupted run's weights."""
    args = ["--method", "wanda", "--sparsity", "0.4", "--calib", calib, *SMALL, "--recover"]
    args += ["--recover-steps", "5", "--recover-lora-rank", "2", "--recover-checkpoint-every", "2"]
    straight, part = tmp_path / "straight", tmp_path / "part"
    assert run("uniform", model_dir, "-o", straight, *args).exit_code == 0
    with training.step_callback(training.interrupt_after(3)):
        result = run("uniform", model_dir, "-o", part, *args)
    assert result.exit_code == 130 and "--resume" in result.output, result.output
    result = run("uniform", model_dir, "-o", part, *args, "--resume")
    assert result.exit_code == 0, result.output
    a, b = load_file(straight / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_calibration_windows_of_a_smaller_draw_are_the_first_of_a_larger_one(model_dir, calib):
    """What lets --recover-nsamples add sequences without changing the ones the pruning sees."""
    from transformers import AutoTokenizer

    from llmprune.data.text import calibration_samples

    tok = AutoTokenizer.from_pretrained(model_dir)
    small = calibration_samples(tok, str(calib), 5, 16, seed=3)
    large = calibration_samples(tok, str(calib), 40, 16, seed=3)
    assert large.shape == (40, 16) and torch.equal(large[:5], small)
    windows = calibration_samples(tok, str(calib), 10**6, 16, seed=3, minimum=5).shape[0]
    assert 40 < windows < 10**6  # all the text holds, not an error


def test_recover_nsamples_distils_on_more_sequences_than_the_pruning_saw(model_dir, calib, tmp_path):
    """The pruning sees --nsamples sequences (the same plan as without --recover); the recovery
    distils on --recover-nsamples: those first, then more (all the text holds when it asks for more)."""
    args = ["--method", "wanda", "--sparsity", "0.4", "--calib", calib, *SMALL]
    stage = ["--recover", "--recover-steps", "1", "--recover-lora-rank", "2", "--recover-teacher-topk", "8"]
    plain, more, most = tmp_path / "plain", tmp_path / "more", tmp_path / "most"
    assert run("uniform", model_dir, "-o", plain, *args).exit_code == 0
    assert run("uniform", model_dir, "-o", more, *args, *stage, "--recover-nsamples", "20").exit_code == 0
    assert read_json(more / "llmprune_plan.json")["layers"] == read_json(plain / "llmprune_plan.json")["layers"]
    report = read_json(more / "llmprune_report.json")
    assert report["recovery"]["sequences"] == 20 and report["calibration"]["nsamples"] == 8
    result = run("uniform", model_dir, "-o", most, *args, *stage, "--recover-nsamples", "100000")
    assert result.exit_code == 0, result.output
    assert "--recover-nsamples 100000 asked for more" in " ".join(result.output.split())
    assert 20 < read_json(most / "llmprune_report.json")["recovery"]["sequences"] < 100000


def test_a_text_too_short_for_the_pruning_names_the_pruning_count_with_recover(model_dir, calib, tmp_path):
    """--recover-nsamples asks for more than the text holds: fine; --nsamples (the pruning's) too:
    the one-line error names the pruning's count, not the recovery's."""
    from transformers import AutoTokenizer

    from llmprune.data.text import calibration_samples

    windows = calibration_samples(AutoTokenizer.from_pretrained(model_dir), str(calib), 10**6, 32, 0, minimum=1)
    asked = windows.shape[0] + 1
    out = tmp_path / "o"
    args = ["--method", "wanda", "--sparsity", "0.4", "--calib", calib, "--seqlen", "32", "--device", "cpu"]
    result = run("uniform", model_dir, "-o", out, *args, "--nsamples", asked, "--recover")
    line = _one_line_error(result)
    assert f"{asked} samples need" in line and "--nsamples" in line, line
    assert not out.exists()
    result = run("uniform", model_dir, "-o", out, *args, "--nsamples", 4, "--recover", "--recover-nsamples", 0)
    assert result.exit_code == 2 and "invalid --recover-nsamples" in result.output and not out.exists()


def test_recover_takes_the_sequence_count_from_its_own_nsamples(pruned, model_dir, calib, tmp_path):
    out = tmp_path / "r"
    assert _recover(pruned["uniform"], out, model_dir, calib, "--steps", "1").exit_code == 0
    recovery = read_json(out / "llmprune_report.json")["recovery"]
    assert recovery["sequences"] == 8 and recovery["options"]["recover_nsamples"] == 8
    result = _recover(pruned["uniform"], tmp_path / "r2", model_dir, calib, "--recover-nsamples", "9")
    assert result.exit_code == 2 and "No such option" in result.output


def test_recovery_options_need_the_recover_flag(model_dir, calib, tmp_path):
    result = run(
        "uniform",
        model_dir,
        "-o",
        tmp_path / "o",
        "--method",
        "wanda",
        "--calib",
        calib,
        *SMALL,
        "--recover-steps",
        "3",
    )
    assert result.exit_code == 2 and "--recover" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_bad_recovery_option_names_its_flag(model_dir, pruned, calib, tmp_path):
    result = run("uniform", model_dir, "-o", tmp_path / "o", "--recover", "--recover-steps", "0")
    assert result.exit_code == 2 and "invalid --recover-steps" in result.output
    result = _recover(pruned["uniform"], tmp_path / "o", model_dir, calib, "--lora-targets", "q,zz")
    assert result.exit_code == 2 and "invalid --lora-targets" in result.output


def _one_line_error(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_a_pruned_folder_that_is_not_a_model_fails_in_one_line(model_dir, calib, tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    line = _one_line_error(_recover(folder, tmp_path / "o", model_dir, calib))
    assert "config.json" in line and not (tmp_path / "o").exists()


def test_a_teacher_with_another_vocabulary_fails_in_one_line(pruned, calib, tmp_path):
    other = save_tiny_model(tmp_path / "other", "llama", vocab_size=320)
    line = _one_line_error(_recover(pruned["uniform"], tmp_path / "o", other, calib))
    assert re.search(r"vocabulary of 320 tokens", line) and not (tmp_path / "o").exists()


def _warnings(result) -> list[str]:
    """The ``warning:`` lines of a run, each joined back into one line (rich wraps at 80 columns)."""
    text = " ".join(result.output.split())
    return ["warning:" + part.split(" warning:")[0] for part in text.split("warning:")[1:]]


def test_a_teacher_that_is_not_the_pruned_from_model_is_one_warning(pruned, model_dir, calib, tmp_path):
    """issue 30: any teacher of the same vocabulary was accepted silently."""
    other = save_tiny_model(tmp_path / "other", "llama", seed=7)
    out = tmp_path / "o"
    result = _recover(pruned["uniform"], out, other, calib)
    assert result.exit_code == 0, result.output
    ours = [w for w in _warnings(result) if "--teacher" in w or "does not look pruned" in w]
    assert len(ours) == 1, result.output
    assert ours[0].startswith(f"warning: --teacher {other} is not the model {pruned['uniform']} was pruned from")
    assert f"({model_dir}, per its report)" in ours[0]
    report = read_json(out / "llmprune_report.json")
    assert report["recovery"]["teacher"] == str(other) and report["recovery"]["student"] == str(pruned["uniform"])
    same = _recover(pruned["uniform"], tmp_path / "same", model_dir, calib)
    assert same.exit_code == 0 and not [w for w in _warnings(same) if "--teacher" in w or "look pruned" in w]


def test_a_dense_student_is_one_warning(model_dir, calib, tmp_path):
    """issue 30: the dense model itself was accepted as the "pruned" input silently."""
    result = _recover(model_dir, tmp_path / "o", model_dir, calib)
    assert result.exit_code == 0, result.output
    ours = [w for w in _warnings(result) if "--teacher" in w or "does not look pruned" in w]
    assert len(ours) == 1 and ours[0].startswith(f"warning: {model_dir} does not look pruned"), result.output
    assert read_json(tmp_path / "o" / "llmprune_report.json")["recovery"]["student"] == str(model_dir)


# ----- slow: the reference model ------------------------------------------------------------------
def _held_out_split(tmp: Path) -> tuple[Path, Path]:
    """calib.txt split by document: the first 75% to train on, the last 25% held out (never eval.txt)."""
    docs = [d for d in re.split(r"\n\s*\n", CALIB.read_text()) if d.strip()]
    k = int(0.75 * len(docs))
    fit, held = tmp / "fit.txt", tmp / "held.txt"
    fit.write_text("\n\n".join(docs[:k]) + "\n")
    held.write_text("\n\n".join(docs[k:]) + "\n")
    return fit, held


def _perplexity(folder: Path, text: Path, tmp: Path) -> float:
    report = tmp / f"{folder.name}.json"
    result = run("eval", folder, "--data", text, "--seqlen", "256", "--device", "cpu", "--json", report)
    assert result.exit_code == 0, result.output
    return float(json.loads(report.read_text())["perplexity"])


@pytest.mark.slow
@requires_refmodel
def test_recovered_50pct_structured_reference_model_beats_unrecovered_on_held_out_text(tmp_path):
    fit, held = _held_out_split(tmp_path)
    common = ["--calib", fit, "--nsamples", "16", "--seqlen", "128", "--seed", "0", "--device", "cpu"]
    pruned, recovered = tmp_path / "pruned", tmp_path / "recovered"
    assert run("uniform", REFMODEL, "-o", pruned, "--method", "wanda", "--sparsity", "0.5", *common).exit_code == 0
    result = run("recover", pruned, "-o", recovered, "--teacher", REFMODEL, *common, "--steps", "8")
    assert result.exit_code == 0, result.output
    before, after = _perplexity(pruned, held, tmp_path), _perplexity(recovered, held, tmp_path)
    print(f"held-out perplexity: unrecovered {before:.2f}, recovered {after:.2f}")
    assert after < 0.9 * before, (before, after)


def test_the_default_lora_rate_is_the_select_splits_choice(pruned, model_dir, calib, tmp_path):
    """Without --lr, LoRA recovery peaks at 2e-3 on a 2:4 and on a structured output (the select
    split's choice on the default 256 sequences); --lr still overrides."""
    from llmprune.run.recover import CURVE_JSON

    peaks = {}
    for kind, extra in (("semi24", ()), ("uniform", ()), ("given", ("--lr", "1e-3"))):
        out = tmp_path / kind
        src = pruned["uniform" if kind == "given" else kind]
        assert _recover(src, out, model_dir, calib, *extra).exit_code == 0
        peaks[kind] = max(r["lr"] for r in read_json(out / CURVE_JSON)["trace"])
    assert peaks == pytest.approx({"semi24": 2e-3, "uniform": 2e-3, "given": 1e-3})
