"""Weight streaming (``--stream-weights``): decoder layers wait on the host, each is copied to the
device only while it computes. On the CPU every frozen tensor is still copied, so these tests run
the same mechanism a GPU run does: same numbers as the plain run, at most one layer of copies alive
with gradient checkpointing, whole outputs byte-identical, and the estimate's device terms."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest
import torch
from helpers import config_folder, make_tiny_model, read_json, run_cli, save_tiny_model

from llmprune.model.arch import ArchAdapter
from llmprune.model.streaming import WeightStream
from llmprune.train.loop import layer_checkpointing

SMALL = ["--seqlen", "32", "--nsamples", "8", "--batch-size", "4", "--seed", "0", "--device", "cpu"]


def _step(stream: bool, recompute: bool):
    """One forward and backward of a tiny Llama whose only trainable tensor scales the embeddings
    (so the gradient flows back through every layer): logits, that gradient, and the stream."""
    model = make_tiny_model("llama", num_hidden_layers=3)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = ArchAdapter.for_config(model.config).layers(model)
    scale = torch.nn.Parameter(torch.ones(model.config.hidden_size))
    model.model.embed_tokens.register_forward_hook(lambda _m, _a, out: out * scale)
    tokens = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    ws = WeightStream(layers, torch.device("cpu"))
    with ws.installed() if stream else contextlib.nullcontext(), layer_checkpointing(layers, recompute):
        logits = model(tokens, use_cache=False).logits
        logits.pow(2).mean().backward()
    assert all("forward" not in vars(layer) for layer in layers)  # both wrappers removed
    layer_bytes = sum(p.nbytes for p in layers[0].parameters())
    return logits.detach(), scale.grad, ws, layer_bytes


@pytest.mark.parametrize("recompute", [True, False])
def test_streamed_forward_and_backward_equal_the_plain_ones(recompute):
    logits, grad, _, _ = _step(stream=False, recompute=recompute)
    s_logits, s_grad, ws, _ = _step(stream=True, recompute=recompute)
    assert torch.equal(logits, s_logits) and torch.equal(grad, s_grad)
    # every layer fetched for the forward, and again for its recomputation in backward
    assert ws.fetches == 3 * (2 if recompute else 1)


def test_with_recomputation_one_layer_of_copies_is_alive_at_a_time():
    """With gradient checkpointing the copies die with each layer's forward and each layer's
    backward; without it autograd keeps every layer's copy until backward (what the estimate's
    'streamed layers' term would then have to count: the whole model)."""
    *_, ws, layer_bytes = _step(stream=True, recompute=True)
    assert ws.peak_copies == layer_bytes and ws.copies == 0
    *_, ws, layer_bytes = _step(stream=True, recompute=False)
    assert ws.peak_copies == 3 * layer_bytes


def test_kept_layers_are_not_streamed_and_release_sends_them_back():
    model = make_tiny_model("llama", num_hidden_layers=3)
    layers = ArchAdapter.for_config(model.config).layers(model)
    ws = WeightStream(layers, torch.device("cpu"))
    ws.keep([1])
    with ws.installed(), torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long), use_cache=False)
    assert ws.fetches == 2 and ws.resident == {1}
    ws.release([1])
    assert ws.resident == set()


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


CASES = {
    "minimax+lora": ["uniform", "--sparsity", "0.4", "--steps", "6", "--lora-rank", "4", "--teacher-topk", "16"],
    "proxsparse-staged": ["semi24", "--steps", "4", "--layers-per-stage", "1", "--metric", "plain"],
    "tyr": ["global", "--sparsity", "0.4", "--generations", "2", "--offspring", "4", "--iterations", "1"]
    + ["--select-tokens", "32,64,128", "--survivors", "2,1", "--topk-logits", "16"],
    "wanda+recover-full": [
        "uniform",
        "--method",
        "wanda",
        "--sparsity",
        "0.4",
        "--recover",
        "--recover-mode",
        "full",
        "--recover-steps",
        "3",
    ],
}


@pytest.fixture
def fetched(monkeypatch):
    """Every streamed fetch, as the names of the layer's trainable weights it met (a weight that
    trains must sit in a resident layer: streamed, its gradient would go to a throw-away copy)."""
    seen: list[list[str]] = []
    original = WeightStream._fetched

    def spy(self, layer):
        seen.append([n for n, p in layer.named_parameters() if p.requires_grad and "lora" not in n])
        return original(self, layer)

    monkeypatch.setattr(WeightStream, "_fetched", spy)
    return seen


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_with_streaming_are_byte_identical(tmp_path, tiny_text, case, fetched):
    """The streamed run computes from exact copies of the same weights: the exported weights match
    the plain run's bit for bit (ProxSparse's stages keep their layers resident and release them;
    Týr's search and the recovery teacher run streamed forwards; full recovery keeps every layer)."""
    model = save_tiny_model(tmp_path / "m", "llama", num_hidden_layers=3)
    strategy, *options = CASES[case]
    digests, fetches = [], []
    for mode in ("off", "on"):
        out = tmp_path / mode
        result = run_cli(strategy, model, "-o", out, "--calib", tiny_text, *SMALL, *options, "--stream-weights", mode)
        assert result.exit_code == 0, result.output
        digests.append(_digest(out))
        fetches.append(len(fetched))
        assert read_json(out / "llmprune_report.json")["settings"]["stream_weights"] == mode
    assert digests[0] == digests[1] and digests[0]
    assert fetches[0] == 0 and fetches[1] > 0  # the streamed run did stream
    assert not any(fetched), "a layer with trainable weights was streamed instead of kept"


