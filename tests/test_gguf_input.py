"""A GGUF file as the model of every command (issue 29): the reference model written as a GGUF
(llama.cpp's names and q/k row order, a gpt2 tokenizer) loads as the folder does, prunes into an
ordinary folder, evaluates, inspects and estimates from its header; bad files are one line."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import CALIB, EVAL, REFMODEL, write_gguf
from helpers import run_cli as run

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("gguf", "accelerate")),
    reason="needs the gguf extra (gguf, accelerate)",
)

FAST = ("--nsamples", "4", "--seqlen", "64", "--calib", CALIB)


@pytest.fixture(scope="session")
def ref_gguf(tmp_path_factory) -> Path:
    """The reference model as a float32 GGUF (its bfloat16 values, exactly)."""
    return write_gguf(REFMODEL, tmp_path_factory.mktemp("gguf") / "refmodel.gguf")


@pytest.fixture(scope="session")
def eval_text(tmp_path_factory) -> Path:
    """The head of the evaluation text: a few 64-token windows."""
    path = tmp_path_factory.mktemp("text") / "eval.txt"
    path.write_text(EVAL.read_text()[:6000])
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gguf_logits_equal_the_folders(ref_gguf, dtype):
    from llmprune.model.loading import load_model

    ids = torch.tensor([list(range(1, 200, 3))])
    model, adapter, tokenizer = load_model(str(ref_gguf), torch.device("cpu"), dtype)
    folder_model, _, folder_tokenizer = load_model(str(REFMODEL), torch.device("cpu"), dtype)
    assert type(model) is type(folder_model) and model.dtype == dtype
    assert getattr(model.config, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None
    with torch.no_grad():
        logits, expected = model(ids).logits.float(), folder_model(ids).logits.float()
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5 if dtype == torch.float32 else 1e-2)
    text = "The tokenizer comes from the file, ünïcode and all: 12345."
    assert tokenizer(text).input_ids == folder_tokenizer(text).input_ids
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied


def test_quantized_gguf_dequantizes_into_the_run_dtype(tmp_path):
    """Q8_0 matrices: dequantized (close to the folder's values, not equal), the quantization type
    recorded, a plain float32 model under ``--save-dtype auto``."""
    from llmprune.model.loading import checkpoint_dtype, describe_input, load_config, load_model

    path = write_gguf(REFMODEL, tmp_path / "q8.gguf", tensor_type="Q8_0")
    assert checkpoint_dtype(load_config(str(path))) is None  # no float type: saved in float32
    described = describe_input(str(path))
    assert described is not None and described["quantization"] == "Q8_0"
    assert described["tensor_types"] == {"Q8_0": 57, "F32": 17}
    folder_model, _, _ = load_model(str(REFMODEL), torch.device("cpu"), torch.float32)
    expected = folder_model.model.layers[0].mlp.down_proj.weight
    for dtype in (torch.float32, torch.bfloat16):
        model, _, _ = load_model(str(path), torch.device("cpu"), dtype)
        weight = model.model.layers[0].mlp.down_proj.weight
        assert weight.dtype == dtype and not torch.equal(weight.float(), expected)
        assert (weight.float() - expected).abs().max() <= expected.abs().max() / 100
        assert getattr(model.config, "quantization_config", None) is None


@pytest.mark.slow
def test_gguf_eval_matches_the_folder_under_dtype(ref_gguf, eval_text, tmp_path):
    reports = {}
    for name, model in (("gguf", ref_gguf), ("folder", REFMODEL)):
        out = tmp_path / f"{name}.json"
        args = ("eval", model, "--data", eval_text, "--seqlen", "64", "--dtype", "bfloat16", "--json", out)
        result = run(*args)
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(out.read_text())
    assert reports["gguf"]["perplexity"] == pytest.approx(reports["folder"]["perplexity"], rel=1e-4)
    described = reports["gguf"]["input_model"]
    assert described["format"] == "gguf" and described["quantization"] == "F32"
    assert described["sha256"] == hashlib.sha256(ref_gguf.read_bytes()).hexdigest()
    assert "input_model" not in reports["folder"]


@pytest.mark.slow
def test_prune_a_gguf_into_an_ordinary_folder_and_eval_it(ref_gguf, eval_text, tmp_path):
    out = tmp_path / "pruned"
    result = run("uniform", ref_gguf, "-o", out, "--method", "wanda", "--sparsity", "0.3", *FAST)
    assert result.exit_code == 0, result.output
    assert "de-quantizing" not in result.output  # transformers' own progress bar stays quiet
    report = json.loads((out / "llmprune_report.json").read_text())
    assert list(report).index("input_model") == list(report).index("settings") + 1
    assert report["input_model"]["sha256"] == hashlib.sha256(ref_gguf.read_bytes()).hexdigest()
    assert report["input_model"]["quantization"] == "F32"
    assert report["input_model"]["tensor_types"] == {"F32": 74}
    assert abs(report["achieved_sparsity"] - 0.3) < 0.02
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and "_model_name_or_path" not in config
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.gguf"))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no gguf_file
    assert AutoTokenizer.from_pretrained(out)("hello world").input_ids

    result = run("eval", out, "--data", eval_text, "--seqlen", "64")
    assert result.exit_code == 0 and "perplexity" in result.output, result.output

    stacked = tmp_path / "stacked"  # the history keeps the GGUF's description
    result = run("semi24", out, "-o", stacked, "--method", "magnitude", "--save-dtype", "float32")
    assert result.exit_code == 0, result.output
    history = json.loads((stacked / "llmprune_report.json").read_text())["history"]
    assert history[0]["model"] == str(ref_gguf) and history[0]["input_model"]["quantization"] == "F32"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["semi24", "global"])
def test_other_strategies_take_a_gguf(ref_gguf, tmp_path, strategy):
    extra = ("--sparsity", "0.3") if strategy == "global" else ()
    result = run(strategy, ref_gguf, "-o", tmp_path / "out", "--method", "magnitude", *extra, *FAST)
    assert result.exit_code == 0, result.output


def test_inspect_and_estimate_read_the_header_only(ref_gguf, tmp_path, monkeypatch):
    import gguf
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    monkeypatch.setattr(gguf, "dequantize", no_weights)

    result = run("inspect", ref_gguf, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    folder_info = json.loads(run("inspect", REFMODEL, "--json").output)
    assert info["model_type"] == "llama" and not info["pruned_by_llmprune"]
    assert info["layers"] == folder_info["layers"]
    assert info["params_decoder_linear"] == folder_info["params_decoder_linear"]
    assert info["params_total"] == folder_info["params_total"]
    assert info["gguf"]["quantization"] == "F32" and info["gguf"]["tensor_types"] == {"F32": 74}
    table = run("inspect", ref_gguf)
    assert table.exit_code == 0 and "GGUF" in table.output

    estimate = tmp_path / "estimate.json"
    result = run("uniform", ref_gguf, "--method", "wanda", "--estimate", "--json", estimate)
    assert result.exit_code == 0, result.output
    assert "peak device memory" in result.output and estimate.is_file()


def _bad_files(ref_gguf: Path, folder: Path) -> dict[str, tuple[Path, int, str]]:
    """name → (file, exit code, text its error line contains)."""
    truncated = folder / "truncated.gguf"
    truncated.write_bytes(ref_gguf.read_bytes()[: ref_gguf.stat().st_size // 2])
    header_cut = folder / "header_cut.gguf"
    header_cut.write_bytes(ref_gguf.read_bytes()[:2000])
    foreign = write_gguf(REFMODEL, folder / "mamba.gguf", architecture="mamba")
    not_gguf = folder / "text.gguf"
    not_gguf.write_text("not a gguf file\n")
    return {
        "truncated": (truncated, 3, "cannot read the GGUF file"),
        "header_cut": (header_cut, 3, "cannot read the GGUF file"),
        "foreign": (foreign, 4, "'mamba' model"),
        "not_gguf": (not_gguf, 3, "cannot read the GGUF file"),
        "missing": (folder / "absent.gguf", 3, "GGUF file not found"),
    }


def test_bad_gguf_files_are_one_line_and_write_nothing(ref_gguf, tmp_path):
    for name, (path, code, text) in _bad_files(ref_gguf, tmp_path).items():
        out = tmp_path / f"out_{name}"
        commands = [("uniform", path, "-o", out, "--method", "wanda", *FAST)]
        if name in ("truncated", "foreign"):  # every command reads the file through the same check
            commands += [("eval", path, "--data", CALIB), ("inspect", path), ("semi24", path, "--estimate")]
        for args in commands:
            result = run(*args)
            lines = result.output.strip().splitlines()
            assert result.exit_code == code, (name, args[0], result.output)
            assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], (name, args[0], lines)
            assert "Traceback" not in result.output
        assert not out.exists() and not list(tmp_path.glob(f".out_{name}*"))


def test_missing_extra_names_it(ref_gguf, tmp_path, monkeypatch):
    from llmprune.model import gguf as gguf_input

    monkeypatch.setattr(gguf_input, "_missing", lambda: ["gguf"])
    for args in (("uniform", ref_gguf, "-o", tmp_path / "o", "--method", "wanda"), ("inspect", ref_gguf)):
        result = run(*args)
        assert result.exit_code == 10, result.output
        assert result.output.strip() == "error: reading a GGUF file needs gguf: pip install 'llmprune[gguf]'"
    assert not (tmp_path / "o").exists()


def test_proxsparse_originals_are_copies_for_a_gguf(ref_gguf):
    from llmprune.model.originals import safetensors_files

    assert safetensors_files(str(ref_gguf)) == []
