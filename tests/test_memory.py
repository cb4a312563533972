"""Peak memory of the layer-wise methods stays near the stored model plus one layer's working set.

Slow: prunes a model built from a config, ~2.5× the reference model, in a subprocess and reads
the peak RSS that llmprune itself reports. The bound is generous on purpose (allocator slack,
tokenizer, the export's own copy); a regression that kept every layer's activations or
statistics, or the whole model in float32, would still break it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import CALIB, REFMODEL, requires_refmodel

pytestmark = [pytest.mark.slow, requires_refmodel]
NSAMPLES, SEQLEN = 16, 128


def _baseline_rss_mib() -> float:
    code = (
        "import torch, transformers, llmprune.cli, llmprune.run.pipeline, llmprune.runtime.memory, llmprune.pruners; "
        "from transformers import LlamaForCausalLM; "
        "print(llmprune.runtime.memory.peak_rss_mib())"
    )
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize("strategy,method", [("semi24", "wanda")])
def test_layerwise_peak_memory_is_bounded(tmp_path, strategy, method):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=12,
        num_attention_heads=6,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=8192,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    layer = model.model.layers[0]
    layer_params = sum(p.numel() for p in layer.parameters())
    hidden, inter = config.hidden_size, config.intermediate_size
    # one layer in float32 (+ its pruned copy), Hessians of its three input widths, attention scores
    layer_mib = (2 * layer_params * 4 + (2 * hidden**2 + inter**2) * 4 + 8 * 6 * SEQLEN**2 * 4) / 2**20
    acts_mib = 2 * NSAMPLES * SEQLEN * hidden * 4 / 2**20
    folder = tmp_path / "big"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(REFMODEL).save_pretrained(folder)
    del model

    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmprune",
            strategy,
            str(folder),
            "-o",
            str(out),
            "--method",
            method,
            "--calib",
            str(CALIB),
            "--nsamples",
            str(NSAMPLES),
            "--seqlen",
            str(SEQLEN),
            "--sparsity",
            "0.5",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = json.loads((out / "llmprune_report.json").read_text())["peak_rss_mib"]
    base = _baseline_rss_mib()
    # stored model twice (loading and the export's copy) + one layer + activations + 150 MiB slack
    bound = base + 2 * model_mib + 3 * layer_mib + 2 * acts_mib + 150
    assert peak < bound, f"peak {peak:.0f} MiB > bound {bound:.0f} MiB (base {base:.0f}, model {model_mib:.0f})"
