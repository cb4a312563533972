"""Broken inputs, random option values, numerical guards and determinism (one-shot methods)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import SAMPLE_TEXT, folder_hash, save_tiny_model
from helpers import run_cli as run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmprune.core.obs import damped_cholesky_inverse
from llmprune.errors import NumericalError

SMALL = ["--seqlen", "32", "--nsamples", "4", "--batch-size", "4"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", "mistral")


def _broken_copy(pristine: Path, tmp: Path, breaker) -> Path:
    folder = tmp / "broken"
    shutil.copytree(pristine, folder)
    breaker(folder)
    return folder


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BROKEN_MODELS = {
    "corrupt config": (lambda f: (f / "config.json").write_text("{not json"), 3, "cannot load model config"),
    "config without model_type": (
        lambda f: (f / "config.json").write_text('{"hidden_size": 8}'),
        3,
        "cannot load model config",
    ),
    "missing config": (lambda f: (f / "config.json").unlink(), 3, "no config.json"),
    "truncated safetensors": (lambda f: _truncate(f / "model.safetensors"), 3, "cannot load model weights"),
    "garbage safetensors": (
        lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64),
        3,
        "cannot load model weights",
    ),
    "missing weights": (lambda f: (f / "model.safetensors").unlink(), 3, "cannot load model weights"),
    "missing tokenizer": (
        lambda f: [(f / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
        3,
        "tokenizer",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_MODELS))
def test_broken_model_folders(case, pristine, tmp_path):
    breaker, code, message = BROKEN_MODELS[case]
    folder = _broken_copy(pristine, tmp_path, breaker)
    before = folder_hash(folder)
    result = run("uniform", folder, "-o", tmp_path / "out", "--method", "wanda", "--calib", tmp_path / "c.txt", *SMALL)
    assert result.exit_code == code, (case, result.output)
    assert result.output.startswith("error:") and message in result.output, result.output
    assert "Traceback" not in result.output
    assert folder_hash(folder) == before
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.llmprune-*"))


BROKEN_CALIB = {
    "empty": (b"", "0 windows"),
    "too short": (b"just a few words", "windows of 32"),
    "binary": (bytes(range(256)) * 8, "binary"),
    "latin-1": ("caf\xe9 ".encode("latin-1") * 500, "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CALIB))
def test_broken_calibration_files(case, pristine, tmp_path):
    content, message = BROKEN_CALIB[case]
    calib = tmp_path / "calib.txt"
    calib.write_bytes(content)
    result = run("semi24", pristine, "-o", tmp_path / "out", "--method", "wanda", "--calib", calib, *SMALL)
    assert result.exit_code == 5, result.output
    assert message in result.output and result.output.startswith("error:")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_location(pristine, tmp_path):
    result = run("uniform", pristine, "-o", "/proc/llmprune-test/out", "--method", "magnitude")
    assert result.exit_code == 6 and result.output.startswith("error: cannot write to")


def test_output_under_a_file(pristine, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("uniform", pristine, "-o", blocker / "sub" / "out", "--method", "magnitude")
    assert result.exit_code == 6 and "is a file" in result.output


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sparsity=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["abc", "", "1e400", "-0"])),
    nsamples=st.one_of(st.integers(-5, 3), st.just("many")),
    seqlen=st.one_of(st.integers(-3, 1), st.integers(10_000, 10**9)),
)
def test_random_option_values_never_crash(pristine, tmp_path, sparsity, nsamples, seqlen):
    """Out-of-range or malformed values: a clean non-zero exit (usage 2), never a traceback or output."""
    out = tmp_path / "hyp-out"
    result = run(
        "uniform",
        pristine,
        "-o",
        out,
        "--method",
        "wanda",
        "--calib",
        tmp_path / "none.txt",
        "--sparsity",
        sparsity,
        "--nsamples",
        nsamples,
        "--seqlen",
        seqlen,
    )
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert not out.exists()


# ----- numerical guards -------------------------------------------------------------------------
def test_singular_hessian_is_damped_progressively():
    x = torch.randn(100, 1)
    H = (x @ x.T)[:8, :8] * 0  # all-zero (dead) and rank-deficient
    H[0, 0] = 1e-30
    U = damped_cholesky_inverse(H)
    assert torch.isfinite(U).all()
    rank1 = torch.ones(16, 16)
    assert torch.isfinite(damped_cholesky_inverse(rank1, percdamp=0.0)).all()


def test_hessian_inverse_holds_at_most_three_copies():
    """At 8B widths the down projection's Hessian is 14336² floats (0.77 GiB): the damped copy,
    factor and inverse are the working set (estimate: 3 copies); an identity and a scaled identity
    of the same size beside them would be two more."""
    from llmprune.runtime.memtrack import TensorPeak

    n = 256
    x = torch.randn(4 * n, n, generator=torch.Generator().manual_seed(0))
    with TensorPeak() as m:
        H = x.T @ x  # the statistics the caller holds: tracked like the rest
        one, before = H.numel() * H.element_size(), m.current
        U = damped_cholesky_inverse(H)
    assert m.peak - before <= 3 * one + 64 * n, (m.peak - before) / one
    torch.testing.assert_close(
        U.T @ U @ (H + 0.01 * torch.diag(H).mean() * torch.eye(n)), torch.eye(n), atol=1e-3, rtol=0
    )


def test_non_finite_hessian_names_the_module():
    H = torch.eye(4)
    H[1, 1] = math.nan
    with pytest.raises(NumericalError, match="layers.3.mlp.down_proj.*float32"):
        damped_cholesky_inverse(H, name="model.layers.3.mlp.down_proj")


def test_overflowing_activations_are_reported_with_the_layer(pristine, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "overflow"
    shutil.copytree(pristine, folder)
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.1.self_attn.o_proj.weight"].fill_(float("inf"))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    result = run("semi24", folder, "-o", tmp_path / "out", "--method", "wanda", "--calib", calib, *SMALL)
    assert result.exit_code == 8, result.output
    assert "non-finite activations" in result.output and "layer 1" in result.output
    assert not (tmp_path / "out").exists()


# ----- determinism --------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy,method", [("uniform", "wanda"), ("semi24", "sparsegpt")])
def test_same_seed_gives_byte_identical_outputs(pristine, tmp_path, strategy, method):
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = run(strategy, pristine, "-o", out, "--method", method, "--calib", calib, "--sparsity", "0.5", *SMALL)
        assert result.exit_code == 0, result.output
        digests.append(
            {
                f: hashlib.sha256((out / f).read_bytes()).hexdigest()
                for f in ("model.safetensors", "llmprune_plan.json", "config.json")
            }
        )
    assert digests[0] == digests[1]


def test_offloaded_activations_give_identical_results_and_are_cleaned_up(pristine, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    offload = tmp_path / "offload"
    existing = tmp_path / "existing-offload"
    existing.mkdir()
    (existing / "keep.txt").write_text("the user's")
    digests = []
    for name, extra in (
        ("mem", []),
        ("disk", ["--offload-dir", offload / "a" / "b"]),
        ("disk2", ["--offload-dir", existing]),
    ):
        out = tmp_path / name
        result = run("semi24", pristine, "-o", out, "--method", "sparsegpt", "--calib", calib, *SMALL, *extra)
        assert result.exit_code == 0, result.output
        digests.append(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1] == digests[2]
    assert not offload.exists(), "an offload folder the run created is removed at exit (with its parents it made)"
    assert existing.is_dir() and not any(existing.rglob("*.pt")), "offloaded activations are deleted"
    assert (existing / "keep.txt").read_text() == "the user's", "a folder the user made is kept"


def test_activation_store_roundtrip(tmp_path):
    from llmprune.data.capture import ActivationStore

    store = ActivationStore(tmp_path)
    tensors = [torch.randn(2, 3, 4) for _ in range(3)]
    for t in tensors:
        store.append(t)
    assert len(store) == 3 and len(list(tmp_path.rglob("*.pt"))) == 3
    assert all(torch.equal(a, b) for a, b in zip(store, tensors)) and torch.equal(store[1], tensors[1])
    store.release()
    assert len(store) == 0 and not list(tmp_path.rglob("*.pt"))


# ----- every bad input of the issue, in one table -----------------------------------------------
def _unsupported(tmp: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(folder)
    return folder


def _model_case(breaker, strategy=None):
    """A case that breaks a copy of the model folder; the calibration text is fine."""
    return lambda pristine, tmp, calib: ([_broken_copy(pristine, tmp, breaker), "--calib", calib], strategy)


def _calib_case(content: bytes):
    def make(pristine, tmp, calib):
        bad = tmp / "bad-calib.txt"
        bad.write_bytes(content)
        return [pristine, "--calib", bad], None

    return make


def _flags(*flags, strategy="uniform"):
    return lambda pristine, tmp, calib: ([pristine, "--calib", calib, *flags], strategy)


def _output_is_file(pristine, tmp, calib):
    (tmp / "out").write_text("a file")
    return [pristine, "--calib", calib], None


def _unrelated_output_folder(pristine, tmp, calib):
    (tmp / "out").mkdir()
    (tmp / "out" / "thesis.tex").write_text("\\documentclass{article}")
    return [pristine, "--calib", calib, "--overwrite"], None


def _offload_in_model(pristine, tmp, calib):
    model = tmp / "model-copy"
    shutil.copytree(pristine, model)
    return [model, "--calib", calib, "--offload-dir", model / "offload"], None


def _offload_is_file(pristine, tmp, calib):
    (tmp / "offload").write_text("x")
    return [pristine, "--calib", calib, "--offload-dir", tmp / "offload"], None


def _recipe_with_wrong_type(pristine, tmp, calib):
    recipe = tmp / "recipe.yaml"
    recipe.write_text("nsamples: [1, 2]\n")
    return [pristine, "--calib", calib, "--config", recipe, "--nsamples", "4"], None


def _drop_tensor(name: str):
    def breaker(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "model.safetensors")
        del weights[name]
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    return breaker


MISSING = "model.layers.1.mlp.down_proj.weight"


class _Patched:
    """A table row that also patches llmprune in-process (``make(..., monkeypatch)``)."""

    def __init__(self, make):
        self.make = make

    def __call__(self, pristine, tmp, calib, monkeypatch):
        return self.make(pristine, tmp, calib, monkeypatch)


def _disk_full_during_export(pristine, tmp, calib, monkeypatch):
    import errno

    import transformers

    def full(self, folder, *args, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full)
    # --sparsity 0 keeps the dense widths (multiples of 32): no alignment warning besides the error
    return [pristine, "--calib", calib, "--sparsity", "0"], None


def _hub_unreachable(pristine, tmp, calib, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # loopback, nothing listens: refused at once
    return ["someorg/tiny-model", "--calib", calib], None


def _output_under_file(pristine, tmp, calib):
    (tmp / "blocker").write_text("x")
    return [pristine, "--calib", calib, "-o", tmp / "blocker" / "out"], None


#: case -> (make(pristine, tmp, calib) -> (args after the strategy, strategy or None), exit code, message)
BAD_INPUTS = {
    "missing config.json": (_model_case(lambda f: (f / "config.json").unlink()), 3, "no config.json"),
    "corrupt config.json": (
        _model_case(lambda f: (f / "config.json").write_text("{not json")),
        3,
        "cannot load model config",
    ),
    "truncated safetensors": (
        _model_case(lambda f: _truncate(f / "model.safetensors")),
        3,
        "cannot load model weights",
    ),
    "corrupt safetensors": (
        _model_case(lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 4096)),
        3,
        "cannot load model weights",
    ),
    "tokenizer missing": (
        _model_case(lambda f: [(f / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")]),
        3,
        "cannot load tokenizer",
    ),
    "unsupported architecture": (lambda p, t, c: ([_unsupported(t), "--calib", c], None), 4, "supported model types"),
    "empty calibration": (_calib_case(b""), 5, "0 windows"),
    "too-short calibration": (_calib_case(b"just a few words"), 5, "windows of 32"),
    "binary calibration": (_calib_case(bytes(range(256)) * 8), 5, "binary"),
    "sparsity 1": (_flags("--sparsity", "1"), 2, "--sparsity"),
    "sparsity negative": (_flags("--sparsity", "-0.2"), 2, "--sparsity"),
    "sparsity NaN": (_flags("--sparsity", "nan"), 2, "--sparsity"),
    "sparsity 0 for 2:4": (_flags("--sparsity", "0", strategy="semi24"), 2, "only 0.5"),
    "seqlen beyond the context": (_flags("--seqlen", "4096"), 2, "exceeds the model's context of 128"),
    "nsamples 0": (_flags("--nsamples", "0"), 2, "--nsamples"),
    "output path is a file": (_output_is_file, 6, "is a file"),
    "output under a file": (_output_under_file, 6, "is a file"),
    "read-only output location": (
        lambda p, t, c: ([p, "--calib", c, "-o", "/proc/llmprune-test/out"], None),
        6,
        "cannot write to",
    ),
    # issue 17
    "missing decoder tensor (uniform)": (
        _model_case(_drop_tensor(MISSING)),
        3,
        f"lacks 1 tensor(s) the model needs (first: {MISSING})",
    ),
    "missing decoder tensor (global)": (
        _model_case(_drop_tensor(MISSING), "global"),
        3,
        f"lacks 1 tensor(s) the model needs (first: {MISSING})",
    ),
    "missing decoder tensor (semi24)": (
        _model_case(_drop_tensor(MISSING), "semi24"),
        3,
        f"lacks 1 tensor(s) the model needs (first: {MISSING})",
    ),
    "unreachable sparsity": (_flags("--sparsity", "0.9"), 2, "the largest reachable --sparsity is 0.7937"),
    "max-shard-size without a unit": (_flags("--max-shard-size", "lots"), 2, "invalid --max-shard-size"),
    "seqlen 0": (_flags("--seqlen", "0"), 2, "invalid --seqlen: must be at least 2, got 0"),
    "seqlen 1": (_flags("--seqlen", "1"), 2, "invalid --seqlen: must be at least 2, got 1"),
    "offload-dir is a file": (_offload_is_file, 6, "--offload-dir"),
    "offload-dir inside the input model": (_offload_in_model, 6, "overlaps the input model folder"),
    "overwrite of a folder llmprune did not make": (
        _unrelated_output_folder,
        6,
        "holds other files, so it is left alone",
    ),
    "recipe value of the wrong type": (_recipe_with_wrong_type, 2, "--config"),
    "disk full during export": (_Patched(_disk_full_during_export), 6, "no space left on device while writing"),
    "hub unreachable": (_Patched(_hub_unreachable), 3, "HF_HUB_OFFLINE=1"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_table(case, pristine, tmp_path, monkeypatch):
    """Each broken input: exactly one line on stderr, the exit code of its error class, no output
    or staging/work folder, and the input model folder byte-for-byte unchanged."""
    make, code, message = BAD_INPUTS[case]
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    pristine_before = folder_hash(pristine)
    args, strategy = (
        make(pristine, tmp_path, calib, monkeypatch) if isinstance(make, _Patched) else make(pristine, tmp_path, calib)
    )
    model = Path(args[0])
    model_before = folder_hash(model) if model.is_dir() else None
    model_tree = sorted(model.rglob("*")) if model.is_dir() else None
    out = tmp_path / "out"
    file_out = out.is_file() and out.read_bytes()
    dir_out = folder_hash(out) if out.is_dir() else None
    if "-o" not in args:
        args += ["-o", out]
    strategy = strategy or "uniform"
    method = "sparsegpt" if strategy == "semi24" else "wanda"
    defaults = {"--seqlen": "32", "--nsamples": "4", "--method": method}
    for flag, value in defaults.items():
        if flag not in args:
            args += [flag, value]
    result = run(strategy, *args)
    assert result.exit_code == code, (case, result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert folder_hash(pristine) == pristine_before
    if model_before is not None:
        assert folder_hash(model) == model_before
        assert sorted(model.rglob("*")) == model_tree, "no folder created inside the input"
    if file_out is not False:
        assert out.is_file() and out.read_bytes() == file_out, "an output that is a file is left alone"
    elif dir_out is not None:
        assert folder_hash(out) == dir_out, "a folder that is not ours is left alone"
    else:
        assert not out.exists()
    assert not list(tmp_path.rglob("*.llmprune-*")), "no staging, work or probe folder left behind"


def test_error_classes_have_distinct_exit_codes():
    import llmprune.errors as errors

    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.LlmpruneError) and c is not errors.LlmpruneError
    ]
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes) and all(c not in (0, 1, 130) for c in codes), codes


# ----- disk: the Týr supernet's need is estimated and checked before any work -------------------
@pytest.mark.parametrize("attn_unit,dtype", [("group", torch.float32), ("query", torch.bfloat16)])
def test_supernet_bytes_on_disk_equal_the_formula(tmp_path, attn_unit, dtype):
    """Compact variants in the model's dtype; the files are exactly ``supernet_disk_need``'s bytes."""
    from helpers import make_tiny_model
    from safetensors import safe_open

    from llmprune.core.masks import uniform_widths
    from llmprune.data.capture import LayerwiseRunner
    from llmprune.model.arch import ArchAdapter
    from llmprune.pruners.tyr.supernet import (
        KEYS,
        Supernet,
        SupernetSpec,
        iteration_spec,
        module_types,
        supernet_disk_need,
    )

    model = make_tiny_model("llama", num_hidden_layers=3).to(dtype)
    adapter = ArchAdapter.for_model(model)
    geom = adapter.geometry(model)
    types = module_types(geom, attn_unit)
    k_attn, k_mlp = uniform_widths(geom, 0.4, attn_unit)
    spec = SupernetSpec(
        centers={"o": [k_attn] * 3, "down": [k_mlp] * 3}, steps={k: types[k].step(0.125) for k in KEYS}, delta=0.125
    )
    supernet = Supernet(tmp_path / "sn", spec, types, 3, dtype=dtype)
    calib = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    supernet.build(model, adapter, LayerwiseRunner(model, adapter, calib, torch.device("cpu"), 4), torch.device("cpu"))
    data = 0
    for i in range(3):
        with safe_open(str(supernet.layer_file(i)), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                assert t.dtype == (torch.int64 if name.endswith(".units") else dtype), name
                data += t.numel() * t.element_size()
    # data: per distinct level, hidden × kept columns in the model's dtype + the int64 unit list
    b = torch.empty((), dtype=dtype).element_size()
    expected_data = sum(
        (geom.hidden_size * types[key].rows.shape[1] * b + 8) * kept
        for i in range(3)
        for key in KEYS
        for kept in set(supernet.levels(key, i))
    )
    assert data == expected_data
    written = sum(supernet.layer_file(i).stat().st_size for i in range(3))
    assert written == supernet.disk_bytes() == supernet_disk_need(types, spec, 3, iterations=1, dtype=dtype)
    # one supernet on disk at a time: the need is the largest iteration's, not a sum
    later = Supernet(tmp_path / "none", iteration_spec(spec, types, 1), types, 3, dtype=dtype).disk_bytes()
    assert supernet_disk_need(types, spec, 3, iterations=2, dtype=dtype) == max(written, later)


def test_too_little_disk_for_the_supernet_is_refused_before_any_work(pristine, tmp_path, monkeypatch):
    import collections

    import llmprune.pruners.tyr.pruner as tyr

    calls = []
    Usage = collections.namedtuple("Usage", "total used free")
    monkeypatch.setattr(tyr.shutil, "disk_usage", lambda path: calls.append(path) or Usage(10**9, 10**9 - 1000, 1000))
    monkeypatch.setattr(tyr.Evaluator, "__init__", lambda *a, **k: pytest.fail("work started before the disk check"))
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    before = folder_hash(pristine)
    out = tmp_path / "out"
    result = run("global", pristine, "-o", out, "--method", "tyr", "--calib", calib, *SMALL, "--iterations", "1")
    assert result.exit_code == 6, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: not enough disk space for the Týr supernet: need "), lines
    assert "free 0.00 GB in" in lines[0] and ".out.llmprune-work" in lines[0]
    assert calls and not out.exists() and not list(tmp_path.glob(".out.llmprune-*"))
    assert folder_hash(pristine) == before


@pytest.mark.parametrize("target", ["/proc/llmprune-test/report.json", "FILE/report.json", "DIR"])
def test_eval_json_target_that_cannot_be_written_fails_before_measuring(target, pristine, tmp_path, monkeypatch):
    """An unwritable --json is reported in one line (exit 6) before any measurement runs."""
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "DIR").mkdir()
    path = target if target.startswith("/") else tmp_path / target
    import llmprune.run.evaluation as evaluation_run

    monkeypatch.setattr(evaluation_run, "load_model", lambda *a, **k: pytest.fail("measured before checking --json"))
    data = tmp_path / "eval.txt"
    data.write_text(SAMPLE_TEXT)
    result = run("eval", pristine, "--data", data, "--seqlen", "32", "--json", path)
    assert result.exit_code == 6, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--json" in lines[0], result.stderr
    assert not list(tmp_path.rglob(".llmprune-probe-*"))


def test_atomic_text_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    from llmprune.errors import OutputExistsError
    from llmprune.runtime import atomic

    target = tmp_path / "sub" / "report.json"
    atomic.write_text(target, "first")
    assert target.read_text() == "first"

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OutputExistsError, match="No space left"):
        atomic.write_text(target, "second")
    assert target.read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"], "no temporary file left"


# ----- issue 17: the rest of the bad-input sweep ------------------------------------------------
@pytest.mark.parametrize("command", ["eval", "inspect"])
def test_missing_tensor_is_a_load_error_for_eval_and_inspect(command, pristine, tmp_path):
    """transformers would fill the tensor with random values (eval reported ppl 43.78 instead of failing)."""
    folder = _broken_copy(pristine, tmp_path, _drop_tensor(MISSING))
    before = folder_hash(folder)
    data = tmp_path / "eval.txt"
    data.write_text(SAMPLE_TEXT)
    args = ["--data", data, "--seqlen", "32"] if command == "eval" else []
    result = run(command, folder, *args)
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error:")
        and f"lacks 1 tensor(s) the model needs (first: {MISSING})" in lines[0]
    )
    assert folder_hash(folder) == before


def _narrow_tensor(name: str):
    def breaker(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "model.safetensors")
        weights[name] = weights[name][:, :-4].contiguous()
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    return breaker


@pytest.mark.parametrize("command", ["inspect", "eval", "uniform"])
def test_tensor_of_the_wrong_shape_is_one_line_naming_both_shapes(command, pristine, tmp_path):
    """issue 30: inspect printed a normal table (exit 0); eval and the pruning commands ended on
    the last line of transformers' many-line report ("For details look at the above report!")."""
    folder = _broken_copy(pristine, tmp_path, _narrow_tensor(MISSING))
    before = folder_hash(folder)
    data = tmp_path / "eval.txt"
    data.write_text(SAMPLE_TEXT)
    args = {
        "inspect": [],
        "eval": ["--data", data, "--seqlen", "32"],
        "uniform": ["-o", tmp_path / "o", "--calib", data, *SMALL],
    }[command]
    result = run(command, folder, *args)
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert f"tensor {MISSING} of shape (64, 92), but its config.json implies (64, 96)" in lines[0], lines[0]
    assert folder_hash(folder) == before
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.llmprune-*"))


