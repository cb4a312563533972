"""Calibration/evaluation loading, width accounting, N:M masks, SparseGPT and perplexity."""

from __future__ import annotations

import json
import math
import socket
import sys
import types

import pytest
import torch
from helpers import SAMPLE_TEXT, make_tiny_model, tiny_tokenizer

from llmprune.core.masks import max_nonzeros_per_group, nm_mask, select_attention_units, uniform_widths
from llmprune.core.obs import sparsegpt_prune
from llmprune.data import text as data
from llmprune.errors import DataError, UnsupportedArchitectureError
from llmprune.model.arch import ArchAdapter, Geometry
from llmprune.run.metrics import count_parameters, perplexity

TOK = tiny_tokenizer()


# ----- data -----------------------------------------------------------------------------------
def test_txt_and_jsonl_sources(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first doc\n\nsecond doc\n")
    assert data.read_text(str(txt)) == "first doc\n\nsecond doc\n"
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert data.read_text(str(jsonl)) == "one\n\ntwo"


@pytest.mark.parametrize(
    "content,message",
    [
        (b"\x00\x01\x02binary", "binary"),
        (b"\xff\xfe\xfa not utf8", "not UTF-8"),
    ],
)
def test_unreadable_sources_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        data.read_text(str(path))


def test_bad_jsonl_and_missing_source(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"content": "no text field"}\n')
    with pytest.raises(DataError, match="'text' field"):
        data.read_text(str(path))
    with pytest.raises(DataError, match="not found"):
        data.read_text(str(tmp_path / "missing.txt"))


def fake_datasets(monkeypatch, load_dataset):
    """Stand-in for the optional ``datasets`` package (not installed in CI; the hub is unreachable)."""
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_hub_dataset_failure_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    fake_datasets(monkeypatch, offline)
    with pytest.raises(DataError, match="cannot load hub dataset 'wikitext2'.*local"):
        data.read_text("wikitext2")


@pytest.fixture
def no_network(monkeypatch):
    """HF_HUB_OFFLINE unset and every TCP connection refused (counted); ``datasets`` is a stand-in
    that records its calls (the real one would retry five times before failing)."""
    from llmprune.model import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    seen = {"connections": 0, "load_dataset": 0}

    def refused(address, *args, **kwargs):
        seen["connections"] += 1
        raise ConnectionRefusedError(111, "Connection refused")

    def load_dataset(*args, **kwargs):
        seen["load_dataset"] += 1
        raise ConnectionError("retried five times")

    def blocked(sock, address, *args, **kwargs):  # anything else that would open a socket
        seen["other"] = seen.get("other", 0) + 1
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(hub.socket, "create_connection", refused)
    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", blocked)
    fake_datasets(monkeypatch, load_dataset)
    return seen


@pytest.mark.parametrize("source", ["wikitext2", "c4"])
def test_a_hub_dataset_fails_on_the_first_refused_connection(no_network, source):
    """issue 30: without HF_HUB_OFFLINE and without network, datasets retried five times."""
    with pytest.raises(DataError, match=f"cannot reach the Hugging Face hub at .* for dataset '{source}'") as err:
        data.read_text(source, "evaluation")
    assert "Connection refused" in str(err.value) and "HF_HUB_OFFLINE=1" in str(err.value)
    assert no_network == {"connections": 1, "load_dataset": 0}


def test_calib_auto_falls_back_on_the_first_refused_connection(no_network):
    source, warning = data.resolve_calibration_source(data.AUTO)
    assert source == data.BUILTIN and warning is not None and "cannot reach the Hugging Face hub" in warning
    assert no_network == {"connections": 1, "load_dataset": 0}


def test_offline_hub_datasets_read_the_cache_without_a_probe(no_network, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot load hub dataset 'wikitext2'"):
        data.read_text("wikitext2")
    assert no_network == {"connections": 0, "load_dataset": 1}


def test_eval_without_data_fails_on_the_first_refused_connection(no_network, model_dir):
    from helpers import run_cli

    result = run_cli("eval", model_dir, "--seqlen", "32")
    assert result.exit_code == 5, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Hugging Face hub"), result.output
    assert "dataset 'wikitext2'" in lines[0] and "local .txt/.jsonl file" in lines[0]
    assert no_network["load_dataset"] == 0 and no_network["connections"] == 1 and "other" not in no_network


def test_hub_dataset_without_the_datasets_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(DataError, match="needs the 'datasets' package"):
        data.read_text("c4")


def test_hub_dataset_text_is_joined(monkeypatch):
    calls = {}

    def fake(name, config=None, split=None, **kwargs):
        calls.update(name=name, config=config, split=split)
        return {"text": [" = Title = \n", " body line \n"]}

    fake_datasets(monkeypatch, fake)
    assert data.read_text("wikitext2", "evaluation") == " = Title = \n body line \n"
    assert calls == {"name": "wikitext", "config": "wikitext-2-raw-v1", "split": "test"}


def test_calibration_is_reproducible_distinct_and_sized(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(SAMPLE_TEXT)
    a = data.calibration_samples(TOK, str(path), nsamples=8, seqlen=32, seed=0)
    b = data.calibration_samples(TOK, str(path), nsamples=8, seqlen=32, seed=0)
    c = data.calibration_samples(TOK, str(path), nsamples=8, seqlen=32, seed=1)
    assert a.shape == (8, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    stream = data.tokenize_stream(TOK, SAMPLE_TEXT)
    # each sample is a contiguous window of the stream
    first = a[0].tolist()
    starts = [i for i in range(stream.numel() - 32) if stream[i : i + 32].tolist() == first]
    assert starts


def test_too_little_text_says_how_much_there_is(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("only a few words here")
    with pytest.raises(DataError, match=r"has \d+ tokens = 0 windows of 64; 4 samples need 256 tokens"):
        data.calibration_samples(TOK, str(path), nsamples=4, seqlen=64, seed=0)


def test_evaluation_windows_drop_the_remainder(tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text(SAMPLE_TEXT)
    stream = data.tokenize_stream(TOK, SAMPLE_TEXT)
    windows = data.evaluation_windows(TOK, str(path), 100)
    assert windows.shape == (stream.numel() // 100, 100)
    assert torch.equal(windows.reshape(-1), stream[: windows.numel()])


# ----- widths and masks -----------------------------------------------------------------------
GEOM = Geometry(hidden_size=256, num_heads=8, num_kv_heads=4, head_dim=32, intermediate_size=768, num_layers=8)


@pytest.mark.parametrize("attn_unit", ["group", "query"])
@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.3, 0.5, 0.7])
def test_uniform_widths_meet_the_budget_within_one_channel(attn_unit, sparsity):
    k_attn, k_mlp = uniform_widths(GEOM, sparsity, attn_unit)
    heads = k_attn * GEOM.group_size if attn_unit == "group" else k_attn
    kv = k_attn if attn_unit == "group" else GEOM.num_kv_heads
    kept = GEOM.num_layers * GEOM.layer_linear_params(heads, kv, k_mlp)
    target = (1 - sparsity) * GEOM.dense_linear_params
    assert abs(kept - target) <= GEOM.num_layers * GEOM.mlp_unit_params / 2 + 1
    if attn_unit == "query":
        assert k_attn % GEOM.num_kv_heads == 0


def test_query_selection_keeps_the_same_count_per_group():
    scores = torch.tensor([9.0, 8.0, 7.0, 6.0, 0.1, 0.2, 0.3, 0.4])  # groups of 2 heads
    kept = select_attention_units(scores, 4, GEOM, "query")
    assert kept == [0, 2, 5, 7]  # the best head of each group, not the 4 best overall


def test_nm_mask_keeps_exactly_two_of_four():
    scores = torch.randn(16, 32).abs()
    mask = nm_mask(scores)
    assert mask.reshape(16, 8, 4).sum(-1).eq(2).all()
    kept_min = torch.where(mask, scores, torch.inf).reshape(16, 8, 4).min(-1).values
    dropped_max = torch.where(mask, -torch.inf, scores).reshape(16, 8, 4).max(-1).values
    assert (kept_min >= dropped_max).all()
    assert max_nonzeros_per_group(torch.randn(4, 8) * mask[:4, :8]) == 2


def test_sparsegpt_is_24_and_beats_magnitude_on_reconstruction():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(512, 64, generator=gen) * torch.linspace(0.1, 3, 64)  # uneven input scales
    X[:, 1] = X[:, 0] * 0.9 + 0.1 * X[:, 1]  # correlated inputs, where the update helps
    W = torch.randn(32, 64, generator=gen)
    H = X.T @ X
    W_sgpt = sparsegpt_prune(W, H)
    assert max_nonzeros_per_group(W_sgpt) == 2
    W_mag = W * nm_mask(W.abs())
    W_wanda = W * nm_mask(W.abs() * X.norm(dim=0))
    err = {
        name: float(((X @ (w - W).T) ** 2).sum())
        for name, w in [("sparsegpt", W_sgpt), ("magnitude", W_mag), ("wanda", W_wanda)]
    }
    assert err["sparsegpt"] < err["wanda"] < err["magnitude"]


# ----- arch and evaluation --------------------------------------------------------------------
def test_unsupported_architecture_names_the_supported_ones():
    from transformers import GPT2Config

    with pytest.raises(UnsupportedArchitectureError, match="'gpt2'.*llama, mistral, qwen2, qwen3"):
        ArchAdapter.for_config(GPT2Config())


def test_perplexity_matches_a_direct_computation_and_parameter_counts():
    model = make_tiny_model("llama")
    windows = torch.randint(0, 300, (5, 16), generator=torch.Generator().manual_seed(0))
    ppl, nll = perplexity(model, windows, batch_size=2)
    with torch.no_grad():
        logits = model(windows).logits
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 300), windows[:, 1:].reshape(-1))
    assert math.isclose(nll, float(manual), rel_tol=1e-5)
    assert math.isclose(ppl, math.exp(float(manual)), rel_tol=1e-5)
    counts = count_parameters(model, ArchAdapter.for_model(model))
    assert counts["params_decoder_linear"] == 2 * (64 * 16 * (4 + 2 + 2 + 4) + 3 * 64 * 96)
    assert counts["params_total"] == sum(p.numel() for p in model.parameters())


def test_auto_calibration_falls_back_to_the_builtin_text(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    fake_datasets(monkeypatch, offline)
    source, warning = data.resolve_calibration_source("auto")
    assert source == "builtin" and "Domain-matched text" in warning
    assert data.resolve_calibration_source("my.txt") == ("my.txt", None)
    samples = data.calibration_samples(TOK, "builtin", nsamples=10**6, seqlen=512, seed=0)
    assert 10 < samples.shape[0] < 10**6 and samples.shape[1] == 512  # capped at what the text holds
    assert data.BUILTIN_PATH.stat().st_size > 300_000
