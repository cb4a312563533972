"""The shared training loop (llmprune.train.loop): fingerprints of every work-folder artefact,
LR schedules, and the layer-wise runner every learned method must build through the context."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import SAMPLE_TEXT, make_tiny_model, tiny_tokenizer
from helpers import run_cli as run
from safetensors.torch import load_file

from llmprune.data.capture import LayerwiseRunner
from llmprune.data.text import calibration_samples
from llmprune.errors import ResumeError
from llmprune.model.arch import ArchAdapter
from llmprune.pruners.base import PruneContext, PruneResult, get_pruner_class
from llmprune.runtime.progress import Reporter
from llmprune.settings import PruneSettings
from llmprune.train import loop as training

SMALL = ["--seqlen", "32", "--nsamples", "8", "--batch-size", "4"]
MINIMAX = ["--sparsity", "0.4", "--steps", "8", "--lora-rank", "4", "--teacher-topk", "16", "--checkpoint-every", "4"]
TYR = dict(generations=2, offspring=4, select_tokens="32,64,128", survivors="2,1", iterations=2, topk_logits=50)


# ----- fingerprints -------------------------------------------------------------------------------
def _killed_before_the_first_checkpoint(model_dir, calib, out: Path, seed: str) -> Path:
    """The work folder a SIGKILL between the cached teacher and the first checkpoint leaves (an
    interruption the run sees removes a folder without a checkpoint; a SIGKILL cannot)."""
    with training.step_callback(training.interrupt_after(5)):  # checkpoints come every 4 steps
        assert run("uniform", model_dir, "-o", out, "--calib", calib, *SMALL, *MINIMAX, "--seed", seed).exit_code == 130
    work = out.parent / f".{out.name}.llmprune-work"
    (work / "minimax_state.pt").unlink()
    assert (work / "minimax_teacher.pt").is_file()
    return work


def test_minimax_resume_before_the_first_checkpoint_refuses_a_teacher_made_with_other_settings(
    model_dir, calib, tmp_path
):
    """Issue 17: seed 0 killed after the teacher was cached but before any checkpoint, then
    --resume with seed 1: refused in one line (the cached teacher carries seed 0's fingerprint)."""
    out = tmp_path / "o"
    _killed_before_the_first_checkpoint(model_dir, calib, out, "0")
    result = run("uniform", model_dir, "-o", out, "--calib", calib, *SMALL, *MINIMAX, "--seed", "1", "--resume")
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 9, result.output
    assert len(lines) == 1 and "minimax_teacher.pt" in lines[0] and "different settings" in lines[0]
    assert "seed" in lines[0] and not out.exists()


def test_minimax_resume_before_the_first_checkpoint_with_the_same_settings_equals_a_straight_run(
    model_dir, calib, tmp_path
):
    """The same kill resumed with unchanged settings reuses the teacher: identical weights."""
    straight = tmp_path / "straight"
    assert run("uniform", model_dir, "-o", straight, "--calib", calib, *SMALL, *MINIMAX, "--seed", "1").exit_code == 0
    out = tmp_path / "o"
    _killed_before_the_first_checkpoint(model_dir, calib, out, "1")
    result = run("uniform", model_dir, "-o", out, "--calib", calib, *SMALL, *MINIMAX, "--seed", "1", "--resume")
    assert result.exit_code == 0, result.output
    a, b = load_file(straight / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _signal_rewrapped_by_a_library(sig: int, step: int):
    """A callback sending ``sig`` to this process inside code that turns the resulting
    KeyboardInterrupt into a ValueError, as safetensors' ``get_tensor`` does about half the time
    (the CI failure of stop 19: ``could not determine the shape of object type 'UntypedStorage'``)."""
    import os

    def callback(event: training.Event) -> None:
        if event.kind == "step" and event.step == step:
            try:
                os.kill(os.getpid(), sig)
                time.sleep(5)  # the handler runs at the next bytecode
            except KeyboardInterrupt:
                raise ValueError(
                    "could not determine the shape of object type 'torch.storage.UntypedStorage'"
                ) from None

    return callback


@pytest.mark.parametrize("sig,code,words", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_a_library_turns_into_another_error_still_stops_with_the_checkpoint_kept(
    model_dir, calib, tmp_path, sig, code, words
):
    out = tmp_path / "o"
    with training.step_callback(_signal_rewrapped_by_a_library(sig, 5)):  # checkpoint at step 4
        result = run("uniform", model_dir, "-o", out, "--calib", calib, *SMALL, *MINIMAX, "--seed", "0")
    assert result.exit_code == code, (result.output, result.exception)
    line = result.output.strip()
    assert line.startswith(f"error: {words}") and "--resume" in line and "Traceback" not in line, line
    assert (out.parent / f".{out.name}.llmprune-work" / "minimax_state.pt").is_file()


def _tyr_ctx(work: Path, model, seed: int, resume: bool = False, **options) -> PruneContext:
    text = work.parent / "calib.txt"
    text.write_text(SAMPLE_TEXT)
    tok = tiny_tokenizer(model.config.vocab_size)
    settings = PruneSettings(
        strategy="global",
        method="tyr",
        model="tiny",
        output=work.parent / "out",
        sparsity=0.4,
        calib=str(text),
        nsamples=6,
        seqlen=32,
        seed=seed,
        resume=resume,
        method_options=options,
    )
    work.mkdir(parents=True, exist_ok=True)
    return PruneContext(
        model=model,
        adapter=ArchAdapter.for_model(model),
        tokenizer=tok,
        calib=calibration_samples(tok, str(text), 6, 32, seed),
        settings=settings,
        device=torch.device("cpu"),
        work_dir=work,
        progress=Reporter(enabled=False),
    )


def test_tyr_topk_cache_made_with_other_settings_is_refused(tmp_path, monkeypatch):
    """Týr's dense top-k cache: with the search state gone (a kill right after the cache was
    written), a resume with another seed is refused by the cache's own fingerprint."""
    from llmprune.pruners.tyr import GlobalTyr
    from llmprune.pruners.tyr.search import IterationState

    work = tmp_path / "work"
    original = IterationState.save

    def die_on_first_save(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(IterationState, "save", die_on_first_save)
    with pytest.raises(KeyboardInterrupt):
        GlobalTyr(TYR).prune(_tyr_ctx(work, make_tiny_model("llama"), seed=0, **TYR))
    monkeypatch.setattr(IterationState, "save", original)
    assert (work / "dense_topk.pt").is_file() and not (work / "search_state.pt").exists()
    with pytest.raises(ResumeError, match=r"dense_topk\.pt was made with different settings.*seed"):
        GlobalTyr(TYR).prune(_tyr_ctx(work, make_tiny_model("llama"), seed=1, resume=True, **TYR))


def test_tyr_topk_cache_is_reused_with_the_same_settings(tmp_path):
    from llmprune.pruners.tyr.search import Evaluator

    model = make_tiny_model("llama")
    adapter = ArchAdapter.for_model(model)
    tokens = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    cache, fp = tmp_path / "dense_topk.pt", {"seed": 0}
    first = Evaluator(model, adapter, tokens, 20, torch.device("cpu"), 2, cache=cache, fingerprint=fp)
    planted = {"idx": first.top_idx.clone(), "logp": torch.full_like(first.top_logp, -1.0)}
    training.save_artefact(cache, planted, fp)  # a cache the evaluator could not have computed itself
    reused = Evaluator(model, adapter, tokens, 20, torch.device("cpu"), 2, cache=cache, fingerprint=fp, resume=True)
    assert torch.equal(reused.top_logp, planted["logp"])
    with pytest.raises(ResumeError, match="seed"):
        Evaluator(model, adapter, tokens, 20, torch.device("cpu"), 2, cache=cache, fingerprint={"seed": 1}, resume=True)


def test_supernet_built_with_other_settings_is_rebuilt(tmp_path):
    from llmprune.core.masks import uniform_widths
    from llmprune.pruners.tyr.supernet import KEYS, Supernet, SupernetSpec, module_types

    model = make_tiny_model("llama")
    adapter = ArchAdapter.for_model(model)
    geom = adapter.geometry(model)
    types = module_types(geom, "group")
    k_attn, k_mlp = uniform_widths(geom, 0.4, "group")
    spec = SupernetSpec(
        centers={"o": [k_attn] * 2, "down": [k_mlp] * 2}, steps={k: types[k].step(0.125) for k in KEYS}, delta=0.125
    )
    calib = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    net = Supernet(tmp_path / "sn", spec, types, 2, fingerprint={"seed": 0})
    net.build(model, adapter, LayerwiseRunner(model, adapter, calib, torch.device("cpu"), 4), torch.device("cpu"))
    assert Supernet(tmp_path / "sn", spec, types, 2, fingerprint={"seed": 0}).complete()
    assert not Supernet(tmp_path / "sn", spec, types, 2, fingerprint={"seed": 1}).complete()


def test_fingerprint_names_what_changed_and_ignores_run_control():
    calib = torch.arange(12).view(3, 4)
    base = dict(strategy="uniform", method="minimax", model="m", output=Path("a"), nsamples=3)
    fp = training.fingerprint(PruneSettings(**base), calib)
    same = training.fingerprint(PruneSettings(**{**base, "output": Path("b"), "resume": True, "device": "cpu"}), calib)
    assert same == fp
    training.check_fingerprint(same, fp, "x.pt")
    other = training.fingerprint(PruneSettings(**{**base, "seed": 1}), calib + 1)
    with pytest.raises(ResumeError, match=r"x\.pt was made with different settings \(calib_tokens, seed\)"):
        training.check_fingerprint(other, fp, "x.pt")
    with pytest.raises(ResumeError, match="another version"):
        training.check_fingerprint(None, fp, "x.pt")


# ----- schedules ------------------------------------------------------------------------------------
def test_cosine_schedule_warms_up_then_decays_to_its_floor():
    sched = training.LRSchedule(warmup=0.05, decay="cosine", floor=0.1, min_warmup_steps=1)
    f = [sched.factor(s, 40) for s in range(40)]
    assert f[:2] == [0.5, 1.0]  # round(0.05·40) = 2 warm-up steps
    assert all(a >= b for a, b in zip(f[1:], f[2:])) and f[-1] == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 37 / 38))
    )
    assert training.LRSchedule(0.05, "cosine", 0.1, 1).factor(0, 8) == 1.0  # at least one warm-up step


# ----- the layer-wise runner --------------------------------------------------------------------------
class _CountingContext(PruneContext):
    made = 0

    def layerwise_runner(self) -> LayerwiseRunner:
        type(self).made += 1
        return super().layerwise_runner()


@pytest.mark.parametrize(
    "strategy,method,options",
    [
        ("semi24", "proxsparse", dict(steps=1, metric="wanda", refit="obs")),
        ("global", "tyr", dict(TYR, generations=1)),
        ("uniform", "minimax", dict(steps=2, lora_rank=0, teacher_topk=8)),
    ],
)
def test_learned_methods_build_every_runner_through_the_context(tmp_path, monkeypatch, strategy, method, options):
    """So --offload-dir and the compute dtype (which only ``ctx.layerwise_runner`` passes on) are honoured."""
    built = []
    init = LayerwiseRunner.__init__
    monkeypatch.setattr(LayerwiseRunner, "__init__", lambda self, *a, **k: (built.append(k), init(self, *a, **k))[1])
    model = make_tiny_model("llama")
    settings = PruneSettings(
        strategy=strategy,
        method=method,
        model="tiny",
        output=tmp_path / "out",
        sparsity=0.5 if strategy == "semi24" else 0.4,  # 2:4 accepts only 0.5
        nsamples=4,
        seqlen=16,
        batch_size=2,
        method_options=options,
    )
    _CountingContext.made = 0
    ctx = _CountingContext(
        model=model,
        adapter=ArchAdapter.for_model(model),
        tokenizer=None,
        calib=torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0)),
        settings=settings,
        device=torch.device("cpu"),
        work_dir=tmp_path / "work",
        progress=Reporter(enabled=False),
        offload_dir=tmp_path / "offload",
    )
    ctx.work_dir.mkdir()
    result = PruneResult.of(get_pruner_class(strategy, method)(options).prune(ctx))
    assert result.plan is not None
    assert built and len(built) == _CountingContext.made, "a LayerwiseRunner was built around ctx.layerwise_runner()"
    assert all(k.get("offload_dir") == tmp_path / "offload" for k in built)