def test_tied_lm_head_is_not_missing(tmp_path, calib_text=SAMPLE_TEXT):
    """A tied lm_head is stored once (as the embedding): every command accepts the folder."""
    folder = save_tiny_model(tmp_path / "tied", "llama", tie_word_embeddings=True)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        assert "lm_head.weight" not in set(fh.keys())
    assert run("inspect", folder).exit_code == 0
    data = tmp_path / "eval.txt"
    data.write_text(calib_text)
    assert run("eval", folder, "--data", data, "--seqlen", "32").exit_code == 0


def test_inspect_on_a_truncated_safetensors_is_one_line(pristine, tmp_path):
    folder = _broken_copy(pristine, tmp_path, lambda f: _truncate(f / "model.safetensors"))
    result = run("inspect", folder)
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read the safetensors header of"), result.stderr


def test_the_largest_reachable_sparsity_is_accepted(pristine, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    result = run("uniform", pristine, "-o", tmp_path / "out", "--method", "magnitude", "--sparsity", "0.7937")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "llmprune_report.json").read_text())
    assert report["achieved_sparsity"] == pytest.approx(0.79375) and report["sparsity_warning"] is None


def test_an_achieved_sparsity_far_from_the_request_is_reported(tmp_path):
    """A layer whose MLP is tiny next to one KV group: 30% is met only at 44% (1 of 2 groups goes)."""
    folder = save_tiny_model(tmp_path / "small-mlp", "llama", intermediate_size=8)
    out = tmp_path / "out"
    result = run("uniform", folder, "-o", out, "--method", "magnitude", "--sparsity", "0.3")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "llmprune_report.json").read_text())
    assert report["achieved_sparsity"] == pytest.approx(1 - 7680 / 13824)
    assert report["sparsity_warning"].startswith("achieved sparsity 0.4444 misses the requested 0.3")
    assert "warning: achieved sparsity 0.4444 misses the requested 0.3" in " ".join(result.stderr.split())