def test_streaming_outlives_a_gradient_checkpointing_scope_inside_it():
    """The training loop's checkpointing ends before the run does (a probe, the objective after
    recovery): the stream's wrapper must still be in place then, not removed with the outer one."""
    model = make_tiny_model("llama", num_hidden_layers=2)
    layers = ArchAdapter.for_config(model.config).layers(model)
    ws = WeightStream(layers, torch.device("cpu"))
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with ws.installed(), torch.no_grad():
        with layer_checkpointing(layers, True):
            model(tokens, use_cache=False)
        model(tokens, use_cache=False)
    assert ws.fetches == 4


# ----- the estimate -----------------------------------------------------------------------------
GPU = ["--device", "cuda", "--dtype", "bfloat16", "--gpu-memory", "80", "--nsamples", "128", "--seqlen", "2048"]
LEARNED = {
    "uniform": ["--method", "minimax", "--batch-size", "4"],
    "semi24": ["--method", "proxsparse", "--layers-per-stage", "1"],
    "global": ["--method", "tyr"],
}


@pytest.mark.parametrize("strategy", list(LEARNED))
def test_auto_streams_70b_on_an_80_gb_gpu_and_the_estimate_then_fits(tmp_path, strategy, monkeypatch):
    """At 70B widths the weights alone (131 GiB) exceed an 80 GB device: auto streams, and the
    predicted peak (the layers outside the model's head and embeddings, two at a time) fits; with
    streaming off the same run is predicted not to fit, and the advice names the flag."""
    from helpers import LLAMA_70B

    monkeypatch.setenv("WORLD_SIZE", "8")  # --estimate plans for the torchrun ranks it sees
    folder = config_folder(tmp_path / "70b", LLAMA_70B)
    found = {}
    for mode in ("auto", "off"):
        out = tmp_path / f"{mode}.json"
        args = [strategy, folder, "--estimate", "--json", out, *GPU, *LEARNED[strategy], "--stream-weights", mode]
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
        found[mode] = read_json(out)
    assert found["auto"]["settings"]["stream_weights"] is True and found["auto"]["peak_device_gib"] <= 70
    assert found["off"]["settings"]["stream_weights"] is False and found["off"]["peak_device_gib"] > 80
    # a real run with streaming off is refused before any work, naming the flag to change (on a
    # machine that has the GPU it names: without one the run stops at the device, one line earlier)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    refused = run_cli(strategy, folder, "-o", tmp_path / "o", *GPU, *LEARNED[strategy], "--stream-weights", "off")
    assert refused.exit_code == 12 and "--stream-weights on" in refused.output, refused.output


def test_auto_does_not_stream_what_fits_nor_on_the_cpu(tmp_path):
    from helpers import LLAMA_8B

    folder = config_folder(tmp_path / "8b", LLAMA_8B)
    for device in (GPU, ["--device", "cpu", "--nsamples", "128", "--seqlen", "2048"]):
        out = tmp_path / "e.json"
        result = run_cli("uniform", folder, "--estimate", "--json", out, *device, *LEARNED["uniform"])
        assert result.exit_code == 0, result.output
        assert read_json(out)["settings"]["stream_weights"] is False


@pytest.mark.parametrize("command", ["uniform", "recover"])
def test_a_bad_stream_weights_value_is_one_line_and_writes_nothing(tmp_path, tiny_text, command):
    model = save_tiny_model(tmp_path / "m", "llama")
    out = tmp_path / "o"
    extra = ["--teacher", model] if command == "recover" else []
    result = run_cli(command, model, "-o", out, "--calib", tiny_text, *SMALL, *extra, "--stream-weights", "maybe")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--stream-weights" in lines[0] and not out.exists(), result.output
