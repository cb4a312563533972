"""Kill tests: the real CLI in a subprocess, killed (SIGKILL / SIGINT) after a checkpoint exists,
then rerun with --resume: the export equals an uninterrupted run's exactly.

Steps are slowed down with ``LLMPRUNE_TEST_STEP_DELAY`` (seconds slept after every step of
minimax/proxsparse and every Týr generation; read by ``llmprune.train.loop.notify``)
so the kill lands mid-run; the delay after the first checkpoint is drawn from a seeded RNG
(``LLMPRUNE_KILL_SEED`` changes the seed), so the kill point varies between cases but every run of
the suite is reproducible. Also: a death in the middle of a checkpoint write never corrupts the
previous checkpoint (every writer is tmp + rename).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import SAMPLE_TEXT, folder_hash, save_tiny_model
from safetensors.torch import load_file

COMMON = ["--seqlen", "32", "--nsamples", "8", "--batch-size", "4", "--seed", "3"]
#: method -> (strategy, small settings, checkpoint file in the work folder, step delay in seconds)
METHODS = {
    "minimax": (
        "uniform",
        [
            "--method",
            "minimax",
            "--sparsity",
            "0.4",
            "--steps",
            "12",
            "--lora-rank",
            "4",
            "--teacher-topk",
            "16",
            "--checkpoint-every",
            "2",
        ],
        "minimax_state.pt",
        0.25,
    ),
    "proxsparse": (
        "semi24",
        [
            "--method",
            "proxsparse",
            "--steps",
            "6",
            "--lr",
            "0.02",
            "--lambda1",
            "0.3",
            "--checkpoint-every",
            "2",
            "--layers-per-stage",
            "1",
        ],
        "proxsparse_state.pt",
        0.25,
    ),
    "tyr": (
        "global",
        [
            "--method",
            "tyr",
            "--sparsity",
            "0.4",
            "--generations",
            "3",
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
        ],
        "search_state.pt",
        0.4,
    ),
}
#: signal -> the opening words of the error line (the exit code is 128 + the signal number).
STOPPED = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    model = save_tiny_model(root / "tiny", "llama")
    calib = root / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    return {"root": root, "model": model, "calib": calib, "reference": {}}


def _command(setup, method: str, out: Path, *extra: str) -> list[str]:
    strategy, options, _, _ = METHODS[method]
    return [
        sys.executable,
        "-m",
        "llmprune",
        strategy,
        str(setup["model"]),
        "-o",
        str(out),
        "--calib",
        str(setup["calib"]),
        *COMMON,
        *options,
        *extra,
    ]


def _env(delay: float = 0.0) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("LLMPRUNE_TEST_STEP_DELAY", None)
    if delay:
        env["LLMPRUNE_TEST_STEP_DELAY"] = str(delay)
    return env


def _reference(setup, method: str) -> Path:
    """The uninterrupted run (once per method and module)."""
    if method not in setup["reference"]:
        out = setup["root"] / f"ref-{method}"
        proc = subprocess.run(_command(setup, method, out), capture_output=True, text=True, env=_env())
        assert proc.returncode == 0, proc.stderr[-2000:]
        setup["reference"][method] = out
    return setup["reference"][method]


def _assert_same_export(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].dtype == wb[key].dtype and torch.equal(wa[key], wb[key]), key
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "llmprune_plan.json").read_bytes() == (b / "llmprune_plan.json").read_bytes()
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()


def kill_and_resume(setup, tmp_path: Path, method: str, sig: signal.Signals) -> None:
    _, _, checkpoint, delay = METHODS[method]
    reference = _reference(setup, method)
    before = folder_hash(setup["model"])
    out = tmp_path / "out"
    work = tmp_path / ".out.llmprune-work"
    rng = random.Random(f"{os.environ.get('LLMPRUNE_KILL_SEED', '0')}-{method}-{sig.name}")
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(_command(setup, method, out), stdout=subprocess.DEVNULL, stderr=stderr, env=_env(delay))
        try:
            deadline = time.monotonic() + 90
            while not (work / checkpoint).is_file():
                assert proc.poll() is None, f"{method} ended before its first checkpoint: {stderr_path.read_text()}"
                assert time.monotonic() < deadline, "no checkpoint within 90 s"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 3 * delay))
            assert proc.poll() is None, "the run finished before the kill; lower the kill delay"
            proc.send_signal(sig)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = stderr_path.read_text()
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:  # SIGINT, and SIGTERM (what schedulers send) alike: stop, keep the checkpoint, say how to resume
        assert rc == 128 + sig, (rc, err)
        assert err.strip() == (
            f"error: {STOPPED[sig]}; the checkpoint in {work.resolve()} is kept: rerun the same "
            "command with --resume to continue"
        ), err
        assert not (work / "llmprune.lock").exists(), "the lock goes with the process"
    assert not out.exists(), "no partial output folder"
    assert (work / checkpoint).is_file()

    resumed = subprocess.run(_command(setup, method, out, "--resume"), capture_output=True, text=True, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not work.exists(), "the work folder is removed after a successful export"
    _assert_same_export(reference, out)
    assert folder_hash(setup["model"]) == before


@pytest.mark.parametrize(
    "method,sig",
    [
        ("minimax", signal.SIGKILL),
        ("proxsparse", signal.SIGINT),
        ("tyr", signal.SIGKILL),
        ("proxsparse", signal.SIGTERM),
        pytest.param("minimax", signal.SIGTERM, marks=pytest.mark.slow),
        pytest.param("minimax", signal.SIGINT, marks=pytest.mark.slow),
        pytest.param("proxsparse", signal.SIGKILL, marks=pytest.mark.slow),
        pytest.param("tyr", signal.SIGINT, marks=pytest.mark.slow),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else v,
)
def test_killed_run_resumes_to_the_uninterrupted_result(setup, tmp_path, method, sig):
    kill_and_resume(setup, tmp_path, method, sig)


# ----- one output, one run -----------------------------------------------------------------------
def _wait_for(path: Path, proc: subprocess.Popen, stderr_path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared: {stderr_path.read_text()}"
        assert time.monotonic() < deadline, f"no {path.name} within {timeout} s"
        time.sleep(0.02)


def test_a_second_run_on_the_same_output_is_refused(setup, tmp_path):
    """Two runs, one -o: the second is refused in one line naming the first, which is not disturbed."""
    import socket

    reference = _reference(setup, "proxsparse")
    out = tmp_path / "out"
    work = tmp_path / ".out.llmprune-work"
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        first = subprocess.Popen(
            _command(setup, "proxsparse", out), stdout=subprocess.DEVNULL, stderr=stderr, env=_env(0.25)
        )
        try:
            _wait_for(work / "proxsparse_state.pt", first, stderr_path)
            second = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "llmprune",
                    "semi24",
                    str(setup["model"]),
                    "-o",
                    str(out),
                    "--method",
                    "wanda",
                    "--calib",
                    str(setup["calib"]),
                    *COMMON,
                    "--overwrite",
                ],
                capture_output=True,
                text=True,
                env=_env(),
            )
            assert first.poll() is None, "the first run is still working"
            rc = first.wait(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert second.returncode == 6, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: output {out} is in use by another llmprune run (pid {first.pid} on {socket.gethostname()} since "
    ), lines
    assert rc == 0, stderr_path.read_text()
    _assert_same_export(reference, out)
    assert not work.exists()


def test_a_one_shot_run_stopped_by_ctrl_c_does_not_suggest_resume(setup, tmp_path):
    out = tmp_path / "out"
    work = tmp_path / ".out.llmprune-work"
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmprune",
                "semi24",
                str(setup["model"]),
                "-o",
                str(out),
                "--method",
                "wanda",
                "--calib",
                str(setup["calib"]),
                *COMMON,
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=_env(),
        )
        try:
            _wait_for(work / "llmprune.lock", proc, stderr_path)  # the run holds its output
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = stderr_path.read_text().strip()
    assert rc == 130, (rc, err)
    assert err == "error: interrupted; nothing was written (wanda is one-shot: rerun to start again)", err
    assert not out.exists() and not work.exists()


# ----- a death in the middle of a checkpoint write ------------------------------------------------
def _dying_save(obj, f, *args, **kwargs):
    """torch.save that writes half a file and then 'dies' (as a SIGKILL/SIGINT mid-write would)."""
    Path(f).write_bytes(b"PK\x03\x04 truncated checkpoint")
    raise KeyboardInterrupt


def _writers(tmp_path: Path):
    from llmprune.pruners.tyr.search import IterationState
    from llmprune.train import loop as training

    fp = {"seed": 0}
    state = IterationState(
        iteration=0,
        generation=1,
        parent=(0, 1),
        parent_fitness=0.5,
        centers={"o": [1]},
        rng=torch.Generator().manual_seed(0).get_state(),
    )
    yield (
        "tyr search state",
        tmp_path / "search_state.pt",
        lambda p: state.save(p),
        lambda p: IterationState.load(p).generation,
    )
    # minimax and proxsparse checkpoints, minimax's teacher and Týr's dense top-k cache: one writer
    for name, file in (("learned-method checkpoint", "minimax_state.pt"), ("teacher / top-k cache", "dense_topk.pt")):
        yield (
            name,
            tmp_path / file,
            lambda p: training.save_artefact(p, {"step": 4}, fp),
            lambda p: training.load_artefact(p, fp, resume=True)["step"],
        )


def test_a_kill_mid_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    for name, path, write, read in _writers(tmp_path):
        write(path)
        good = read(path)
        with monkeypatch.context() as m:
            m.setattr(torch, "save", _dying_save)
            with pytest.raises(KeyboardInterrupt):
                write(path)
        assert read(path) == good, name  # the previous checkpoint is intact and loadable


def test_supernet_layer_files_and_topk_cache_are_written_atomically():
    """The other files a resume reads: supernet layers (safetensors) and Týr's dense top-k cache."""
    import inspect

    from llmprune.pruners.tyr import search, supernet

    build = inspect.getsource(supernet.Supernet._write_layer)
    assert 'tmp = self.layer_file(i).with_suffix(".tmp")' in build and "tmp.replace(self.layer_file(i))" in build
    evaluator = inspect.getsource(search.Evaluator.__init__)
    # the cache goes through training.save_artefact (tested above against a death mid-write), never a bare torch.save
    assert "save_artefact(" in evaluator and "torch.save(" not in evaluator