def test_eval_warns_when_the_evaluation_text_is_the_calibration_text(pristine, tmp_path):
    import hashlib

    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    out = tmp_path / "out"
    assert run("uniform", pristine, "-o", out, "--method", "wanda", "--calib", calib, *SMALL).exit_code == 0
    recorded = json.loads((out / "llmprune_report.json").read_text())["calibration"]["text_sha256"]
    assert recorded == hashlib.sha256(SAMPLE_TEXT.encode()).hexdigest()
    copy = tmp_path / "same-text-other-name.txt"
    copy.write_text(SAMPLE_TEXT)
    same = run("eval", out, "--data", copy, "--seqlen", "32", "--json", tmp_path / "same.json")
    assert same.exit_code == 0, same.output
    assert "is the text" in same.stderr and "calibrated on (uniform --method wanda)" in " ".join(same.stderr.split())
    assert json.loads((tmp_path / "same.json").read_text())["evaluated_on_calibration_text"] is True
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(SAMPLE_TEXT[::-1])
    other = run("eval", out, "--data", held_out, "--seqlen", "32")
    assert other.exit_code == 0 and "warning" not in other.stderr, other.stderr


def test_a_live_lock_refuses_a_second_run_and_leaves_its_work_alone(pristine, tmp_path):
    """The in-process half of the lock test (tests/test_interrupt.py runs two real processes)."""
    import os
    import socket

    from llmprune.runtime.lock import LOCK_FILE, _start_time

    work = tmp_path / ".out.llmprune-work"
    work.mkdir()
    (work / "minimax_state.pt").write_bytes(b"another run's checkpoint")
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()), "since": 0}
    (work / LOCK_FILE).write_text(json.dumps(owner))
    result = run("uniform", pristine, "-o", tmp_path / "out", "--method", "magnitude")
    assert result.exit_code == 6, result.output
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and f"is in use by another llmprune run (pid {os.getpid()} on {socket.gethostname()}" in lines[0]
    )
    assert (work / "minimax_state.pt").read_bytes() == b"another run's checkpoint"
    assert json.loads((work / LOCK_FILE).read_text()) == owner
    assert not (tmp_path / "out").exists()


