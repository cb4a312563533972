"""Helpers shared by the tests (``from helpers import ...``): tiny random models of every supported
family, the reference model and data, and small utilities. Fixtures and hooks live in conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
#: The project's own copy of the reference model and text (examples/), used when ../shared is absent.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
_REFERENCE = SHARED if (SHARED / "refmodel").is_dir() else EXAMPLES
REFMODEL = _REFERENCE / "refmodel"
CALIB = _REFERENCE / "data" / "calib.txt"
EVAL = _REFERENCE / "data" / "eval.txt"

#: The geometry every tiny family shares (GQA: 4 query heads, 2 KV heads).
#: Llama-3.1-8B's geometry (config only: for estimates and planning tests, never instantiated).
LLAMA_8B: dict = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    num_hidden_layers=32,
    vocab_size=128256,
)

#: Llama-3.1-70B's geometry (config only, like LLAMA_8B).
LLAMA_70B: dict = dict(
    LLAMA_8B, hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_hidden_layers=80
)

_TINY_GEOMETRY: dict = dict(
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    vocab_size=300,
    max_position_embeddings=128,
)

#: family -> config kwargs of a tiny random model.
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(_TINY_GEOMETRY, model_type="llama", tie_word_embeddings=False),
    "mistral": dict(_TINY_GEOMETRY, model_type="mistral", sliding_window=None),
    "qwen2": dict(_TINY_GEOMETRY, model_type="qwen2"),
    "qwen3": dict(_TINY_GEOMETRY, model_type="qwen3", head_dim=16),
}

FAMILIES = tuple(TINY_CONFIGS)


def make_tiny_model(family: str, seed: int = 0, **overrides):
    """A tiny random causal LM of ``family`` in float32, eval mode.

    Random weights are scaled up (std 0.2) so that pruning changes outputs visibly, and Qwen2's
    q/k/v biases are made non-zero so that bias slicing is exercised.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    kwargs = dict(TINY_CONFIGS[family])
    kwargs.update(overrides)
    model_type = kwargs.pop("model_type")
    config = AutoConfig.for_model(model_type, initializer_range=0.2, **kwargs)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained in memory on a few sentences (no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([SAMPLE_TEXT] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Pruning removes weights from a network.\n\n"
    "Structured pruning removes whole heads and channels, so the model becomes smaller and faster.\n\n"
    "Semi-structured 2:4 sparsity keeps two of every four weights; GPUs can exploit that pattern.\n\n"
) * 40


def config_folder(folder: Path, geometry: dict) -> Path:
    """A folder with only the ``config.json`` of a bf16 Llama of ``geometry`` (for estimates)."""
    from transformers import LlamaConfig

    LlamaConfig(**geometry, tie_word_embeddings=False, dtype="bfloat16").save_pretrained(folder)
    return folder


def save_tiny_model(folder: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write a tiny model + tokenizer folder loadable with from_pretrained."""
    model = make_tiny_model(family, seed, **overrides)
    model.save_pretrained(folder)
    tiny_tokenizer(model.config.vocab_size).save_pretrained(folder)
    return folder


def folder_hash(folder: Path) -> dict[str, str]:
    """Content hash of every file in a folder (to prove an input was left untouched)."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


requires_refmodel = pytest.mark.skipif(not (REFMODEL / "config.json").exists(), reason="../shared/refmodel not present")


def run_cli(*args):
    """Invoke the CLI in-process (typer's CliRunner), every argument stringified."""
    from typer.testing import CliRunner

    from llmprune.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _llama_cpp_permute(weight, n_head: int, n_kv: int):
    """llama.cpp's row order of a q/k projection (its converter's ``permute``; transformers undoes it)."""
    heads = n_kv if n_kv != n_head else n_head
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


#: transformers' Llama module names → llama.cpp's (``blk.N.`` + name).
_LLAMA_CPP_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def write_gguf(folder: Path, out: Path, tensor_type: str = "F32", architecture: str = "llama") -> Path:
    """Write a Llama model folder (byte-level BPE tokenizer, e.g. the reference model) as a GGUF file
    the way llama.cpp's converter does: its metadata keys, tensor names, q/k row order and a gpt2
    tokenizer. ``tensor_type`` F32, F16 or Q8_0 (the matrices; norms stay F32); ``architecture``
    other than llama writes the same tensors under that name (an architecture llmprune does not read)."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    writer = gguf.GGUFWriter(str(out), architecture)
    writer.add_name(folder.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_vocab_size(config["vocab_size"])
    file_types = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0"}
    writer.add_file_type(gguf.LlamaFileType[file_types[tensor_type]])
    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    special = {added["id"] for added in tok["added_tokens"] if added["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_add_bos_token(False)
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    for key, tensor in load_file(str(folder / "model.safetensors")).items():
        array = tensor.float().numpy()
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        elif key == "lm_head.weight":
            name = "output.weight"
        else:
            _, _, index, *module, _ = key.split(".")
            module_name = ".".join(module)
            name = f"blk.{index}.{_LLAMA_CPP_NAMES[module_name]}.weight"
            if module_name == "self_attn.q_proj":
                array = _llama_cpp_permute(array, n_head, n_head)
            elif module_name == "self_attn.k_proj":
                array = _llama_cpp_permute(array, n_head, n_kv)
        array = np.ascontiguousarray(
            array.astype(np.float16 if tensor_type == "F16" and array.ndim == 2 else np.float32)
        )
        if tensor_type == "Q8_0" and array.ndim == 2:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
