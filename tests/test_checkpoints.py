"""Lean checkpoints, ``--checkpoint-every`` as steps or a duration, ``--layers-per-stage auto``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import LLAMA_8B, REFMODEL, config_folder, requires_refmodel, save_tiny_model
from helpers import run_cli as run

from llmprune.core.memory_model import Request
from llmprune.errors import UsageError
from llmprune.pruners.proxsparse import ProxSparsePruner, ProxSparseTraining
from llmprune.run.estimate import GIB, estimate
from llmprune.settings import PruneSettings, check_recipe_types
from llmprune.train import cadence
from llmprune.train import loop as training

SMALL = ["--seqlen", "32", "--nsamples", "8", "--batch-size", "4"]
PROX = ["--steps", "8", "--lr", "0.02", "--lambda1", "0.3", "--metric", "plain"]


@pytest.fixture
def saves(monkeypatch) -> list[tuple[int, int, int]]:
    """Every checkpoint the loop writes: (stage, step, bytes of the file just written)."""
    seen: list[tuple[int, int, int]] = []
    original = training.Training._save

    def spy(self, stage, step, trace, method):
        original(self, stage, step, trace, method)
        seen.append((stage, step, self.checkpoint_path.stat().st_size))

    monkeypatch.setattr(training.Training, "_save", spy)
    return seen


# ----- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,steps,seconds",
    [("20", 20, None), (7, 7, None), ("90s", None, 90.0), ("10m", None, 600.0), ("1h", None, 3600.0)],
)
def test_checkpoint_every_is_steps_or_a_duration(text, steps, seconds):
    assert cadence.parse_every(text) == cadence.Every(steps=steps, seconds=seconds)


@pytest.mark.parametrize("text", ["0", "-3", "10x", "m", "1.5", "0m", "", True])
def test_checkpoint_every_refuses_what_is_neither(text):
    with pytest.raises(ValueError, match="90s, 10m, 1h"):
        cadence.parse_every(text)


@pytest.mark.parametrize("value", ["0", "-3", "10x", "m"])
@pytest.mark.parametrize("command", [["semi24", "--method", "proxsparse"], ["uniform", "--method", "minimax"]])
def test_a_bad_checkpoint_every_is_one_line_and_exit_2(model_dir, calib, tmp_path, command, value):
    result = run(*command[:1], model_dir, "-o", tmp_path / "o", *command[1:], f"--checkpoint-every={value}")
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "checkpoint_every" in lines[0] and "10m" in lines[0], result.output
    assert not (tmp_path / "o").exists()


def test_a_recipe_may_give_checkpoint_every_as_a_yaml_number(tmp_path):
    annotations = {"checkpoint_every": str | None, "nsamples": int}
    check_recipe_types({"checkpoint_every": 20}, annotations, tmp_path / "r.yaml")
    with pytest.raises(UsageError, match="nsamples"):
        check_recipe_types({"nsamples": "many"}, annotations, tmp_path / "r.yaml")


# ----- when checkpoints are written ---------------------------------------------------------------
@pytest.mark.parametrize(
    "every,expected",
    [
        # 40 s a step, 8 steps a stage, two stages: due once 90 s passed since the stage started or
        # the last checkpoint (after steps 3 and 6), never after a stage's last step; the boundary (1, 0).
        ("90s", [(0, 3), (0, 6), (1, 0), (1, 3), (1, 6)]),
        ("5m", [(1, 0)]),  # 280 s by step 7: only the stage boundary
        ("3", [(0, 3), (0, 6), (1, 0), (1, 3), (1, 6)]),
    ],
)
def test_a_duration_checkpoints_at_the_steps_the_clock_says(
    model_dir, calib, tmp_path, monkeypatch, saves, every, expected
):
    """The clock is a counter advanced by 40 s inside every step (no sleeping)."""
    now = [1000.0]
    monkeypatch.setattr(cadence, "monotonic", lambda: now[0])
    update = ProxSparseTraining.update

    def timed_update(self, batch, means):
        now[0] += 40.0
        return update(self, batch, means)

    monkeypatch.setattr(ProxSparseTraining, "update", timed_update)
    args = ["--calib", calib, *SMALL, *PROX, "--layers-per-stage", "1", "--checkpoint-every", every]
    assert run("semi24", model_dir, "-o", tmp_path / "o", *args).exit_code == 0
    assert [(stage, step) for stage, step, _ in saves] == expected


# ----- lean checkpoints ---------------------------------------------------------------------------
def test_a_proxsparse_checkpoint_does_not_grow_with_finished_stages(tmp_path, calib, saves):
    """Four one-layer stages, a checkpoint after every step: the checkpoint inside the last stage
    is as large as the one inside the first (the trace adds a few hundred bytes a step), although
    three stages' masks were fixed in between: they went to one file per stage, written once."""
    model = save_tiny_model(tmp_path / "m", "llama", num_hidden_layers=4)
    out = tmp_path / "o"
    args = ["--calib", calib, *SMALL, *PROX, "--steps", "2", "--layers-per-stage", "1", "--checkpoint-every", "1"]
    with training.step_callback(training.interrupt_after(7)):  # inside the last stage: folder kept
        assert run("semi24", model, "-o", out, *args).exit_code != 0
    inside = {stage: size for stage, step, size in saves if step > 0}
    assert sorted(inside) == [0, 1, 2, 3]
    layer_mask_bytes = _layer_linear(model)  # what the old checkpoint grew by per finished stage
    assert inside[3] - inside[0] < layer_mask_bytes / 4, (inside, layer_mask_bytes)
    work = out.parent / f".{out.name}.llmprune-work"
    assert sorted(p.name for p in work.glob("proxsparse_stage*.pt")) == [f"proxsparse_stage{k}.pt" for k in (1, 2, 3)]
    result = run("semi24", model, "-o", out, *args, "--resume")  # the stage files feed the resumed run
    assert result.exit_code == 0, result.output