def test_a_stale_lock_is_taken_over(pristine, tmp_path):
    import socket
    import subprocess
    import sys

    from llmprune.runtime.lock import LOCK_FILE

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False
    )
    work = tmp_path / ".out.llmprune-work"
    work.mkdir()
    (work / LOCK_FILE).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname(), "start": "1"}))
    result = run("uniform", pristine, "-o", tmp_path / "out", "--method", "magnitude")
    assert result.exit_code == 0, result.output
    assert not work.exists() and (tmp_path / "out" / "llmprune_report.json").is_file()


def test_a_failure_after_a_checkpoint_keeps_it_and_says_so(pristine, tmp_path, monkeypatch):
    """Disk full at export after a learned run: exit 6 in one line that says --resume continues; the
    checkpoint stays, the lock goes; the resumed run then finishes."""
    import errno

    import transformers

    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    args = [
        "semi24",
        pristine,
        "-o",
        tmp_path / "out",
        "--method",
        "proxsparse",
        "--calib",
        calib,
        *SMALL,
        "--steps",
        "4",
        "--checkpoint-every",
        "2",
        "--lr",
        "0.02",
        "--lambda1",
        "0.3",
    ]

    def full(self, folder, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(transformers.PreTrainedModel, "save_pretrained", full)
        result = run(*args)
    assert result.exit_code == 6, result.output
    lines = result.stderr.strip().splitlines()
    work = (tmp_path / ".out.llmprune-work").resolve()
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device"), result.stderr
    assert f"the checkpoint in {work} is kept: rerun the same command with --resume" in lines[0]
    assert (work / "proxsparse_state.pt").is_file() and not (work / "llmprune.lock").exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.llmprune-tmp").exists()
    resumed = run(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert not work.exists()


def test_disk_full_is_recognised_from_python_and_from_safetensors():
    import errno

    from llmprune.runtime.atomic import disk_full

    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(
        RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )
    )
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))


def test_version():
    import llmprune

    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"llmprune {llmprune.__version__}"


def test_a_real_full_disk_during_export(pristine, tmp_path):
    """The same as the disk-full row, on a real 128 KB tmpfs (needs permission to mount; skipped otherwise)."""
    import subprocess

    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(disk)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        result = run("uniform", pristine, "-o", disk / "out", "--method", "magnitude", "--sparsity", "0")
        assert result.exit_code == 6, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no space left on device while writing"), lines
        assert list(disk.iterdir()) == [], "no output, staging or work folder left on the full disk"
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, check=False)