def _layer_linear(model: Path) -> int:
    """Weights of one decoder layer's projections (a bool mask of them is that many bytes)."""
    from safetensors.torch import load_file

    weights = load_file(model / "model.safetensors")
    return sum(w.numel() for k, w in weights.items() if "layers.0." in k and k.endswith("proj.weight"))


# ----- --layers-per-stage auto ---------------------------------------------------------------------
def test_auto_staging_takes_fewer_layers_under_a_small_gpu_budget(tmp_path):
    folder = config_folder(tmp_path / "cfg", LLAMA_8B)
    sizes = {}
    for gib in (40, 80, 1000):
        out = tmp_path / f"e{gib}.json"
        flags = ["--device", "cuda", "--dtype", "bfloat16", "--gpu-memory", gib, "--batch-size", "1"]
        result = run("semi24", folder, "--method", "proxsparse", "--estimate", "--json", out, *flags)
        assert result.exit_code == 0, result.output
        data = json.loads(out.read_text())
        sizes[gib] = data["settings"]["layers_per_stage"]
        assert data["peak_device_gib"] <= gib
    assert 1 <= sizes[40] < sizes[80] < sizes[1000] == 32, sizes


def test_auto_staging_is_the_largest_count_that_fits():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_hidden_layers=6)
    settings = PruneSettings(
        strategy="semi24", method="proxsparse", model="m", output=Path("o"), device="cuda", dtype="bfloat16"
    )

    def peak(k: int) -> int:
        fixed = settings.model_copy(update={"method_options": {"layers_per_stage": str(k)}})
        return int(estimate(fixed, config).peak_device_gib * GIB)

    def stage_layers(budget: int) -> int:
        return ProxSparsePruner.stage_layers(Request.of(settings, config, 1, False, budget))

    assert [stage_layers(peak(k)) for k in range(1, 7)] == [1, 2, 3, 4, 5, 6]
    assert stage_layers(peak(3) - 1) == 2
    assert stage_layers(1) == 1  # nothing fits: one layer (pre-flight refuses)


@requires_refmodel
def test_auto_staging_takes_every_layer_of_the_reference_model_on_this_cpu():
    from llmprune.model.loading import load_config

    settings = PruneSettings(
        strategy="semi24", method="proxsparse", model=str(REFMODEL), output=Path("o"), device="cpu"
    )
    assert ProxSparsePruner.stage_layers(Request.of(settings, load_config(str(REFMODEL)), 1, False)) == 8


def test_auto_staging_is_logged_reported_and_kept_by_resume(model_dir, calib, tmp_path, monkeypatch):
    """auto's choice is in the report, and in the run's output when it stages (fewer layers than
    the model has); a resumed run keeps the checkpoint's
    staging even when the budget now says otherwise (stages must line up with the checkpoint)."""
    from helpers import read_json

    args = ["--calib", calib, *SMALL, *PROX, "--steps", "4", "--checkpoint-every", "1"]
    straight = tmp_path / "straight"
    assert run("semi24", model_dir, "-o", straight, *args, "--layers-per-stage", "1").exit_code == 0

    monkeypatch.setattr(ProxSparsePruner, "stage_layers", classmethod(lambda cls, q: 1))  # a budget for one layer
    out = tmp_path / "o"
    with training.step_callback(training.interrupt_after(6)):  # inside stage 2 of 2
        result = run("semi24", model_dir, "-o", out, *args)
    assert result.exit_code != 0 and "--layers-per-stage auto: 1 of 2 layers per stage" in result.output
    monkeypatch.setattr(ProxSparsePruner, "stage_layers", classmethod(lambda cls, q: 2))  # more memory now
    result = run("semi24", model_dir, "-o", out, *args, "--resume")
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()
    assert read_json(out / "llmprune_report.json")["proxsparse"]["layers_per_stage"] == 1

    fresh = tmp_path / "fresh"
    result = run("semi24", model_dir, "-o", fresh, *args)
    assert result.exit_code == 0, result.output
    report = read_json(fresh / "llmprune_report.json")["proxsparse"]
    assert report["layers_per_stage"] == 2 and report["layers_per_stage_auto"]["layers_per_stage"] == 2
    assert "--layers-per-stage auto" not in result.output
